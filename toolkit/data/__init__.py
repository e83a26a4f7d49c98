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

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .augment import AUGMENTATIONS, augment_batch, check_crop_padding
    from .cifar import cifar10_source, cifar100_source, load_cifar10, load_cifar100, read_cifar_batch
    from .core import DataInfo, DatasetBundle, TensorSplit, apply_limits, batches, num_examples, subset
    from .digits import load_digits
    from .files import FileSource, data_home, default_root
    from .idx import (
        fashion_mnist_source,
        load_fashion_mnist,
        load_idx_dataset,
        load_mnist,
        mnist_source,
        parse_idx,
        read_idx,
    )
    from .imagefolder import ImageFolderSplit, check_image_folder, load_image_folder
    from .options import DataOptions
    from .safe_pickle import RestrictedUnpickler, safe_load
    from .sources import (
        check_code_dataset,
        infer_info,
        load_code_dataset,
        load_dataset,
        load_tensor_files,
        load_torchvision_dataset,
        read_tensors_file,
        tensor_file_problems,
        tensor_split,
        to_bundle,
        torchvision_problems,
    )
    from .svhn import load_svhn, read_svhn_mat, svhn_source
