"""An example rtk plugin.

It registers two components through rtk's public API only:

- the attack ``uniform-noise``: random noise drawn uniformly from the L-inf ball
  (a baseline every attack must beat: rtk's sanity checks use the same idea);
- the similarity metric ``gram-cosine``: the cosine between the *uncentered* Gram
  matrices of two representations (the RV coefficient without centering).
"""

from __future__ import annotations

import torch
from pydantic import Field

import rtk


class NoiseOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius of the noise")
    seed: int = Field(0, description="seed of the noise generator")


def build_noise(model: torch.nn.Module, opts: NoiseOptions):
    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(opts.seed)
        noise = (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device, x.dtype) * opts.eps
        return (x + noise).clamp(0, 1)

    return attack


class GramCosineOptions(rtk.Options):
    """No options."""


def gram_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """<XX^T, YY^T>_F / (||XX^T||_F ||YY^T||_F), computed in feature space in float64."""
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    cross = (x.T @ y).square().sum()
    return float(cross / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()))


@rtk.hookimpl
def rtk_attacks():
    yield rtk.AttackSpec(
        name="uniform-noise",
        summary="uniform random noise in the L-inf ball (example plugin)",
        options=NoiseOptions,
        build=build_noise,
        norm="Linf",
    )


@rtk.hookimpl
def rtk_similarity_metrics():
    yield rtk.SimilaritySpec(
        name="gram-cosine",
        summary="cosine of uncentered Gram matrices (example plugin)",
        options=GramCosineOptions,
        build=lambda opts: gram_cosine,
    )
