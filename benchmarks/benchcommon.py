"""What the benchmark scripts share, and the tests with them: a model trained on digits in seconds, ResNet-20 on
CIFAR-size inputs labelled with its own predictions, the bare channels_last PGD loop rtk's evaluation is measured
against, and the ``--rows`` switch of the modules that give rows of docs/performance.md (see ``run_all.py``).

Needs nothing beyond rtk's own dependencies (not the ``bench`` extra), so the tests import it too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rtk.data import TensorSplit


def fit_minibatches(model: nn.Module, data, epochs: int) -> nn.Module:
    """``model`` trained on ``data``'s training split for ``epochs`` epochs of shuffled minibatches of 64
    (Adam, lr 3e-3, the order seeded), in eval mode: a few seconds for a small CNN on digits."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x, y = data.train.x, data.train.y
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def resnet20(side: int = 32, *, blocks: int = 3, width: int = 16) -> tuple[Any, nn.Module]:
    """``(info, model)``: rtk's resnet-small as ResNet-20 (``blocks`` blocks per stage, base width ``width``) for
    CIFAR-size inputs (3 x ``side`` x ``side``, 10 classes), random weights seeded 0, in training mode, on the CPU."""
    from rtk.data.core import DataInfo
    from rtk.models.resnet import resnet_small

    info = DataInfo("cifar-sized", 10, 3, side, side, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    torch.manual_seed(0)
    return info, resnet_small(info, blocks=blocks, width=width)


def self_labelled(model: nn.Module, n: int, side: int, device: torch.device | str = "cpu") -> TensorSplit:
    """``n`` random images (3 x ``side`` x ``side``, seeded, on the CPU) labelled with ``model``'s own predictions
    (``model`` on ``device``), so every example is clean-correct and attacked by every side."""
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x.to(device)).argmax(1).cpu()
    return TensorSplit(x, y)


def bare_pgd(
    model: nn.Module, split: TensorSplit, batch_size: int, eps: float, steps: int, device: torch.device | str = "cpu"
) -> float:
    """Robust accuracy by the bare loop: batches moved to ``device`` as channels_last, frozen weights, a clean
    forward, ``steps`` PGD steps (step eps/4, uniform start) and a forward on the adversarial batch; the count is
    read once, after the last batch."""
    alpha = eps / 4
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    robust = []
    try:
        for start in range(0, len(split), batch_size):
            x = split.x[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            y = split.y[start : start + batch_size].to(device)
            with torch.inference_mode():
                clean = model(x).argmax(1) == y
            xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(steps):
                xa.requires_grad_(True)
                (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xa), y), xa)
                xa = torch.minimum(torch.maximum(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
            with torch.inference_mode():
                robust.append((clean & (model(xa).argmax(1) == y)).sum())
    finally:
        for p in params:
            p.requires_grad_(True)
    return int(sum(robust)) / len(split)


def parse_or_print_rows(ap: argparse.ArgumentParser, rows: Callable[[bool], list[dict]]) -> argparse.Namespace | None:
    """The arguments of a bench module that gives rows, with its ``--rows`` switch added (``ap`` has ``--quick``);
    with ``--rows``, prints ``rows(quick)`` and gives None: the script stops there."""
    ap.add_argument("--rows", action="store_true", help="print the rows of docs/performance.md and stop")
    args = ap.parse_args()
    if not args.rows:
        return args
    for row in rows(args.quick):
        print(row)
    return None
