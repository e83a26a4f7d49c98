"""Certified training objectives: IBP, CROWN-IBP, and Gaussian noise augmentation.

They are ordinary trainers (``rtk.TrainerSpec``), usable by the ``train`` stage and by any
stage that takes a trainer (pre-train, prune, fine-tune all verifiably). The eps ramp and
the kappa (and beta) schedules are measured in fractions of the whole training run.
"""

from __future__ import annotations

from pydantic import Field, model_validator

import rtk


class IBPTrainOptions(rtk.Options):
    eps: rtk.Eps = Field(2 / 255, gt=0, le=1, description="target L-inf training radius")
    warmup: float = Field(0.1, ge=0, le=1, description="fraction of training with eps = 0 (clean warm-up)")
    ramp: float = Field(0.4, ge=0, le=1, description="fraction of training over which eps grows linearly to its target")
    kappa_start: float = Field(1.0, ge=0, le=1, description="weight of the clean loss at the start of the ramp")
    kappa_end: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the clean loss once eps reaches its target "
        "(CROWN-IBP's paper uses 0 on long runs; short runs at a "
        "large eps may then collapse to a constant classifier)",
    )

    @model_validator(mode="after")
    def _fits(self):
        if self.warmup + self.ramp > 1:
            raise ValueError(f"warmup + ramp must be at most 1 (the whole run), got {self.warmup} + {self.ramp}")
        return self


class CrownIBPTrainOptions(IBPTrainOptions):
    beta_start: float = Field(1.0, ge=0, le=1, description="weight of the CROWN-IBP bound (vs IBP) at the start")
    beta_end: float = Field(
        0.0, ge=0, le=1, description="weight of the CROWN-IBP bound (vs IBP) at the end of the ramp"
    )


class GaussianNoiseOptions(rtk.Options):
    sigma: float = Field(
        0.25,
        gt=0,
        description="standard deviation of the noise, in [0, 1] pixel units; certify with smoothing at the same sigma",
    )


def _certified(method: str):
    def build(o):
        from rtk.certify import CertifiedObjective, Ramp

        return CertifiedObjective(
            o.eps,
            method,
            Ramp(o.warmup, o.ramp),
            o.kappa_start,
            o.kappa_end,
            getattr(o, "beta_start", 1.0),
            getattr(o, "beta_end", 0.0),
        )

    return build


def _gaussian(o: GaussianNoiseOptions):
    from rtk.certify import GaussianNoiseObjective

    return GaussianNoiseObjective(o.sigma)


#: The certified-training trainers: name, options, build, summary.
_TRAINERS = (
    (
        "ibp",
        IBPTrainOptions,
        _certified("ibp"),
        "IBP certified training with eps ramp and kappa schedule (Gowal et al. 2018)",
    ),
    (
        "crown-ibp",
        CrownIBPTrainOptions,
        _certified("crown-ibp"),
        "CROWN-IBP certified training, beta and kappa schedules (Zhang et al. 2020)",
    ),
    ("gaussian-noise", GaussianNoiseOptions, _gaussian, "cross-entropy under Gaussian noise, for randomized smoothing"),
)


@rtk.hookimpl
def rtk_trainers():
    for name, options, build, summary in _TRAINERS:
        yield rtk.TrainerSpec(name=name, summary=summary, options=options, build=build)
