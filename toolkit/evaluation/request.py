"""The typed request of an evaluation job: the attack suite and how to run it.

Every stage that evaluates models against an attack suite (``evaluate``, ``zoo``) embeds
these fields by subclassing :class:`AttackSuiteOptions`, so they are declared once, with one
default and one description each; a stage may narrow a default (``batch_size``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..options import Eps, Options
from ..refs import AttackRef
from .checks import CheckSettings

#: A threat model an eps can be given for (the names of :data:`rtk.evaluation.NORMS`).
Norm = Literal["Linf", "L2", "L1"]


class AttackSuiteOptions(Options):
    """The attack suite of an evaluation and how it runs (embedded in stage options)."""

    attacks: list[AttackRef] = Field(
        default_factory=lambda: [AttackRef(name="autoattack")],
        min_length=1,
        description="the attack suite, in order, the same for every model",
    )
    eps: list[Eps] | dict[Norm, list[Eps]] | None = Field(
        None,
        description="run every bounded attack at each eps (a list, or a table per norm: { Linf = [...], L2 = "
        "[...] }); gives the accuracy-vs-eps curve. Default: each attack's own eps",
    )
    headline_eps: Eps | None = Field(
        None, description="eps of the headline worst case (default: the largest eps of the first bounded attack)"
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="evaluate on a fixed random subset of this many examples (the same subset in every stage "
        "with the same limit)",
    )
    batch_size: int = Field(256, ge=1)
    early_exit: bool = Field(
        False,
        description="attacks skip examples an earlier attack already broke (faster; the "
        "stand-alone accuracy of later attacks is then not reported)",
    )
    checks: bool = Field(True, description="run the sanity checks")
    check_settings: CheckSettings = Field(
        default_factory=CheckSettings, description="thresholds and sizes of the checks"
    )
