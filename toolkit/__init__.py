"""rtk: a plugin-based toolkit for adversarially robust neural networks.

Public API (what built-in and third-party plugins may use):

- ``hookimpl``: mark plugin hook implementations; ``Components``: declare a plugin's components
  where each is written and get the hook implementations that yield their records.
- records: ``AttackSpec``, ``TrainerSpec``, ``PrunerSpec``, ``SimilaritySpec``,
  ``CertifierSpec``, ``DatasetSpec``, ``ModelSpec``, ``StageSpec``, ``CommandSpec``.
- ``Options`` (base of every options model), ``Eps`` (a float written as "8/255"), ``TrainingSpan``
  (a ``Span`` of training: epochs, or a share of the run written "10%").
- the typed requests of the pruning and similarity jobs: ``PruneRequest``, ``SimilarityRequest``.
- ``plugin_manager()``, ``Registry``, ``default_registry()``.
- ``load_experiment()``, ``plan()``, ``run()``, ``StageContext``, ``StageResult``.
- one call per task (:mod:`rtk.api`): ``evaluate``, ``train``, ``prune``, ``verify``,
  ``compare``; kernels ``cka``, ``svcca``, ``pwcca``, ``procrustes``.
- lifecycle records (what the lifecycle hooks receive, :mod:`rtk.lifecycle`): ``RunInfo``,
  ``StageInfo``, ``EpochMetrics``, ``RunOutcome``, ``ReportSection``; loggers: ``LoggerSpec``;
  ``markdown_table(df)`` (how report.md renders a table, for report sections).
- submodules: ``rtk.data``, ``rtk.models``, ``rtk.training``, ``rtk.evaluation``,
  ``rtk.similarity``, ``rtk.pruning``, ``rtk.certify``, ``rtk.zoo``, ``rtk.distributed``,
  ``rtk.study`` (overrides, sweeps, executors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import LazyFace

if TYPE_CHECKING:
    # one call per task on your own model and data (rtk.api)
    from .api import ApiError, cka, compare, evaluate, procrustes, prune, pwcca, svcca, train, verify
    from .config import Experiment
    from .context import StageContext
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        PluginError,
        RtkError,
        StageError,
        UnknownComponentError,
    )
    from .execution import execute, run
    from .hookspecs import hookimpl, hookspec
    from .jobs import PruneRequest, SimilarityRequest
    from .lifecycle import EpochMetrics, ReportSection, RunInfo, RunOutcome, StageInfo
    from .options import (
        NORMS,
        Eps,
        NoOptions,
        Norm,
        NormLinfL2,
        Options,
        Span,
        TrainingSpan,
        check_norm,
        validate_options,
    )
    from .planning import Plan, Planning, experiment_from_dict, load_experiment, plan
    from .records import (
        AttackSpec,
        CertifierSpec,
        CommandSpec,
        Components,
        ComponentSpec,
        DatasetSpec,
        LoggerSpec,
        ModelSpec,
        PrunerSpec,
        RunResult,
        SimilaritySpec,
        StageResult,
        StageSpec,
        TrainerSpec,
    )
    from .refs import AttackRef, CertifierRef, ComponentRef, ModelRef, PrunerRef, SimilarityRef, TrainerRef
    from .registry import Registry, default_registry, plugin_manager
    from .report import markdown_table

#: Public name -> the submodule that defines it. Importing ``rtk`` imports none of them (so
#: ``rtk --help`` starts without torch, pandas or pydantic); each is imported on first use.
_LAZY = {
    "ApiError": "api",
    "cka": "api",
    "compare": "api",
    "evaluate": "api",
    "procrustes": "api",
    "prune": "api",
    "pwcca": "api",
    "svcca": "api",
    "train": "api",
    "verify": "api",
    "Experiment": "config",
    "experiment_from_dict": "planning",
    "load_experiment": "planning",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "PluginError": "errors",
    "RtkError": "errors",
    "StageError": "errors",
    "UnknownComponentError": "errors",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "EpochMetrics": "lifecycle",
    "ReportSection": "lifecycle",
    "RunInfo": "lifecycle",
    "RunOutcome": "lifecycle",
    "StageInfo": "lifecycle",
    "Eps": "options",
    "Span": "options",
    "PruneRequest": "jobs",
    "SimilarityRequest": "jobs",
    "NORMS": "options",
    "Norm": "options",
    "NormLinfL2": "options",
    "check_norm": "options",
    "TrainingSpan": "options",
    "NoOptions": "options",
    "Options": "options",
    "validate_options": "options",
    "AttackSpec": "records",
    "CertifierSpec": "records",
    "CommandSpec": "records",
    "ComponentSpec": "records",
    "Components": "records",
    "DatasetSpec": "records",
    "LoggerSpec": "records",
    "ModelSpec": "records",
    "PrunerSpec": "records",
    "SimilaritySpec": "records",
    "StageSpec": "records",
    "TrainerSpec": "records",
    "AttackRef": "refs",
    "CertifierRef": "refs",
    "ComponentRef": "refs",
    "ModelRef": "refs",
    "PrunerRef": "refs",
    "SimilarityRef": "refs",
    "TrainerRef": "refs",
    "Registry": "registry",
    "default_registry": "registry",
    "plugin_manager": "registry",
    "markdown_table": "report",
    "Plan": "planning",
    "Planning": "planning",
    "RunResult": "records",
    "StageContext": "context",
    "StageResult": "records",
    "execute": "execution",
    "plan": "planning",
    "run": "execution",
}

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "hookspec",
    "AttackSpec",
    "CertifierSpec",
    "CommandSpec",
    "ComponentSpec",
    "Components",
    "DatasetSpec",
    "LoggerSpec",
    "EpochMetrics",
    "ReportSection",
    "RunInfo",
    "RunOutcome",
    "StageInfo",
    "markdown_table",
    "ModelSpec",
    "PrunerSpec",
    "SimilaritySpec",
    "StageSpec",
    "TrainerSpec",
    "AttackRef",
    "CertifierRef",
    "ComponentRef",
    "ModelRef",
    "PrunerRef",
    "SimilarityRef",
    "TrainerRef",
    "Eps",
    "Span",
    "TrainingSpan",
    "PruneRequest",
    "SimilarityRequest",
    "NORMS",
    "Norm",
    "NormLinfL2",
    "check_norm",
    "NoOptions",
    "Options",
    "validate_options",
    "Registry",
    "default_registry",
    "plugin_manager",
    "Experiment",
    "experiment_from_dict",
    "load_experiment",
    "Plan",
    "Planning",
    "RunResult",
    "StageContext",
    "StageResult",
    "execute",
    "plan",
    "run",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PluginError",
    "RtkError",
    "StageError",
    "UnknownComponentError",
    "ApiError",
    "evaluate",
    "train",
    "prune",
    "verify",
    "compare",
    "cka",
    "svcca",
    "pwcca",
    "procrustes",
]


_face = LazyFace.of_names(__name__, _LAZY)
__getattr__ = _face.attr  # PEP 562: each name's submodule imported on its first use
__dir__ = _face.dir
