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

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing ``rtk`` imports none of them (so ``rtk --help`` starts without torch, pandas or
#: pydantic), each submodule on the first use of one of its names
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
    from .refs import (
        AttackRef,
        CertifierRef,
        ComponentRef,
        ModelRef,
        NamePattern,
        PrunerRef,
        SimilarityRef,
        TrainerRef,
    )
    from .registry import Registry, default_registry, plugin_manager
    from .report import markdown_table

__version__ = "0.1.0"
