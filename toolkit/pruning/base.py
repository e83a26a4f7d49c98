"""The pruner protocol, the job a pruner receives, and ratio/compression arithmetic.

A pruner plugin yields ``rtk.PrunerSpec(name=..., build=lambda opts: pruner, structured=...)``.
The built object satisfies :class:`Pruner`:

- ``validate(model, layers, example_inputs)`` raises before any work when the pruner cannot
  prune these layers of this model (a structured pruner checks the dependency graph);
- ``prune(model, ratio, job)`` removes the fraction ``ratio`` of the weights of
  ``job.layers`` and returns a :class:`PruneOutcome`. Unstructured pruners mask weights in
  place (:mod:`rtk.pruning.masks`); structured pruners return a smaller model.

The rule that chooses what to remove does not depend on the training objective; data-driven
rules (HYDRA scores, Taylor importance) use ``job.objective`` and ``job.data`` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError, RtkError
from ..jobs import PruneRequest, default


class PruningError(RtkError):
    """A model cannot be pruned as asked (says which layer and what to do)."""


class PhaseLoop:
    """What the records of pruning's training phases (:class:`ScoreTraining`,
    :class:`rtk.pruning.Schedule`) share: the loop settings of every phase, and the
    :class:`rtk.training.LoopConfig` of one phase from them."""

    batch_size: int
    optimizer: str
    momentum: float
    loop_options: dict[str, Any]

    def phase_loop(self, epochs: int, lr: float, weight_decay: float) -> Any:
        return make_loop_config(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=weight_decay,
            options=self.loop_options,
        )


@dataclass(frozen=True)
class ScoreTraining(PhaseLoop):
    """How data-driven pruners train their scores (HYDRA): the same loop as training.
    ``loop_options`` are further :class:`rtk.training.LoopConfig` fields (schedule, ...)."""

    epochs: int = default(PruneRequest, "score_epochs")
    batch_size: int = default(PruneRequest, "batch_size")
    lr: float = default(PruneRequest, "score_lr")
    optimizer: str = default(PruneRequest, "optimizer")
    momentum: float = default(PruneRequest, "momentum")
    weight_decay: float = default(PruneRequest, "score_weight_decay")
    loop_options: dict[str, Any] = field(default_factory=dict)

    def loop(self) -> Any:
        return self.phase_loop(self.epochs, self.lr, self.weight_decay)


#: Defaults the pruning pipeline gives the training loop unless the user overrides them:
#: no per-epoch attack evaluation (the pipeline evaluates every model at the end).
LOOP_DEFAULTS: dict[str, Any] = {"eval_size": 0}


def make_loop_config(
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    momentum: float,
    weight_decay: float,
    options: dict[str, Any] | None = None,
    where: str = "loop",
) -> Any:
    """A :class:`rtk.training.LoopConfig` from the pipeline's settings plus user ``options``
    (validated; an unknown key is a ConfigError naming it)."""
    from ..options import validate_options
    from ..training import LoopConfig

    base: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        **LOOP_DEFAULTS,
    }
    if optimizer == "sgd":
        base["momentum"] = momentum
    return validate_options(LoopConfig, {**base, **(options or {})}, where=where)


@dataclass
class PruneJob:
    """What a pruner gets besides the model and the ratio.

    ``layers``: names of the layers to prune (already selected). ``example_inputs``: one
    small batch in [0, 1] for tracing. ``data``/``objective``: the training data and the
    objective (an :class:`rtk.training.Objective`) for data-driven rules; None for one-shot
    rules. ``scores``: settings of score training.
    """

    layers: Sequence[str]
    example_inputs: torch.Tensor
    data: Any = None
    objective: Any = None
    device: torch.device | str = "cpu"
    seed: int = 0
    scores: ScoreTraining = field(default_factory=ScoreTraining)


@dataclass(frozen=True)
class PruneOutcome:
    """The pruned model (the same object for unstructured pruners) and what was done."""

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.info)


@runtime_checkable
class Pruner(Protocol):
    """What ``PrunerSpec.build(options)`` returns."""

    name: str
    structured: bool

    def validate(self, model: nn.Module, layers: Sequence[str], example_inputs: torch.Tensor) -> None:
        """Raise (ConfigError / PruningError) before any work if these layers cannot be pruned."""
        ...

    def prune(self, model: nn.Module, ratio: float, job: PruneJob) -> PruneOutcome:
        """Remove the fraction ``ratio`` of the weights of ``job.layers``."""
        ...


# ----------------------------------------------------------------------------- ratios
def ratio_from_compression(compression: float) -> float:
    """``compression`` = dense / remaining weights; the fraction removed is ``1 - 1/c``."""
    if not compression > 1:
        raise ConfigError(f"compression must be greater than 1 (10 means 10x fewer weights), got {compression}")
    return 1.0 - 1.0 / compression


def check_ratio(ratio: float, where: str = "ratio") -> float:
    if not 0 < ratio < 1:
        raise ConfigError(
            f"{where}: a pruning ratio is the fraction of weights removed and must lie strictly "
            f"between 0 and 1, got {ratio}"
        )
    return float(ratio)


def keep_count(n: int, ratio: float) -> int:
    """How many of ``n`` weights survive pruning ``ratio`` of them (at least one)."""
    return max(1, n - int(round(ratio * n)))


def compression_label(compression: float) -> str:
    """``10 -> "10x"``, ``2.5 -> "2.5x"``, ``1e9 -> "1000000000x"`` (no exponent: a label is part of
    a model name, whose rule allows no ``+``)."""
    if float(compression).is_integer() and abs(compression) < 1e18:
        return f"{int(compression)}x"
    return f"{compression:g}".replace("e+", "e") + "x"
