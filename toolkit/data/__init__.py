"""Data: dataset records, deterministic subsets, fast batching, and the loaders.

Loaders (each returns a :class:`DatasetBundle` with images in [0, 1]):

- :func:`load_digits` (scikit-learn, offline)
- :func:`load_fashion_mnist`, :func:`load_mnist`, and :func:`load_idx_dataset` for any
  MNIST-like set of IDX files; :func:`read_idx` parses one IDX file
- :func:`load_cifar10`, :func:`load_cifar100` (CIFAR's pickled batches, read with the
  restricted unpickler :func:`safe_load`)
- :func:`load_svhn` (``.mat`` files, needs scipy)
- :func:`load_image_folder` (Imagenette, ImageWoof, any ``train/`` + ``val/`` tree; lazy)

:func:`augment_batch` crops (after padding) and flips a batch of training images on its
device, from a seeded generator (the training loop's ``augment`` option).

:func:`data_home` is where datasets are looked for and downloaded by default
(``$RTK_DATA`` or ``~/.cache/rtk/datasets``).

Your own data (:mod:`rtk.data.sources`): :func:`tensor_split` (tensors or arrays),
:func:`to_bundle` (what a user's loader returns), :func:`read_tensors_file` (``.npz`` /
``.safetensors`` of ``x`` and ``y``), :func:`infer_info`, and :func:`load_dataset` (a
dataset table ``{"name": ..., **options}`` loaded as the runner does).
"""

from __future__ import annotations

from ..lazy import LazyFace

#: submodule -> the public names it defines; importing this face imports none of them (each on
#: first use), so reading option models from it needs no torch (see rtk.lazy)
_face = LazyFace(
    __name__,
    {
        "cifar": (
            "cifar10_source",
            "cifar100_source",
            "load_cifar10",
            "load_cifar100",
            "read_cifar_batch",
        ),
        "options": ("DataOptions",),
        "augment": ("AUGMENTATIONS", "augment_batch", "check_crop_padding"),
        "core": (
            "DataInfo",
            "DatasetBundle",
            "TensorSplit",
            "apply_limits",
            "batches",
            "num_examples",
            "subset",
        ),
        "digits": ("load_digits",),
        "files": (
            "FileSource",
            "data_home",
            "default_root",
        ),
        "idx": (
            "fashion_mnist_source",
            "load_fashion_mnist",
            "load_idx_dataset",
            "load_mnist",
            "mnist_source",
            "parse_idx",
            "read_idx",
        ),
        "imagefolder": (
            "ImageFolderSplit",
            "check_image_folder",
            "load_image_folder",
        ),
        "safe_pickle": (
            "RestrictedUnpickler",
            "safe_load",
        ),
        "sources": (
            "check_code_dataset",
            "infer_info",
            "load_code_dataset",
            "load_dataset",
            "load_tensor_files",
            "load_torchvision_dataset",
            "read_tensors_file",
            "tensor_file_problems",
            "tensor_split",
            "to_bundle",
            "torchvision_problems",
        ),
        "svhn": (
            "load_svhn",
            "read_svhn_mat",
            "svhn_source",
        ),
    },
)
__all__ = _face.names
__getattr__ = _face.attr  # PEP 562: each name's submodule imported on its first use
__dir__ = _face.dir
