"""Built-in datasets: thin adapters over the loaders of :mod:`rtk.data`.

Every dataset returns images in [0, 1] and accepts ``limit_train``, ``limit_test`` and
``seed`` (deterministic subsets, applied by the runner). File-based datasets also check,
before any work starts, that their files are where they are expected.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

import rtk
from rtk.data import DataOptions

ROOT_HELP = "folder holding the files (default: $RTK_DATA/{name}, with $RTK_DATA defaulting to ~/.cache/rtk/datasets)"
DOWNLOAD_HELP = "download the files through torchvision when they are missing (needs network access)"


class DigitsOptions(DataOptions):
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share of each class held out for testing")
    split_seed: int = 0


def _digits(opts: DigitsOptions):
    return rtk.data.load_digits(opts.test_fraction, opts.split_seed)


class FashionMNISTOptions(DataOptions):
    root: str | None = Field(
        None,
        description="folder holding the four IDX .gz files (default: "
        "/usr/share/datasets/fashion-mnist, then $RTK_DATA/fashion-mnist)",
    )
    download: bool = Field(False, description=DOWNLOAD_HELP)


class MNISTOptions(DataOptions):
    root: str | None = Field(None, description=ROOT_HELP.format(name="mnist"))
    download: bool = Field(False, description=DOWNLOAD_HELP)


class CIFAR10Options(DataOptions):
    root: str | None = Field(
        None, description=ROOT_HELP.format(name="cifar10") + "; the batches may lie in root/cifar-10-batches-py"
    )
    download: bool = Field(False, description=DOWNLOAD_HELP)


class CIFAR100Options(DataOptions):
    root: str | None = Field(
        None, description=ROOT_HELP.format(name="cifar100") + "; the files may lie in root/cifar-100-python"
    )
    download: bool = Field(False, description=DOWNLOAD_HELP)
    labels: Literal["fine", "coarse"] = Field("fine", description="100 fine classes or 20 coarse superclasses")


class SVHNOptions(DataOptions):
    root: str | None = Field(None, description=ROOT_HELP.format(name="svhn"))
    download: bool = Field(False, description=DOWNLOAD_HELP)
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


def _fashion(o: FashionMNISTOptions):
    return rtk.data.load_fashion_mnist(o.root, o.download)


def _fashion_check(o: FashionMNISTOptions):
    return rtk.data.fashion_mnist_source(o.root).problems(o.download)


def _mnist(o: MNISTOptions):
    return rtk.data.load_mnist(o.root, o.download)


def _mnist_check(o: MNISTOptions):
    return rtk.data.mnist_source(o.root).problems(o.download)


def _cifar10(o: CIFAR10Options):
    return rtk.data.load_cifar10(o.root, o.download)


def _cifar10_check(o: CIFAR10Options):
    return rtk.data.cifar10_source(o.root).problems(o.download)


def _cifar100(o: CIFAR100Options):
    return rtk.data.load_cifar100(o.root, o.download, o.labels)


def _cifar100_check(o: CIFAR100Options):
    return rtk.data.cifar100_source(o.root).problems(o.download)


def _svhn(o: SVHNOptions):
    return rtk.data.load_svhn(o.root, o.download, o.extra)


def _svhn_check(o: SVHNOptions):
    return rtk.data.svhn_source(o.root, o.extra).problems(o.download)


def _imagefolder(o: ImageFolderOptions):
    return rtk.data.load_image_folder(
        o.root,
        image_size=o.image_size,
        resize=o.resize,
        test_split=o.test_split,
        grayscale=o.grayscale,
        mean=o.mean,
        std=o.std,
        name=o.name,
    )


def _imagefolder_check(o: ImageFolderOptions):
    return rtk.data.check_image_folder(o.root, o.test_split)


@rtk.hookimpl
def rtk_datasets():
    yield rtk.DatasetSpec(
        name="digits",
        summary="scikit-learn's 8x8 handwritten digits, 1,797 images, offline",
        options=DigitsOptions,
        load=_digits,
    )
    yield rtk.DatasetSpec(
        name="fashion-mnist",
        summary="Fashion-MNIST, 70,000 28x28 images, IDX files (Debian: apt-get install dataset-fashion-mnist)",
        options=FashionMNISTOptions,
        load=_fashion,
        check=_fashion_check,
    )
    yield rtk.DatasetSpec(
        name="mnist",
        summary="MNIST handwritten digits, 70,000 28x28 images, IDX files",
        options=MNISTOptions,
        load=_mnist,
        check=_mnist_check,
    )
    yield rtk.DatasetSpec(
        name="cifar10",
        summary="CIFAR-10, 60,000 32x32 colour images, 10 classes (python batches)",
        options=CIFAR10Options,
        load=_cifar10,
        check=_cifar10_check,
    )
    yield rtk.DatasetSpec(
        name="cifar100",
        summary="CIFAR-100, 60,000 32x32 colour images, 100 (or 20) classes",
        options=CIFAR100Options,
        load=_cifar100,
        check=_cifar100_check,
    )
    yield rtk.DatasetSpec(
        name="svhn",
        summary="SVHN cropped house-number digits, 32x32 colour (.mat files, scipy)",
        options=SVHNOptions,
        load=_svhn,
        check=_svhn_check,
    )
    yield rtk.DatasetSpec(
        name="imagefolder",
        summary="an ImageNet-style folder (Imagenette, ImageWoof), resized and centre-cropped, read lazily",
        options=ImageFolderOptions,
        load=_imagefolder,
        check=_imagefolder_check,
    )
