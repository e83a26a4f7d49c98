"""The typed request of an evaluation job: the attack suite and how to run it, with the option
models it and the attack plugins share (:class:`Normalization`, :data:`OUTPUT_PATTERN`,
:class:`CheckSettings`). Like every option model, they import no torch: ``rtk plugins`` and
``rtk reference`` read them without loading the engine.

Every stage that evaluates models against an attack suite (``evaluate``, ``zoo``) embeds
these fields by subclassing :class:`AttackSuiteOptions`, so they are declared once, with one
default and one description each; a stage may narrow a default (``batch_size``).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from ..options import Eps, Norm, Options
from ..refs import AttackRef

#: Allowed values of the ``output`` option.
OUTPUT_PATTERN = r"^(logits|first|index:\d+|key:.+)$"


class Normalization(Options):
    """Per-channel normalization a model expects on its inputs: ``(x - mean) / std``."""

    mean: list[float] = Field(min_length=1, description="per-channel mean")
    std: list[float] = Field(min_length=1, description="per-channel standard deviation (positive)")

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class CheckSettings(Options):
    """Thresholds and sizes of the sanity checks."""

    examples: int = Field(100, ge=1, description="largest subset the per-example checks use")
    min_examples: int = Field(8, ge=1, description="smallest subset of the checks, whatever the budget")
    budget: float = Field(
        0.1,
        ge=0,
        description="share of the evaluation's work (examples x passes) the checks may use; it sizes their "
        "subset, and more_steps is skipped, saying so, when it would not fit",
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="accuracy tolerance of the comparisons (share of the subset; at least one example)",
    )
    zero_grad_max: float = Field(
        0.1, ge=0, le=1, description="largest share of examples whose input gradient is exactly zero"
    )
    chance_margin: float = Field(
        0.1, ge=0, le=1, description="accuracy allowed above chance (1/classes) at unbounded eps"
    )
    unbounded_steps: int = Field(25, ge=1, description="steps of the unbounded-eps PGD")
    noise_draws: int = Field(8, ge=1, description="random-noise draws per example")
    black_box_queries: int = Field(
        100,
        ge=1,
        validation_alias=AliasChoices("black_box_queries", "square_queries"),
        description="effort (queries) of the black-box attack the black_box check runs when the suite has none "
        "(alias: square_queries)",
    )
    rtol: float = Field(1e-4, gt=0, description="tolerance of output comparisons, relative to the largest logit")
    bounds_tol: float = Field(1e-5, ge=0, description="slack of ||delta|| <= eps (absolute, and relative to eps)")


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
    batch_size: int = Field(256, ge=1, description="examples per batch")
    early_exit: bool = Field(
        False,
        description="attacks skip examples an earlier attack already broke (faster; the "
        "stand-alone accuracy of later attacks is then not reported)",
    )
    checks: bool = Field(True, description="run the sanity checks")
    check_settings: CheckSettings = Field(
        default_factory=CheckSettings, description="thresholds and sizes of the checks"
    )
