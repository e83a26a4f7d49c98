"""The run, as one import: a stable home for the names of planning and execution.

rtk's run is done by modules with one job each: :mod:`rtk.planning` (an experiment resolved
against the registry before any work), :mod:`rtk.context` (what a running stage sees),
:mod:`rtk.execution` (stages run into the run directory, resume, lifecycle hooks),
:mod:`rtk.records` (what a stage returns and a run hands back), :mod:`rtk.rundir` (the run
directory and its state.json) and :mod:`rtk.report` (report.md). This module re-exports their
names for code written against ``rtk.runner``; new code imports them from ``rtk``.
"""

from __future__ import annotations

from .context import ModelEntry, StageContext
from .execution import _Runner, execute, resumed_experiment, run
from .models.checkpoint import read_spec
from .planning import Plan, PlannedLogger, PlannedModel, PlannedStage, Planning, plan
from .records import RunResult, StageResult, table_by_key
from .rundir import check_state, saved_checkpoints

__all__ = [
    "Plan",
    "Planning",
    "PlannedStage",
    "PlannedModel",
    "PlannedLogger",
    "ModelEntry",
    "StageContext",
    "StageResult",
    "RunResult",
    "table_by_key",
    "plan",
    "execute",
    "run",
    "resumed_experiment",
    "read_spec",
    "saved_checkpoints",
    "check_state",
    "_Runner",
]
