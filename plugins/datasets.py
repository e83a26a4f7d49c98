"""Built-in datasets: thin adapters over the loaders of :mod:`rtk.data`.

Every dataset returns images in [0, 1] and accepts ``limit_train``, ``limit_test`` and
``seed`` (deterministic subsets, applied by the runner). File-based datasets also check,
before any work starts, that their files are where they are expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

import rtk
from rtk.data import DataOptions

if TYPE_CHECKING:  # annotations only: listing the datasets imports no torch
    from rtk.data import DatasetBundle, FileSource

components = rtk.Components()

ROOT_HELP = "folder holding the files (default: $RTK_DATA/{name}, with $RTK_DATA defaulting to ~/.cache/rtk/datasets)"
DOWNLOAD_HELP = "download the files through torchvision when they are missing (needs network access)"


class DigitsOptions(DataOptions):
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share of each class held out for testing")
    split_seed: int = 0


@components.register(rtk.DatasetSpec, "digits", DigitsOptions)
def _digits(opts: DigitsOptions):
    """scikit-learn's 8x8 handwritten digits, 1,797 images, offline"""
    return rtk.data.load_digits(opts.test_fraction, opts.split_seed)


class _FileOptions(DataOptions):
    """Options of a dataset read from files: the folder they lie in and whether torchvision may fetch them."""

    root: str | None = Field(None, description="folder holding the files")
    download: bool = Field(False, description=DOWNLOAD_HELP)


class FashionMNISTOptions(_FileOptions):
    root: str | None = Field(
        None,
        description="folder holding the four IDX .gz files (default: "
        "/usr/share/datasets/fashion-mnist, then $RTK_DATA/fashion-mnist)",
    )


class MNISTOptions(_FileOptions):
    root: str | None = Field(None, description=ROOT_HELP.format(name="mnist"))


class CIFAR10Options(_FileOptions):
    root: str | None = Field(
        None, description=ROOT_HELP.format(name="cifar10") + "; the batches may lie in root/cifar-10-batches-py"
    )


class CIFAR100Options(_FileOptions):
    root: str | None = Field(
        None, description=ROOT_HELP.format(name="cifar100") + "; the files may lie in root/cifar-100-python"
    )
    labels: Literal["fine", "coarse"] = Field("fine", description="100 fine classes or 20 coarse superclasses")


class SVHNOptions(_FileOptions):
    root: str | None = Field(None, description=ROOT_HELP.format(name="svhn"))
    extra: bool = Field(False, description="append the 531,131 'extra' images to the training split")


class ImageFolderOptions(DataOptions):
    root: str = Field(description="folder with train/<class>/<images> and val/ (or test/) laid out the same way")
    image_size: int = Field(224, ge=4, le=4096, description="side of the square centre crop, in pixels")
    resize: int | None = Field(
        None, ge=4, description="shorter side before the crop (default image_size * 8/7, 256 for 224)"
    )
    test_split: Literal["val", "test"] | None = Field(None, description="test folder name (default: val, else test)")
    grayscale: bool = Field(False, description="convert images to one channel instead of RGB")
    mean: list[float] | None = Field(
        None, description="per-channel mean for the model's Normalize (default: ImageNet's)"
    )
    std: list[float] | None = Field(None, description="per-channel std for the model's Normalize (default: ImageNet's)")
    name: str | None = Field(None, description="dataset name shown in reports (default: the folder's name)")

    @model_validator(mode="after")
    def _consistent(self) -> ImageFolderOptions:
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size})")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        channels = 1 if self.grayscale else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != channels:
                raise ValueError(f"{key} needs {channels} values (one per channel), got {len(values)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


def _files(
    name: str,
    options: type[_FileOptions],
    summary: str,
    load: Callable[[Any], DatasetBundle],
    source: Callable[[Any], FileSource],
) -> None:
    """Declare a dataset read from files: ``load(o)`` reads them, ``source(o)`` says where they are
    looked for, so that the check reports missing files (unless ``o.download``) before any work starts."""
    components.add(
        rtk.DatasetSpec(
            name=name, summary=summary, options=options, load=load, check=lambda o: source(o).problems(o.download)
        )
    )


_files(
    "fashion-mnist",
    FashionMNISTOptions,
    "Fashion-MNIST, 70,000 28x28 images, IDX files (Debian: apt-get install dataset-fashion-mnist)",
    lambda o: rtk.data.load_fashion_mnist(o.root, o.download),
    lambda o: rtk.data.fashion_mnist_source(o.root),
)
_files(
    "mnist",
    MNISTOptions,
    "MNIST handwritten digits, 70,000 28x28 images, IDX files",
    lambda o: rtk.data.load_mnist(o.root, o.download),
    lambda o: rtk.data.mnist_source(o.root),
)
_files(
    "cifar10",
    CIFAR10Options,
    "CIFAR-10, 60,000 32x32 colour images, 10 classes (python batches)",
    lambda o: rtk.data.load_cifar10(o.root, o.download),
    lambda o: rtk.data.cifar10_source(o.root),
)
_files(
    "cifar100",
    CIFAR100Options,
    "CIFAR-100, 60,000 32x32 colour images, 100 (or 20) classes",
    lambda o: rtk.data.load_cifar100(o.root, o.download, o.labels),
    lambda o: rtk.data.cifar100_source(o.root),
)
_files(
    "svhn",
    SVHNOptions,
    "SVHN cropped house-number digits, 32x32 colour (.mat files, scipy)",
    lambda o: rtk.data.load_svhn(o.root, o.download, o.extra),
    lambda o: rtk.data.svhn_source(o.root, o.extra),
)


def _imagefolder_check(o: ImageFolderOptions):
    return rtk.data.check_image_folder(o.root, o.test_split)


@components.register(rtk.DatasetSpec, "imagefolder", ImageFolderOptions, check=_imagefolder_check)
def _imagefolder(o: ImageFolderOptions):
    """an ImageNet-style folder (Imagenette, ImageWoof), resized and centre-cropped, read lazily"""
    return rtk.data.load_image_folder(**o.as_kwargs(beyond=DataOptions))  # the loader's keywords, name for name


rtk_datasets = components.hookimpl(rtk.DatasetSpec)
