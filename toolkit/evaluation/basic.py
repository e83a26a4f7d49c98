"""Minimal robust accuracy: clean accuracy, accuracy under each attack, and the
per-example worst case over all attacks, as a dict.

A thin interface over :func:`rtk.evaluation.evaluate` (records in memory, no sanity
checks) for callers that hold plain ``attack(x, y) -> x_adv`` functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def robust_accuracy(
    model: nn.Module,
    split,
    attacks: Sequence[tuple[str, AttackFn]],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Return ``{"clean": acc, <attack>: acc, "worst_case": acc}`` on ``split``.

    An example counts as robust to an attack when the model classifies it correctly both
    clean and under the attack (adversarial examples outside [0, 1] or not finite do not
    count); ``worst_case`` is robust to every attack.
    """
    from .engine import evaluate
    from .units import function_units

    names = [name for name, _ in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    res = evaluate(
        model,
        split,
        function_units(attacks),
        batch_size=batch_size,
        device=device,
        checks=False,
        save_adversarial="none",
    )
    o = res.outcomes
    out = {"clean": res.clean_accuracy}
    for u in o.units:
        out[u.unit.label] = float((o.clean_correct & ~u.broken).mean())
    out["worst_case"] = float(o.robust_at("none", None, res.tol).mean())
    return out
