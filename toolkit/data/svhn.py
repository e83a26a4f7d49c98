"""SVHN (cropped digits) from torchvision's layout: ``root/{train,test,extra}_32x32.mat``.

Each ``.mat`` file (MATLAB v5) holds ``X`` of shape (32, 32, 3, N), uint8, and ``y`` of
shape (N, 1) with labels 1..10, where 10 stands for the digit 0. Reading needs scipy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .core import DataInfo, DatasetBundle, TensorSplit
from .files import FileSource, data_home, default_root

log = logging.getLogger(__name__)

SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
SVHN_CLASSES = tuple(str(i) for i in range(10))


def svhn_source(root: str | Path | None = None, extra: bool = False) -> FileSource:
    folder = Path(root).expanduser() if root is not None else default_root("svhn")
    names = ("train_32x32.mat", "test_32x32.mat") + (("extra_32x32.mat",) if extra else ())
    how = (
        f"set download = true (needs network and torchvision; downloads into {folder})",
        f"or copy the .mat files of SVHN's cropped digits (format 2) into {folder}, or set root to their folder "
        f"(default root: $RTK_DATA/svhn, now {data_home() / 'svhn'})",
    )
    return FileSource("svhn", (folder,), names, how, folder, download_key="svhn+extra" if extra else "svhn")


def read_svhn_mat(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64 in 0..9 from one .mat file."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{path}: reading SVHN's .mat files needs scipy: pip install scipy") from None
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises ValueError, NotImplementedError (v7.3 files), OSError ...
        raise DataError(f"{path}: not a readable MATLAB v5 file: {type(exc).__name__}: {exc}") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(
            f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(f"{path}: expected X of shape [32, 32, 3, N] and dtype uint8, got {list(x.shape)} {x.dtype}")
    if y.shape[0] != x.shape[3]:
        raise DataError(f"{path}: {x.shape[3]} images but {y.shape[0]} labels")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: labels must lie in 1..10 (10 for the digit 0), found {labels.min()}..{labels.max()}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    xt = torch.from_numpy(np.divide(images, np.float32(255.0), dtype=np.float32))
    return xt, torch.from_numpy(labels % 10)


def load_svhn(root: str | Path | None = None, download: bool = False, extra: bool = False) -> DatasetBundle:
    """SVHN: 73,257 train (+531,131 with ``extra``) / 26,032 test images, 3x32x32, digits 0..9."""
    paths = svhn_source(root, extra).ensure(download)
    x_tr, y_tr = read_svhn_mat(paths["train_32x32.mat"])
    if extra:
        x_ex, y_ex = read_svhn_mat(paths["extra_32x32.mat"])
        x_tr, y_tr = torch.cat([x_tr, x_ex]), torch.cat([y_tr, y_ex])
    x_te, y_te = read_svhn_mat(paths["test_32x32.mat"])
    info = DataInfo("svhn", 10, 3, 32, 32, SVHN_MEAN, SVHN_STD, SVHN_CLASSES)
    return DatasetBundle(info, TensorSplit(x_tr, y_tr), TensorSplit(x_te, y_te))
