"""Training objectives: what the shared loop minimises on one batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ObjectiveOutput:
    """``loss`` to minimise; ``logits`` on clean inputs (or None when the objective does not
    compute them); ``adv_logits`` on the perturbed inputs the objective trained on."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    adv_logits: torch.Tensor | None = None


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        """``progress`` is the fraction of training done, in [0, 1] (for eps ramps)."""
        ...


class StandardObjective:
    """Cross-entropy on clean inputs."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits)
