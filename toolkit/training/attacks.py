"""Lean in-house attacks used inside training and for the per-epoch robust evaluation.

:func:`perturb` is projected gradient ascent on a loss of the model's logits, under an
L-inf or L2 budget, inside the [0, 1] box. With ``steps=1``, ``init="uniform"`` and a step
of ``1.25 * eps`` it is the FGSM with random init of Wong et al. (2020); with a KL loss and
``init="normal"`` it is the inner maximisation of TRADES.

Gradients are taken with ``torch.autograd.grad`` with respect to the perturbation only, so
parameter gradients are neither computed nor touched. The attack never changes the model's
mode by itself; :func:`bn_mode` switches batch norm (and dropout) to eval mode around it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..options import NormLinfL2

Norm = NormLinfL2  # the norms rtk's PGD implements (rtk.NORMS spells every norm)
Init = Literal["uniform", "normal", "zero"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Scale of the small Gaussian start used by TRADES and MART (their official code).
NORMAL_INIT_STD = 0.001


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch (so each example's gradient is not scaled by 1/B)."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: Literal["eval", "train"]) -> Iterator[None]:
    """Run the block with the model in eval mode (``mode="eval"``) or as it is (``"train"``);
    the model's previous mode is restored afterwards."""
    was_training = model.training
    if mode == "eval" and was_training:
        model.eval()
    try:
        yield
    finally:
        if mode == "eval" and was_training:
            model.train()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def random_init(
    x: torch.Tensor, eps: float, norm: Norm, init: Init, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A starting perturbation: uniform in the eps-ball, a tiny Gaussian, or zero. The draws come
    from ``generator`` on its own device (a CPU generator may seed an attack on the GPU)."""
    if init == "zero" or eps <= 0:
        return torch.zeros_like(x)

    def draw(sample: Callable[..., torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        where = generator.device if generator is not None else x.device
        return sample(shape, generator=generator, device=where, dtype=x.dtype).to(x.device)

    if init == "normal":
        return NORMAL_INIT_STD * draw(torch.randn, x.shape)
    if norm == "Linf":
        return (2 * draw(torch.rand, x.shape) - 1) * eps
    # uniform in the L2 ball: a random direction, radius eps * U^(1/d)
    d = x[0].numel()
    direction = draw(torch.randn, x.shape)
    direction = direction / _flat_norm(direction)
    r = draw(torch.rand, (x.shape[0],)).pow(1.0 / d)
    return direction * (eps * r).view(-1, *([1] * (x.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of ``norm``."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta)).clamp(max=1.0)
    return delta * scale


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: Norm = "Linf",
    init: Init = "uniform",
    loss_fn: LossFn = ce_sum,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``x_adv`` (detached, in [0, 1], within ``eps`` of ``x``) maximising ``loss_fn``.

    ``loss_fn(logits, y)`` must return a scalar (sum over the batch). ``y`` is passed
    through unchanged, so a loss may use it as a target distribution (TRADES passes the
    clean probabilities). ``eps <= 0`` or ``steps == 0`` return ``x`` itself.
    """
    x = x.detach()
    if eps <= 0 or steps <= 0:
        return x
    delta = random_init(x, eps, norm, init, generator)
    delta = (x + delta).clamp_(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "Linf":
                delta = delta + alpha * grad.sign()
            else:
                delta = delta + alpha * grad / _flat_norm(grad)
            delta = project(delta, eps, norm)
            delta = (x + delta).clamp_(0, 1) - x
    return (x + delta).detach()


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s rule of thumb: a step of 2.5 * eps / steps (8/255 over 10 steps -> 2/255)."""
    return 2.5 * eps / max(steps, 1)


def max_eps(norm: Norm, shape: tuple[int, ...]) -> float:
    """The largest meaningful radius for inputs in [0, 1] of ``shape`` (C, H, W):
    1 for L-inf, sqrt(C*H*W) (the diameter of the box) for L2."""
    if norm == "Linf":
        return 1.0
    return math.sqrt(math.prod(shape))


__all__ = [
    "Init",
    "Norm",
    "bn_mode",
    "ce_sum",
    "default_alpha",
    "max_eps",
    "perturb",
    "project",
    "random_init",
]
