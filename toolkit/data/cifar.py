"""CIFAR-10 and CIFAR-100 from their "python version" archives (torchvision's layout).

CIFAR-10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
CIFAR-100: ``root/cifar-100-python/{train, test, meta}``. Each batch is a pickled dict
with ``data`` (N x 3072 uint8, the red, green and blue planes of a 32x32 image) and
``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100). The pickles are
read with :func:`rtk.data.safe_pickle.safe_load`, which refuses anything but plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import DataError
from .core import DataInfo, DatasetBundle, TensorSplit
from .files import FileSource, data_home, default_root
from .safe_pickle import safe_load, str_keys

log = logging.getLogger(__name__)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN, "test_batch")
CIFAR100_FILES = ("train", "test")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _how(folder: str, archive: str, target: Path) -> tuple[str, ...]:
    return (
        f"set download = true (needs network and torchvision; downloads {archive} into {target})",
        f"or extract {archive} (the CIFAR 'python version') so that its folder {folder}/ lies in root "
        f"(default root: $RTK_DATA/<dataset>, now under {data_home()})",
    )


def _source(name: str, root: str | Path | None, files: Sequence[str], folder: str, archive: str) -> FileSource:
    """Where CIFAR ``name`` is looked for: ``files`` in ``root`` (default ``$RTK_DATA/<name>``) or in its
    ``folder`` there, as extracted from ``archive``."""
    target = Path(root).expanduser() if root is not None else default_root(name)
    return FileSource(name, (target,), files, _how(folder, archive, target), target, (folder,), download_key=name)


def cifar10_source(root: str | Path | None = None) -> FileSource:
    return _source("cifar10", root, CIFAR10_FILES, CIFAR10_FOLDER, "cifar-10-python.tar.gz")


def cifar100_source(root: str | Path | None = None) -> FileSource:
    return _source("cifar100", root, CIFAR100_FILES, CIFAR100_FOLDER, "cifar-100-python.tar.gz")


def read_cifar_batch(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    path = Path(path)
    d = str_keys(safe_load(path), str(path))
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: expected keys 'data' and {label_key!r}, found {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: expected 'data' of shape [N, 3072] and dtype uint8, got {list(data.shape)} {data.dtype}"
        )
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _to_split(parts: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int, where: str) -> TensorSplit:
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    xt = torch.from_numpy(np.divide(x, np.float32(255.0), dtype=np.float32))
    return TensorSplit(xt, torch.from_numpy(np.ascontiguousarray(y)))


def _meta_names(folder: Path, filename: str, key: str) -> tuple[str, ...] | None:
    path = folder / filename
    if not path.is_file():
        return None
    meta = str_keys(safe_load(path), str(path))
    names = meta.get(key)
    if not isinstance(names, list):
        raise DataError(f"{path}: expected a list under {key!r}, found {sorted(meta)}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(root: str | Path | None = None, download: bool = False) -> DatasetBundle:
    """CIFAR-10: 50,000 train / 10,000 test images, 3x32x32, 10 classes."""
    paths = cifar10_source(root).ensure(download)
    train = _to_split(
        [read_cifar_batch(paths[n], "labels") for n in CIFAR10_TRAIN], 10, str(paths["data_batch_1"].parent)
    )
    test = _to_split([read_cifar_batch(paths["test_batch"], "labels")], 10, str(paths["test_batch"]))
    names = _meta_names(paths["test_batch"].parent, "batches.meta", "label_names") or CIFAR10_CLASSES
    if len(names) != 10:
        raise DataError(f"{paths['test_batch'].parent / 'batches.meta'}: expected 10 label names, found {len(names)}")
    info = DataInfo("cifar10", 10, 3, 32, 32, CIFAR10_MEAN, CIFAR10_STD, names)
    return DatasetBundle(info, train, test)


def load_cifar100(
    root: str | Path | None = None, download: bool = False, labels: Literal["fine", "coarse"] = "fine"
) -> DatasetBundle:
    """CIFAR-100: 50,000 train / 10,000 test images, 3x32x32; 100 fine or 20 coarse classes."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"cifar100: labels must be 'fine' or 'coarse', got {labels!r}")
    paths = cifar100_source(root).ensure(download)
    num_classes = 100 if labels == "fine" else 20
    key = f"{labels}_labels"
    train = _to_split([read_cifar_batch(paths["train"], key)], num_classes, str(paths["train"]))
    test = _to_split([read_cifar_batch(paths["test"], key)], num_classes, str(paths["test"]))
    names = _meta_names(paths["train"].parent, "meta", f"{labels}_label_names")
    if names is None:
        log.warning("cifar100: %s not found; class names will be numbers", paths["train"].parent / "meta")
        names = tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(
            f"{paths['train'].parent / 'meta'}: expected {num_classes} {labels} label names, found {len(names)}"
        )
    info = DataInfo("cifar100", num_classes, 3, 32, 32, CIFAR100_MEAN, CIFAR100_STD, names)
    return DatasetBundle(info, train, test)
