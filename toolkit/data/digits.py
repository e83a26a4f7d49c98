"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), offline."""

from __future__ import annotations

import torch

from .core import DataInfo, DatasetBundle, TensorSplit

DIGITS_MEAN = (0.3068,)
DIGITS_STD = (0.3807,)


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> DatasetBundle:
    """Images scaled from 0..16 to [0, 1], shape (1, 8, 8); a stratified held-out split."""
    from sklearn.datasets import load_digits as _load

    raw = _load()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(raw.target, dtype=torch.long)
    g = torch.Generator().manual_seed(split_seed)
    train_idx, test_idx = [], []
    for c in range(10):  # stratified: the same fraction of each class in test
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = torch.cat(train_idx).sort().values
    te = torch.cat(test_idx).sort().values
    info = DataInfo("digits", 10, 1, 8, 8, DIGITS_MEAN, DIGITS_STD, tuple(str(i) for i in range(10)))
    return DatasetBundle(info, TensorSplit(x[tr], y[tr]), TensorSplit(x[te], y[te]))
