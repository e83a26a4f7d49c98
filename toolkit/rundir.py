"""The run directory: config, environment record, tables, checkpoints, figures, report.

Layout::

    runs/<name>-<timestamp>/
      experiment.toml       the file as given (when there was one)
      config.json           the resolved experiment
      environment.json      versions, seed, device, git commit, plugins
      state.json            which stages completed and the latest checkpoint of each model
      tables/<stage>/<table>.csv and .parquet
      checkpoints/<model>/<tag>.safetensors and .json
      figures/<stage>/<name>.png
      report.md
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from . import distributed as _dist


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """A run directory. Under torchrun only rank 0 writes: on other ranks ``write_json``,
    ``write_text`` and ``write_table`` return the path without writing."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, out: str | os.PathLike | None = None, root: str | os.PathLike = "runs") -> RunDir:
        if out is not None:
            path = Path(out)
            if path.exists() and any(path.iterdir()):
                from .errors import ConfigError

                raise ConfigError(
                    f"--out {path} already exists and is not empty; choose a new directory or use --resume {path}"
                )
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path(root) / f"{name}-{stamp}"
            i = 1
            while path.exists():
                path = Path(root) / f"{name}-{stamp}-{i}"
                i += 1
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    # files ---------------------------------------------------------------------
    def write_json(self, rel: str, data: Any) -> Path:
        p = self.path / rel
        if not _dist.is_main():
            return p
        _atomic_write(p, json.dumps(data, indent=2, sort_keys=True, default=str))
        return p

    def read_json(self, rel: str, default: Any = None) -> Any:
        p = self.path / rel
        if not p.exists():
            return default
        return json.loads(p.read_text())

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path / rel
        if not _dist.is_main():
            return p
        _atomic_write(p, text)
        return p

    def table_path(self, stage_id: str, table: str) -> Path:
        return self.path / "tables" / stage_id / f"{table}.csv"

    def write_table(self, stage_id: str, table: str, df: pd.DataFrame) -> Path:
        csv = self.table_path(stage_id, table)
        if not _dist.is_main():
            return csv
        csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = csv.with_name(csv.name + ".tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, csv)
        try:
            pq = csv.with_suffix(".parquet")
            tmpq = pq.with_name(pq.name + ".tmp")
            df.to_parquet(tmpq, index=False)
            os.replace(tmpq, pq)
        except (ImportError, ValueError, TypeError):  # parquet needs pyarrow and plain column types
            pass
        return csv

    def read_tables(self, stage_id: str) -> dict[str, pd.DataFrame]:
        d = self.path / "tables" / stage_id
        out: dict[str, pd.DataFrame] = {}
        if d.exists():
            for csv in sorted(d.glob("*.csv")):
                pq = csv.with_suffix(".parquet")
                out[csv.stem] = pd.read_parquet(pq) if pq.exists() else pd.read_csv(csv)
        return out

    def figure_path(self, stage_id: str, name: str) -> Path:
        p = self.path / "figures" / stage_id / (name if name.endswith(".png") else f"{name}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def checkpoint_path(self, model: str, tag: str) -> Path:
        p = self.path / "checkpoints" / model / tag
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def stage_dir(self, stage_id: str) -> Path:
        p = self.path / "artifacts" / stage_id
        p.mkdir(parents=True, exist_ok=True)
        return p


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record(*, seed: int, device: str, registry: Any = None, source: str | None = None) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    def ver(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    plugins: dict[str, Any] = {}
    if registry is not None:
        for reg in registry.registrations():
            plugins.setdefault(reg.plugin, {"distribution": reg.distribution, "version": reg.version})
    src_dir = Path(source).parent if source else None
    return {
        "rtk": ver("rtk"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchattacks": ver("torchattacks"),
        "torch-pruning": ver("torch-pruning"),
        "numpy": ver("numpy"),
        "pandas": ver("pandas"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
        "device": device,
        "git_commit": git_commit(src_dir) or git_commit(Path(__file__).parent),
        "plugins": plugins,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
