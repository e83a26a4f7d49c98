"""Downloads through torchvision, only when a user asks (``download = true``).

torchvision is an optional dependency (``pip install 'rtk[vision]'``). Only its download
helpers are used for CIFAR: its CIFAR dataset classes unpickle the batches without
restriction, so rtk reads the downloaded files itself (:mod:`rtk.data.safe_pickle`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import DataError

log = logging.getLogger(__name__)


def _torchvision_datasets() -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(
            f"download = true needs torchvision, which could not be imported ({exc}); "
            "install it with: pip install 'rtk[vision]'"
        ) from None
    return tvd


def _fail(dataset: str, root: Path, exc: BaseException, manual: str) -> DataError:
    return DataError(
        f"dataset {dataset!r}: download into {root} failed: {type(exc).__name__}: {exc}. "
        f"Without network access, {manual}"
    )


def download(dataset: str, root: Path) -> None:
    """Download ``dataset`` (mnist, fashion-mnist, cifar10, cifar100, svhn) into ``root``."""
    tvd = _torchvision_datasets()
    root.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", dataset, root)
    try:
        if dataset in ("mnist", "fashion-mnist"):
            cls = tvd.MNIST if dataset == "mnist" else tvd.FashionMNIST
            # torchvision's MNIST classes read IDX files with their own parser (no pickle).
            for train in (True, False):
                cls(str(root), train=train, download=True)
        elif dataset in ("cifar10", "cifar100"):
            from torchvision.datasets.utils import download_and_extract_archive

            cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        elif dataset.startswith("svhn"):
            from torchvision.datasets.utils import download_url

            splits = ["train", "test"] + (["extra"] if dataset == "svhn+extra" else [])
            for split in splits:
                url, filename, md5 = tvd.SVHN.split_list[split]
                download_url(url, str(root), filename, md5)
        else:  # pragma: no cover - callers pass known names
            raise DataError(f"no download recipe for dataset {dataset!r}")
    except DataError:
        raise
    except Exception as exc:  # network, checksum and archive errors all end here
        raise _fail(
            dataset, root, exc, "place the files in that folder by hand (see docs/data-and-models.md)"
        ) from None
