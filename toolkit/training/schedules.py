"""Optimisers and per-step learning-rate schedules.

The schedule is a pure function of the step (:func:`lr_factor`), driven by a
``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimiser step, so its state is a
step counter that resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ConfigError
from .config import LoopConfig


def make_optimizer(params: Iterable[Any], cfg: LoopConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam, both with weight decay, over ``params``
    (parameters or param-group dicts)."""
    params = list(params)
    if not params:
        raise ConfigError(
            "no parameters to optimise: the parameter list is empty "
            "(every parameter frozen, or a params pattern that matches nothing)"
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer: unknown optimizer {cfg.optimizer!r}; allowed: sgd, adam")


def default_milestones(epochs: int) -> list[float]:
    """50% and 75% of training (Madry et al.'s and Rice et al.'s shape: 100 and 150 of 200)."""
    return [epochs * 0.5, epochs * 0.75]


def lr_factor(step: int, cfg: LoopConfig, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) divided by ``cfg.lr``."""
    spe = max(steps_per_epoch, 1)
    total = max(cfg.epochs * spe, 1)
    floor = cfg.lr_min / cfg.lr
    if cfg.schedule == "one-cycle":
        peak = cfg.pct_start if cfg.pct_start is not None else 0.5
        u = (step + 0.5) / total  # mid-step position: the first step is not taken at lr_min
        frac = u / peak if u <= peak else max(0.0, (1.0 - u) / (1.0 - peak))
        return floor + (1.0 - floor) * min(frac, 1.0)
    warm = cfg.lr_warmup * spe
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "piecewise":
        epoch = step / spe
        milestones = cfg.milestones if cfg.milestones is not None else default_milestones(cfg.epochs)
        return cfg.gamma ** sum(1 for m in milestones if epoch >= m)
    if cfg.schedule == "cosine":
        t = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"schedule: unknown schedule {cfg.schedule!r}; allowed: constant, piecewise, cosine, one-cycle")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: LoopConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))


__all__ = ["default_milestones", "lr_factor", "make_optimizer", "make_scheduler"]
