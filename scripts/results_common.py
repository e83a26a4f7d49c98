"""What the results scripts (results_paper1.py, results_paper2.py, intervals.py) share: reading a finished run
directory and the wall and CPU time a run took."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd


def read_run(path: Path) -> dict:
    """A run directory's stages (from state.json), its tables (``stage/table`` -> DataFrame), whether every
    stage completed, and the seconds its stages took."""
    state = json.loads((path / "state.json").read_text())
    stages = state.get("stages", {})
    tables: dict[str, pd.DataFrame] = {}
    for csv in sorted((path / "tables").glob("*/*.csv")):
        tables[f"{csv.parent.name}/{csv.stem}"] = pd.read_csv(csv)
    return {
        "path": path,
        "stages": stages,
        "tables": tables,
        "complete": bool(stages) and all(s.get("status") == "completed" for s in stages.values()),
        "stage_seconds": sum(float(s.get("seconds") or 0) for s in stages.values()),
    }


#: The lines that give wall, user and system seconds in the three time formats the experiments are run under:
#: bash's ``time`` (``real 1m2.5s``), ``/usr/bin/time -f "wall_s=%e user_s=%U sys_s=%S"`` and ``/usr/bin/time -v``
#: (``User time (seconds): 100.5``, ``Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03``).
_TIME_LINES = (
    re.compile(r"^(real|user|sys)\s+(\d+m[0-9.]+s)", re.M),
    re.compile(r"\b(wall|user|sys)_s=([0-9.]+)"),
    re.compile(r"(Elapsed \(wall clock\)|User|System) time \([^)]*\): ([0-9:.]+)"),
)
_TIME_KEYS = {"real": "wall_s", "Elapsed (wall clock)": "wall_s", "User": "user_s", "System": "sys_s"}


def _seconds(value: str) -> float:
    """``1m2.5s`` (bash), ``1:02:03`` / ``2:03.5`` (h:mm:ss or m:ss) or ``62.5``, in seconds."""
    if bash := re.fullmatch(r"(\d+)m([0-9.]+)s", value):
        return 60 * int(bash.group(1)) + float(bash.group(2))
    return sum(float(part) * 60**i for i, part in enumerate(reversed(value.split(":"))))


def read_time(path: Path) -> dict[str, float]:
    """``wall_s``, ``user_s``, ``sys_s`` and ``cpu_s`` (user + system) from a file holding the output of bash's
    ``time``, of ``/usr/bin/time -f "wall_s=%e user_s=%U sys_s=%S"`` or of ``/usr/bin/time -v``, alone or at the
    end of a run's log; a key is absent when the file does not give it, and all are when the file is absent.
    Several blocks (a resumed run appends one) are added up."""
    if not path.exists():
        return {}
    text = path.read_text()
    found: dict[str, float] = {}
    for pattern in _TIME_LINES:
        for label, value in pattern.findall(text):
            key = _TIME_KEYS.get(label, f"{label}_s")
            found[key] = found.get(key, 0.0) + _seconds(value)
    if "user_s" in found and "sys_s" in found:
        found["cpu_s"] = found["user_s"] + found["sys_s"]
    return found
