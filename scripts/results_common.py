"""What the results scripts (results_paper1.py, results_paper2.py) share: reading a finished run directory."""

from __future__ import annotations

import json
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
