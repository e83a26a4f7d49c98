"""Zoo models beside your models: one data subset, one attack suite, one table.

:func:`compare_robustness` evaluates every contender (a zoo model or one of yours) on
the same examples with the same attacks, through rtk's evaluation machinery
(:mod:`rtk.evaluation`), and returns a long table (one row per model x attack) and a
wide one (one row per model) that also carries what RobustBench reports for each zoo
entry. :func:`compare_layers` computes CKA between the layers of two models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

log = logging.getLogger(__name__)

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(label, build)``: ``build(model)`` returns ``attack(x, y) -> x_adv`` for that model.
AttackFactory = tuple[str, Callable[[nn.Module], AttackFn]]


@dataclass(frozen=True)
class Contender:
    """A model in a comparison: its name, module, and whether it comes from the zoo."""

    name: str
    module: nn.Module
    source: str = "rtk"  # "zoo" or "rtk"
    zoo_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "source": self.source, "zoo_id": self.zoo_id,
                "params": sum(p.numel() for p in self.module.parameters())}


def zoo_contender(name: str, module: nn.Module) -> Contender:
    """A contender for a module loaded by :func:`rtk.zoo.load_zoo_model` (it carries ``rtk_zoo``)."""
    meta = getattr(module, "rtk_zoo", None) or {}
    return Contender(name, module, "zoo", meta.get("id"))


def _evaluate(model: nn.Module, split: Any, attacks: Sequence[tuple[str, AttackFn]], *, batch_size: int,
              device: torch.device | str) -> dict[str, float]:
    from rtk.evaluation.basic import robust_accuracy

    return robust_accuracy(model, split, attacks, batch_size=batch_size, device=device)


def compare_robustness(contenders: Sequence[Contender], split: Any, attacks: Sequence[AttackFactory], *,
                       batch_size: int = 128, device: torch.device | str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every contender on ``split`` (the same examples) under the same attacks.

    Returns ``(long, wide)``: ``long`` has one row per model x attack (``clean``, each
    attack, ``worst_case``) with ``accuracy`` and ``n``; ``wide`` one row per model with
    those accuracies as columns, its parameter count, and for zoo entries RobustBench's
    reported clean and robust (AutoAttack) accuracy.
    """
    from .catalog import reported_metrics

    if not contenders:
        raise ValueError("nothing to compare: give at least one model")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique in a comparison, got {names}")
    n = len(split)
    reported = reported_metrics() if any(c.zoo_id for c in contenders) else {}
    long_rows, wide_rows = [], []
    for c in contenders:
        model = c.module.to(device).eval()
        built = [(label, build(model)) for label, build in attacks]
        accs = _evaluate(model, split, built, batch_size=batch_size, device=device)
        base = c.to_dict()
        for key, acc in accs.items():
            long_rows.append({"model": c.name, "source": c.source, "attack": key, "accuracy": acc, "n": n})
        rep = reported.get(c.zoo_id or "")
        wide_rows.append({**base, **accs, "n": n,
                          "reported_clean": rep.clean_acc if rep else None,
                          "reported_robust": rep.robust_acc if rep else None,
                          "reported_eps": rep.eps if rep else None})
        log.info("compared %s: %s", c.name, ", ".join(f"{k} {v:.3f}" for k, v in accs.items()))
    return pd.DataFrame(long_rows), pd.DataFrame(wide_rows)


# ---------------------------------------------------------------------------- CKA between layers
def compare_layers_table(zoo_side: Sequence[Contender], mine: Sequence[Contender], split: Any, *,
                         layers: Sequence[str] = (), max_layers: int = 24, batch_size: int = 64,
                         device: torch.device | str = "cpu", figure_path: Callable[[str], Any] | None = None,
                         ) -> tuple[pd.DataFrame | None, dict[str, Any], str]:
    """CKA between the layers of each zoo model and each of your models (placeholder until
    :mod:`rtk.similarity` provides its kernels)."""
    return None, {}, "CKA was skipped: rtk.similarity does not provide CKA yet."
