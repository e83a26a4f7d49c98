"""Studies: overrides, sweeps, and executors that run a study's points.

- :func:`apply_overrides` / ``rtk.run(path, overrides={...})``: key-path overrides of a file.
- :func:`load_study`: a file with a ``[sweep]`` table -> a validated :class:`Study` of points.
- :func:`run_study`: run the points with an executor (:class:`LocalExecutor`,
  :class:`RayExecutor`, :class:`SlurmExecutor`; :func:`make_executor` by name) into a study
  directory; :func:`resume_study` continues one.
"""

from __future__ import annotations

from .engine import StudyProgress, StudyResult, gather, is_study_dir, resume_study, run_study
from .executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    PointOutcome,
    PointTask,
    RayExecutor,
    SlurmExecutor,
    available_cpus,
    make_executor,
    point_dir,
    threads_per_point,
)
from .overrides import apply_overrides, format_key_path, parse_key_path
from .sweep import Study, StudyPoint, experiment_from_file, has_sweep, load_study

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "PointOutcome",
    "PointTask",
    "RayExecutor",
    "SlurmExecutor",
    "Study",
    "StudyPoint",
    "StudyProgress",
    "StudyResult",
    "apply_overrides",
    "available_cpus",
    "experiment_from_file",
    "gather",
    "has_sweep",
    "is_study_dir",
    "load_study",
    "make_executor",
    "format_key_path",
    "parse_key_path",
    "point_dir",
    "resume_study",
    "run_study",
    "threads_per_point",
]
