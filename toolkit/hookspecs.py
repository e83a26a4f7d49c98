"""Hook specifications. A plugin implements any of them with ``@rtk.hookimpl`` and
yields (or returns a list of) the matching records from :mod:`rtk.records`."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from .lifecycle import EpochMetrics, ReportSection, RunInfo, RunOutcome, StageInfo
from .records import (
    KINDS,
    AttackSpec,
    CertifierSpec,
    CommandSpec,
    DatasetSpec,
    LoggerSpec,
    ModelSpec,
    PrunerSpec,
    SimilaritySpec,
    StageSpec,
    TrainerSpec,
)

hookspec = pluggy.HookspecMarker("rtk")
hookimpl = pluggy.HookimplMarker("rtk")


@hookspec
def rtk_datasets() -> Iterable[DatasetSpec]:
    """Datasets: yield DatasetSpec records."""


@hookspec
def rtk_models() -> Iterable[ModelSpec]:
    """Architectures: yield ModelSpec records."""


@hookspec
def rtk_trainers() -> Iterable[TrainerSpec]:
    """Training objectives: yield TrainerSpec records."""


@hookspec
def rtk_attacks() -> Iterable[AttackSpec]:
    """Adversarial attacks: yield AttackSpec records."""


@hookspec
def rtk_pruners() -> Iterable[PrunerSpec]:
    """Pruning rules: yield PrunerSpec records."""


@hookspec
def rtk_similarity_metrics() -> Iterable[SimilaritySpec]:
    """Representation similarity metrics: yield SimilaritySpec records."""


@hookspec
def rtk_certifiers() -> Iterable[CertifierSpec]:
    """Certifiers of robustness: yield CertifierSpec records."""


@hookspec
def rtk_stages() -> Iterable[StageSpec]:
    """Kinds of experiment stage: yield StageSpec records."""


@hookspec
def rtk_commands() -> Iterable[CommandSpec]:
    """Extra CLI subcommands: yield CommandSpec records."""


@hookspec
def rtk_loggers() -> Iterable[LoggerSpec]:
    """Experiment trackers (TensorBoard, MLflow, ...): yield LoggerSpec records."""


# ---------------------------------------------------------------------------- lifecycle
# Called by the runner at fixed points of every run (see rtk.lifecycle); an implementation
# may take any subset of the arguments. A failing implementation is a warning naming its
# plugin (an error under RTK_STRICT_PLUGINS=1); results already written are kept.


@hookspec
def rtk_run_start(run: RunInfo) -> None:
    """A run starts (or resumes): the run directory holds ``config.json``."""


@hookspec
def rtk_stage_start(run: RunInfo, stage: StageInfo) -> None:
    """A stage is about to run (``stage.status == "running"``)."""


@hookspec
def rtk_epoch_metrics(run: RunInfo, stage: StageInfo, epoch: int, metrics: EpochMetrics) -> None:
    """The training loop finished an epoch of ``stage``; ``metrics.values`` holds its numbers."""


@hookspec
def rtk_stage_finish(run: RunInfo, stage: StageInfo) -> None:
    """A stage ended (``stage.status``: completed, with its tables and figures on disk; or failed)."""


@hookspec
def rtk_report_sections(run: RunInfo, stages: list[StageInfo]) -> Iterable[ReportSection]:
    """The final report.md is being written: yield ReportSection records to add to it."""


@hookspec
def rtk_run_finish(run: RunInfo, outcome: RunOutcome) -> None:
    """The run ended (completed or failed); ``outcome.report`` is the final report.md."""


#: hook name -> record kind (from the records: each record class names its hook)
HOOK_KINDS = {spec.HOOK: kind for kind, spec in KINDS.items()}
