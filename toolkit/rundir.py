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
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from . import distributed as _dist
from .errors import RtkError
from .trust import UnsafePathError, atomic_write, check_name, inside


class RunDir:
    """A run directory. Under torchrun only rank 0 writes: on other ranks ``write_json``,
    ``write_text`` and ``write_table`` return the path without writing.

    A run directory may come from someone else (``--resume``, ``rtk evaluate DIR``): every
    name that becomes a path follows :func:`rtk.trust.check_name`, every path is resolved and
    refused when it leaves the directory (a planted symlink or ``..``), and every write goes
    through a temporary file created exclusively (:func:`rtk.trust.atomic_write`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, out: str | os.PathLike | None = None, root: str | os.PathLike = "runs") -> RunDir:
        from .errors import ConfigError

        if out is not None:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
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
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the run directory {path}: {exc.strerror or exc}; choose a writable place (--out)"
            ) from None
        return cls(path)

    def resolve(self, rel: str | os.PathLike, what: str = "path") -> Path:
        """``rel`` (relative to the run directory) resolved; refused when it leaves the run directory."""
        return inside(self.path, rel, f"{what} in the run directory {self.path}")

    def _target(self, rel: str | os.PathLike) -> Path:
        p = self.path / rel
        self.resolve(Path(rel).parent, "folder")
        if p.is_symlink():
            raise UnsafePathError(f"{p} is a symlink; rtk does not write through symlinks in a run directory")
        return p

    # files ---------------------------------------------------------------------
    def write_json(self, rel: str, data: Any) -> Path:
        p = self.path / rel
        if not _dist.is_main():
            return p
        atomic_write(p, json.dumps(data, indent=2, sort_keys=True, default=str), root=self.path)
        return p

    def read_json(self, rel: str, default: Any = None) -> Any:
        if not (self.path / rel).exists():
            return default
        p = self.resolve(rel, "file")
        try:
            return json.loads(p.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RtkError(f"{p} is not valid JSON ({exc}); the run directory is damaged") from None
        except OSError as exc:
            raise RtkError(f"cannot read {p}: {exc.strerror or exc}") from None

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path / rel
        if not _dist.is_main():
            return p
        atomic_write(p, text, root=self.path)
        return p

    def table_path(self, stage_id: str, table: str) -> Path:
        check_name(stage_id, "stage id")
        check_name(table, f"stage {stage_id}: table name")
        return self.path / "tables" / stage_id / f"{table}.csv"

    def write_table(self, stage_id: str, table: str, df: pd.DataFrame) -> Path:
        csv = self.table_path(stage_id, table)
        if not _dist.is_main():
            return csv
        atomic_write(csv, df.to_csv(index=False), root=self.path)
        try:
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
        except (ImportError, ValueError, TypeError):  # parquet needs pyarrow and plain column types
            return csv
        atomic_write(csv.with_suffix(".parquet"), buf.getvalue(), root=self.path)
        return csv

    def read_tables(self, stage_id: str) -> dict[str, pd.DataFrame]:
        check_name(stage_id, "stage id")
        d = self.path / "tables" / stage_id
        out: dict[str, pd.DataFrame] = {}
        if d.exists():
            self.resolve(d.relative_to(self.path), "folder")
            for csv in sorted(d.glob("*.csv")):
                pq = csv.with_suffix(".parquet")
                src = self.resolve((pq if pq.exists() else csv).relative_to(self.path), "table")
                try:
                    out[csv.stem] = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_csv(src)
                except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many kinds on a damaged file
                    raise RtkError(f"table {src} cannot be read ({type(exc).__name__}: {exc}); it is damaged") from None
        return out

    def figure_path(self, stage_id: str, name: str) -> Path:
        check_name(stage_id, "stage id")
        check_name(name, f"stage {stage_id}: figure name")
        p = self.path / "figures" / stage_id / (name if name.endswith(".png") else f"{name}.png")
        self._mkdir(p.parent)
        return self._target(p.relative_to(self.path))

    def checkpoint_path(self, model: str, tag: str) -> Path:
        check_name(model, "model name")
        check_name(tag, f"model {model}: checkpoint tag")
        p = self.path / "checkpoints" / model / tag
        self._mkdir(p.parent)
        return p

    def stage_dir(self, stage_id: str) -> Path:
        check_name(stage_id, "stage id")
        p = self.path / "artifacts" / stage_id
        self._mkdir(p)
        return p

    def check_links(self) -> None:
        """Refuse a run directory holding a symlink that leads outside it (a file rtk would
        later read or write through it: a checkpoint, a records folder, a training state)."""
        root = self.path.resolve()
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    target = p.resolve()
                    if target != root and root not in target.parents:
                        raise UnsafePathError(
                            f"{p} is a symlink to {target}, outside the run directory {root}; rtk does not read or "
                            "write through links that leave a run directory. Remove the link (or copy the file in)"
                        )

    def _mkdir(self, p: Path) -> None:
        rel = p.relative_to(self.path)
        self.resolve(rel, "folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RtkError(f"cannot create {p}: {exc.strerror or exc}") from None
        self.resolve(rel, "folder")


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


# ---------------------------------------------------------------------------- state.json
#: The fields of a stage's record in state.json and their types.
_STAGE_FIELDS: dict[str, Any] = {
    "status": str,
    "kind": str,
    "seconds": (int, float),
    "figures": dict,
    "summary": str,
    "metrics": dict,
    "error": str,
    "traceback": str,
}


def check_state(state: Any, where: str | os.PathLike) -> dict[str, Any]:
    """``state`` (a parsed state.json) if it has the shape rtk writes, else a clear :class:`RtkError`."""
    problems = []
    if not isinstance(state, dict):
        problems.append(f"expected an object, got {type(state).__name__}")
    else:
        stages = state.setdefault("stages", {})
        if not isinstance(stages, dict) or not isinstance(state.setdefault("models", {}), dict):
            problems.append("'stages' and 'models' must be objects")
        else:
            for sid, rec in stages.items():
                if not isinstance(rec, dict):
                    problems.append(f"stages.{sid}: expected an object")
                    continue
                for key, kind in _STAGE_FIELDS.items():
                    if key in rec and (not isinstance(rec[key], kind) or isinstance(rec[key], bool)):
                        problems.append(f"stages.{sid}.{key}: expected {getattr(kind, '__name__', 'a number')}")
    if problems:
        raise RtkError(
            f"{where}: not a state record rtk wrote ({'; '.join(problems[:5])}); the run directory is damaged. "
            "Start a new run with --out NEWDIR"
        )
    return state


def saved_checkpoints(rundir: RunDir, name: str, info: Any) -> dict[str, Path]:
    """The checkpoints a run directory's state.json records for model ``name`` (``info`` is its
    entry), each checked to lie inside the run directory: paths are relative to it, so a copied
    run directory uses its own files, and a symlink or path that leaves it is refused."""
    check_name(name, "state.json: model name")
    raw = info.get("checkpoints", {}) if isinstance(info, dict) else None
    if not isinstance(raw, dict):
        raise RtkError(f"{rundir.path}/state.json: models.{name}.checkpoints is not an object")
    out = {}
    for tag, rel in raw.items():
        check_name(tag, f"state.json: models.{name}.checkpoints tag")
        if not isinstance(rel, str):
            raise RtkError(f"{rundir.path}/state.json: models.{name}.checkpoints.{tag} is not a path")
        rel_path = Path(rel)
        if rel_path.is_absolute() or (rel_path.parts and rel_path.parts[0] != "checkpoints"):
            parts = rel_path.parts  # written by an older rtk: relative to the working directory of that run
            if "checkpoints" in parts:
                rel_path = Path(*parts[len(parts) - 1 - parts[::-1].index("checkpoints") :])
        stem = rundir.resolve(rel_path, f"state.json: checkpoint {name}@{tag}")
        for suffix in (".json", ".safetensors"):
            rundir.resolve(stem.with_name(stem.name + suffix), f"state.json: checkpoint {name}@{tag}")
        out[tag] = rundir.path / rel_path
    return out
