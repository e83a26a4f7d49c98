"""Certified training objectives: IBP, CROWN-IBP, and Gaussian noise augmentation.

They are ordinary trainers (``rtk.TrainerSpec``), usable by the ``train`` stage and by any
stage that takes a trainer (pre-train, prune, fine-tune all verifiably). The eps warm-up and
ramp, which the kappa (and beta) schedules follow, take the unit of every trainer's
(:data:`rtk.TrainingSpan`): epochs, or a share of the run ("10%").
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, model_validator

import rtk

components = rtk.Components()

log = logging.getLogger(__name__)

#: The keys of the eps schedule before it took the unit of every trainer (a share of the run, as a
#: fraction): still read, with a deprecation line in the log.
_OLD_KEYS = {"warmup": "eps_warmup", "ramp": "eps_ramp"}


class IBPTrainOptions(rtk.Options):
    eps: rtk.Eps = Field(2 / 255, gt=0, le=1, description="target L-inf training radius")
    eps_warmup: rtk.TrainingSpan = Field(
        rtk.Span(0.1, share=True),
        description="clean training (eps 0) before the ramp: epochs (3), or a share of the run ('10%'); "
        "the old key `warmup` (a fraction, 0.1) still works",
    )
    eps_ramp: rtk.TrainingSpan = Field(
        rtk.Span(0.4, share=True),
        description="eps (and kappa, beta) move linearly to their targets over this: epochs (5), or a share of the "
        "run ('40%'); the old key `ramp` (a fraction, 0.4) still works",
    )
    kappa_start: float = Field(1.0, ge=0, le=1, description="weight of the clean loss at the start of the ramp")
    kappa_end: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the clean loss once eps reaches its target "
        "(CROWN-IBP's paper uses 0 on long runs; short runs at a "
        "large eps may then collapse to a constant classifier)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(_OLD_KEYS) & set(data):
            return data
        data = dict(data)
        for old, new in _OLD_KEYS.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"give {new} or the old key {old}, not both")
            value = data.pop(old)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{old}: expected a fraction of the run in [0, 1], got {value!r}")
            log.warning(
                "certified training: the key %r is deprecated; write %s = '%g%%' (or a number of epochs)",
                old,
                new,
                value * 100,
            )
            data[new] = rtk.Span(float(value), share=True)
        return data

    @model_validator(mode="after")
    def _fits(self):
        w, r = self.eps_warmup, self.eps_ramp
        if w.share and r.share and w.value + r.value > 1:
            raise ValueError(f"warmup + ramp must be at most the whole run, got eps_warmup {w} + eps_ramp {r}")
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
            Ramp(o.eps_warmup, o.eps_ramp),
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

components.table(rtk.TrainerSpec, _TRAINERS)

rtk_trainers = components.hookimpl(rtk.TrainerSpec)
