"""The unforeseen attacks of Kang et al. (2019), JPEG, Gabor and Snow, as attack plugins.

The algorithms live in ``rtk.evaluation`` (``jpeg_attack``, ``gabor_attack``, ``snow_attack``); each attack has its own threat model
(not an Lp ball in pixel space), so they register with ``norm = "none"``: the evaluation reports
them per attack, never inside an Lp worst case. The defaults are paper 1's evaluation settings
(``inspire-group/robust_representation_similarity``, ``configs/configs_cifar.yml``, 10 steps),
translated to rtk's parametrisation (see docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

import rtk
from rtk.evaluation import OUTPUT_PATTERN, Normalization

if TYPE_CHECKING:
    import torch

components = rtk.Components()


class _Common(rtk.Options):
    steps: int = Field(10, ge=1, description="gradient steps")
    seed: int = Field(0, description="seed of the attack's randomness; the global RNG is left untouched")
    output: str = Field(
        "logits",
        pattern=OUTPUT_PATTERN,
        description='what the model returns: "logits", "first", "index:N" or "key:NAME"',
    )
    normalize: Normalization | None = Field(
        None, description="{ mean, std } the model expects; the attack normalizes its [0, 1] inputs itself"
    )


class JPEGOptions(_Common):
    norm: Literal["Linf", "L2"] = Field("L2", description="norm of the coefficient perturbation nu")
    eps: float = Field(
        12.5, ge=0, description="budget on nu, in quantization steps (paper 1: L2 12.5, Kang et al.'s 25 halved)"
    )
    step_size: float | None = Field(None, gt=0, description="step (default eps/4; normalised gradient in L2)")
    quality: int = Field(50, ge=1, le=100, description="JPEG quality that scales the quantization tables")
    random_start: bool = Field(True, description="start at a random point of the budget")


class GaborOptions(_Common):
    eps: rtk.Eps = Field(75 / 255, ge=0, le=1, description="L-inf size of the Gabor noise in [0, 1] pixels")
    step_size: float = Field(0.05, gt=0, description="signed step on the noise variables (in [-1, 1])")
    kernel_size: int = Field(23, ge=3, le=63, description="side of the Gabor kernel (odd; even sizes get +1)")
    density: float = Field(1 / 14, gt=0, le=1, description="share of positions carrying a noise variable")


class SnowOptions(_Common):
    eps: float = Field(2.0, ge=0, description="brightness scale of the snow in [0, 1] pixels")
    step_size: float = Field(0.1, gt=0, description="signed step on the flake intensities (in [0, 1])")
    budget: float = Field(0.15, gt=0, le=1, description="largest mean flake intensity per region (flake density)")
    flake_size: int = Field(13, ge=3, le=63, description="side of the streak kernels (odd; even sizes get +1)")
    discolor: float = Field(0.25, ge=0, le=1, description="share of whitening mixed into the image")


def _builder(run: Callable[..., Any] | str, keys: tuple[str, ...]) -> Callable[[torch.nn.Module, Any], Callable]:
    """``build(model, o)``: an ``attack(x, y)`` running ``run(view, x, y, **options)``; ``run`` is a
    function or the name of one in ``rtk.evaluation`` (imported when the attack is built)."""

    def build(model: torch.nn.Module, o: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        from rtk.evaluation import model_view

        fn = getattr(rtk.evaluation, run) if isinstance(run, str) else run
        view = model_view(model, o.output, o.normalize)
        kwargs = {k: getattr(o, k) for k in keys}

        def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fn(view, x, y, seed=o.seed, steps=o.steps, **kwargs).x_adv

        return attack

    return build


def _snow(view, x, y, *, discolor: float, **kw):
    from rtk.evaluation import snow_attack

    return snow_attack(view, x, y, discolor_amount=discolor, **kw)


#: The unforeseen attacks: name, options, build (``_builder(attack, the options it takes besides seed and steps)``),
#: summary.
_ATTACKS = (
    (
        "jpeg",
        JPEGOptions,
        _builder("jpeg_attack", ("eps", "step_size", "norm", "quality", "random_start")),
        "JPEG attack: perturbs the quantized DCT coefficients, Linf or L2 (Kang et al. 2019)",
    ),
    (
        "gabor",
        GaborOptions,
        _builder("gabor_attack", ("eps", "step_size", "kernel_size", "density")),
        "Gabor attack: optimised Gabor noise, L-inf bounded in pixels (Kang et al. 2019)",
    ),
    (
        "snow",
        SnowOptions,
        _builder(_snow, ("eps", "step_size", "budget", "flake_size", "discolor")),
        "Snow attack: optimised snowflake intensities under a density budget (Kang et al. 2019)",
    ),
)


components.table(rtk.AttackSpec, _ATTACKS, norm="none")

rtk_attacks = components.hookimpl(rtk.AttackSpec)
