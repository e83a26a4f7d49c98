"""An example rtk plugin.

It declares two components through rtk's public API only, with ``rtk.Components``: each
component is registered where it is written, and the hooks yield what was registered.

- the attack ``uniform-noise``: random noise drawn uniformly from the L-inf ball
  (a baseline every attack must beat: rtk's sanity checks use the same idea);
- the similarity metric ``gram-cosine``: the cosine between the *uncentered* Gram
  matrices of two representations (the RV coefficient without centering).
"""

from __future__ import annotations

import torch
from pydantic import Field

import rtk

components = rtk.Components()


class NoiseOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius of the noise")
    seed: int = Field(0, description="seed of the noise generator")


@components.register(rtk.AttackSpec, "uniform-noise", NoiseOptions, norm="Linf")
def build_noise(model: torch.nn.Module, opts: NoiseOptions):
    """uniform random noise in the L-inf ball (example plugin)"""  # the docstring is the summary

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


@components.register(rtk.SimilaritySpec, "gram-cosine", GramCosineOptions)
def build_gram_cosine(opts: GramCosineOptions):
    """cosine of uncentered Gram matrices (example plugin)"""
    return gram_cosine


rtk_attacks = components.hookimpl(rtk.AttackSpec)
rtk_similarity_metrics = components.hookimpl(rtk.SimilaritySpec)
