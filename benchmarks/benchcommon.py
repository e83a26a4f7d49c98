"""What the benchmark scripts share, and the tests with them: a model trained on digits in seconds, and the
``--rows`` switch of the modules that give rows of docs/performance.md (see ``run_all.py``).

Needs nothing beyond rtk's own dependencies (not the ``bench`` extra), so the tests import it too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn


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
