"""Dataset records and fast batching.

Every dataset plugin returns a :class:`DatasetBundle`: train and test splits whose
images are float32 tensors in [0, 1] of shape (C, H, W), with int64 labels.
Small datasets are held in memory as :class:`TensorSplit` and batched by slicing;
large ones (image folders) are ordinary ``torch.utils.data.Dataset`` objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .options import DataOptions


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data."""

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


class TensorSplit(Dataset):
    """An in-memory split: ``x`` (N, C, H, W) float32 in [0, 1], ``y`` (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.ndim != 4:
            raise DataError(f"expected images of shape [N, C, H, W], got {list(x.shape)}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"expected labels of shape [{x.shape[0]}], got {list(y.shape)}")
        self.x = x.float().contiguous()
        self.y = y.long().contiguous()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def subset(self, indices: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class DatasetBundle:
    info: DataInfo
    train: Dataset
    test: Dataset


def subset(split: Dataset, limit: int | None, seed: int) -> Dataset:
    """A deterministic subset of ``limit`` examples (a fixed random draw under ``seed``)."""
    n = len(split)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return split
    if limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:limit].sort().values
    if isinstance(split, TensorSplit):
        return split.subset(idx)
    return torch.utils.data.Subset(split, idx.tolist())


def class_fraction(split: Dataset, fraction: float | None, seed: int) -> Dataset:
    """A fixed random draw of ``fraction`` of every class (at least one example per class present)."""
    if fraction is None or fraction >= 1:
        return split
    if not 0 < fraction < 1:
        raise DataError(f"train_fraction must be in (0, 1], got {fraction}")
    labels = (
        split.y if isinstance(split, TensorSplit) else torch.as_tensor([int(split[i][1]) for i in range(len(split))])
    )  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    chosen = torch.cat(keep).sort().values
    if isinstance(split, TensorSplit):
        return split.subset(chosen)
    return torch.utils.data.Subset(split, chosen.tolist())


def resize_split(split: Dataset, size: int, name: str) -> TensorSplit:
    """An in-memory split with its images resized to ``size`` x ``size`` (area averaging when
    shrinking, bilinear with antialiasing when growing), values kept in [0, 1]."""
    if not isinstance(split, TensorSplit):
        raise DataError(
            f"dataset {name!r}: resolution works on in-memory datasets only; resize image folders with their own "
            "image_size/resize options"
        )
    x = split.x
    if x.shape[-2:] == (size, size):
        return split
    if size <= min(x.shape[-2:]):
        out = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    else:
        out = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return TensorSplit(out.clamp(0, 1), split.y)


def apply_limits(bundle: DatasetBundle, opts: DataOptions) -> DatasetBundle:
    for key, split in (("limit_train", bundle.train), ("limit_test", bundle.test)):
        limit = getattr(opts, key)
        if limit is not None and limit > len(split):  # type: ignore[arg-type]
            raise DataError(
                f"dataset.{key} = {limit}, but the {bundle.info.name!r} {key[6:]} split has only "
                f"{len(split)} examples; lower {key} to at most {len(split)} or remove it"  # type: ignore[arg-type]
            )
    train = subset(bundle.train, opts.limit_train, opts.seed)
    train = class_fraction(train, getattr(opts, "train_fraction", None), opts.seed + 2)
    test = subset(bundle.test, opts.limit_test, opts.seed + 1)
    info = bundle.info
    size = getattr(opts, "resolution", None)
    if size is not None:
        train, test = resize_split(train, size, info.name), resize_split(test, size, info.name)
        info = replace(info, height=size, width=size)
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:  # type: ignore[arg-type]
            raise DataError(f"dataset {bundle.info.name!r}: the {split_name} split is empty")
    return DatasetBundle(info, train, test)


def batches(
    split: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    indices: torch.Tensor | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches. In-memory splits are sliced (no per-item collate).

    ``indices`` restricts iteration to those examples, in that order (used for sharding).
    """
    n = len(split)  # type: ignore[arg-type]
    if indices is None:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    else:
        order = indices[torch.randperm(len(indices), generator=generator)] if shuffle else indices
    non_blocking = device is not None and torch.device(device).type == "cuda"
    if isinstance(split, TensorSplit):
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x, y = split.x[idx], split.y[idx]
            if device is not None:
                x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
            yield x, y
        return
    sampler = order.tolist()
    loader = DataLoader(
        split,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=non_blocking,
    )
    for x, y in loader:
        if device is not None:
            x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        yield x, y


def num_examples(split: Dataset) -> int:
    return len(split)  # type: ignore[arg-type]
