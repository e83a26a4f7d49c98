"""Run one point of a study: ``python -m rtk.study.worker STUDY_DIR POINT_ID``.

The point's experiment is rebuilt from the study directory (its copy of the file, the
overrides and the point's values in ``study.json``); the point's run directory is
``STUDY_DIR/points/POINT_ID``, resumed when it already records completed stages. Under
torchrun every rank runs this module, and :func:`rtk.execute` shares the work as for
``rtk run --nproc``. Exit status 0 when the point completed, 1 when it failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..config import Experiment
from ..errors import ConfigError, RtkError
from ..rundir import RunDir
from .executors import point_dir
from .sweep import experiment_from_file, tag_values


def point_experiment(study_dir: str | Path, point_id: str) -> Experiment:
    """The experiment of one point, from the study directory alone."""
    study = Path(study_dir)
    record = RunDir(study).read_json("study.json")
    if record is None:
        raise ConfigError(f"{study}: not a study directory (no study.json)")
    points = {p["id"]: p for p in record["points"]}
    if point_id not in points:
        raise ConfigError(f"{study}: no point {point_id!r}; points: {', '.join(points)}")
    values = points[point_id]["values"]
    return experiment_from_file(
        study / "experiment.toml",
        overrides={**record.get("overrides", {}), **values},
        tags=tag_values(values),
        base_dir=record.get("base_dir"),
    )


def run_point(study_dir: str | Path, point_id: str) -> Path:
    """Run (or resume) one point in this process; returns its run directory."""
    from ..execution import execute
    from ..planning import plan

    exp = point_experiment(study_dir, point_id)
    directory = point_dir(study_dir, point_id)
    resume = directory if (directory / "state.json").exists() else None
    result = execute(plan(exp), out=None if resume else directory, resume=resume)
    return result.path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger(__name__)
    if len(args) != 2:
        log.error("usage: python -m rtk.study.worker STUDY_DIR POINT_ID")
        return 2
    try:
        run_point(args[0], args[1])
    except RtkError as exc:
        log.error("rtk: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
