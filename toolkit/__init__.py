"""rtk: a plugin-based toolkit for adversarially robust neural networks.

Public API (what built-in and third-party plugins may use):

- ``hookimpl``: mark plugin hook implementations.
- records: ``AttackSpec``, ``TrainerSpec``, ``PrunerSpec``, ``SimilaritySpec``,
  ``CertifierSpec``, ``DatasetSpec``, ``ModelSpec``, ``StageSpec``, ``CommandSpec``.
- ``Options`` (base of every options model), ``Eps`` (a float written as "8/255").
- ``plugin_manager()``, ``Registry``, ``default_registry()``.
- ``load_experiment()``, ``plan()``, ``run()``, ``StageContext``, ``StageResult``.
- one call per task (:mod:`rtk.api`): ``evaluate``, ``train``, ``prune``, ``verify``,
  ``compare``; kernels ``cka``, ``svcca``, ``pwcca``, ``procrustes``.
- lifecycle records (what the lifecycle hooks receive, :mod:`rtk.lifecycle`): ``RunInfo``,
  ``StageInfo``, ``EpochMetrics``, ``RunOutcome``, ``ReportSection``; loggers: ``LoggerSpec``;
  ``markdown_table(df)`` (how report.md renders a table, for report sections).
- submodules: ``rtk.data``, ``rtk.models``, ``rtk.training``, ``rtk.evaluation``,
  ``rtk.similarity``, ``rtk.pruning``, ``rtk.certify``, ``rtk.zoo``, ``rtk.distributed``.
"""

from __future__ import annotations

# one call per task on your own model and data (rtk.api)
from .api import ApiError, cka, compare, evaluate, procrustes, prune, pwcca, svcca, train, verify
from .config import Experiment, experiment_from_dict, load_experiment
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PluginError,
    RtkError,
    StageError,
    UnknownComponentError,
)
from .hookspecs import hookimpl, hookspec
from .lifecycle import EpochMetrics, ReportSection, RunInfo, RunOutcome, StageInfo
from .options import Eps, NoOptions, Options, validate_options
from .records import (
    AttackSpec,
    CertifierSpec,
    CommandSpec,
    ComponentSpec,
    DatasetSpec,
    LoggerSpec,
    ModelSpec,
    PrunerSpec,
    SimilaritySpec,
    StageSpec,
    TrainerSpec,
)
from .refs import AttackRef, CertifierRef, ComponentRef, ModelRef, PrunerRef, SimilarityRef, TrainerRef
from .registry import Registry, default_registry, plugin_manager
from .report import markdown_table
from .runner import Plan, Planning, RunResult, StageContext, StageResult, execute, plan, run

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "hookspec",
    "AttackSpec",
    "CertifierSpec",
    "CommandSpec",
    "ComponentSpec",
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
