"""The shared training loop."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..data.core import DatasetBundle, batches
from ..errors import ConfigError, TrainingDivergedError
from ..runtime import progress as _progress
from .objectives import Objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer: unknown optimizer {cfg.optimizer!r}; allowed: sgd, adam")


@torch.no_grad()
def accuracy(model: nn.Module, split, *, batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in batches(split, batch_size, device=device):
        correct += (model(x).argmax(1) == y).sum()
        total += len(y)
    model.train(was)
    return float(correct) / max(total, 1)


def fit(model: nn.Module, objective: Objective, data: DatasetBundle, cfg: LoopConfig, *, device: torch.device | str = "cpu",
        seed: int = 0, on_epoch: Callable[[int, dict], None] | None = None) -> pd.DataFrame:
    """Train ``model`` in place; return one row per epoch (loss, train and test accuracy)."""
    device = torch.device(device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = max(cfg.epochs * steps_per_epoch, 1)
    rows = []
    step = 0
    for epoch in _progress(range(1, cfg.epochs + 1), total=cfg.epochs, desc="train"):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for b, (x, y) in enumerate(batches(data.train, cfg.batch_size, shuffle=True, generator=gen, device=device)):
            out = objective(model, x, y, progress=step / total_steps)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            step += 1
            loss_sum += out.loss.detach() * len(y)
            logits = out.adv_logits if out.adv_logits is not None else out.logits
            if logits is not None:
                correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrainingDivergedError(f"loss became {train_loss} in epoch {epoch}")
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": float(correct) / max(seen, 1),
               "test_acc": accuracy(model, data.test, device=device)}
        rows.append(row)
        log.info("epoch %d: loss %.4f, test acc %.4f", epoch, row["train_loss"], row["test_acc"])
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    return pd.DataFrame(rows)
