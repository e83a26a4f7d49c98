"""Minimal robust accuracy: clean accuracy, accuracy under each attack, and the
per-example worst case over all attacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.core import batches

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def robust_accuracy(model: nn.Module, split, attacks: Sequence[tuple[str, AttackFn]], *, batch_size: int = 256,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Return ``{"clean": acc, <attack>: acc, "worst_case": acc}`` on ``split``."""
    model.eval()
    correct_clean = torch.zeros((), dtype=torch.long)
    correct = {name: torch.zeros((), dtype=torch.long) for name, _ in attacks}
    worst = torch.zeros((), dtype=torch.long)
    total = 0
    for x, y in batches(split, batch_size, device=device):
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        correct_clean += ok.sum().cpu()
        robust = ok.clone()
        for name, attack in attacks:
            x_adv = attack(x, y)
            with torch.no_grad():
                ok_a = model(x_adv).argmax(1) == y
            correct[name] += ok_a.sum().cpu()
            robust &= ok_a
        worst += robust.sum().cpu()
        total += len(y)
    out = {"clean": float(correct_clean) / total}
    out.update({k: float(v) / total for k, v in correct.items()})
    out["worst_case"] = float(worst) / total
    return out
