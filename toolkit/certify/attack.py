"""A strong L-inf attack used to check certificates: a verified example must survive it.

:func:`margin_pgd` maximises the largest wrong-class margin ``max_j logit_j - logit_y``
(a stronger objective than cross-entropy near the decision boundary) with signed
gradient steps, random restarts, and a step size halved at 50% and 75% of the steps.
It keeps the worst (highest-margin) point found per example, so more restarts never
weaken it. :func:`logit_extremes` pushes single logits up or down, to probe bounds.
"""

from __future__ import annotations

import torch
from torch import nn

from .core import eval_mode


def _project(x_adv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.max(torch.min(x_adv, hi), lo)


def _ascend(
    objective,
    x: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    eps: float,
    steps: int,
    restarts: int,
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Maximise ``objective(x') -> (B,)`` over the box; return the best point per example."""
    best_x = x.clone()
    with torch.no_grad():
        best_v = objective(x)
    for r in range(restarts):
        if r == 0:
            cur = x.clone()
        else:
            u = (
                torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                if gen is not None
                else torch.rand_like(x)
            )
            cur = lo + u * (hi - lo)
        for s in range(steps):
            alpha = 2.5 * eps / steps * (0.5 ** ((s >= steps // 2) + (s >= 3 * steps // 4)))
            cur = cur.detach().requires_grad_(True)
            v = objective(cur)
            (g,) = torch.autograd.grad(v.sum(), cur)
            with torch.no_grad():
                better = v.detach() > best_v
                best_v = torch.where(better, v.detach(), best_v)
                best_x[better] = cur.detach()[better]
                cur = _project(cur + alpha * g.sign(), lo, hi)
        with torch.no_grad():
            v = objective(cur)
            better = v > best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = cur[better]
    return best_x.detach()


def margin_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 50,
    restarts: int = 5,
    clip: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> torch.Tensor:
    """Adversarial examples in the L-inf ball (intersected with ``clip``) maximising the
    wrong-class margin; the first restart starts at ``x``, the others uniformly at random."""
    lo, hi = (x - eps).clamp(*clip), (x + eps).clamp(*clip)
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def objective(z: torch.Tensor) -> torch.Tensor:
        logits = model(z)
        m = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
        return logits.masked_fill(m, float("-inf")).max(1).values - logits[m]

    with eval_mode(model):
        return _ascend(objective, x, lo, hi, eps, steps, restarts, gen)


def logit_extremes(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    restarts: int = 1,
    clip: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest value of every logit found by PGD (B, K) each: for each
    class, one attack minimising and one maximising it."""
    lo, hi = (x - eps).clamp(*clip), (x + eps).clamp(*clip)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model), torch.no_grad():
        k = model(x[:1]).shape[1]
    mins, maxs = [], []
    with eval_mode(model):
        for j in range(k):
            for sign, out in ((1.0, maxs), (-1.0, mins)):
                adv = _ascend(lambda z: sign * model(z)[:, j], x, lo, hi, eps, steps, restarts, gen)
                with torch.no_grad():
                    out.append(model(adv)[:, j])
    return torch.stack(mins, 1), torch.stack(maxs, 1)
