"""Run a study: every point a normal run directory, the results gathered into one place.

Layout::

    runs/<name>-<timestamp>/
      experiment.toml        the file as given (with its [sweep] table)
      study.json             the points (id, swept values, state, seconds, error, earlier
                             attempts) and overrides
      points/<point>/        one normal run directory per point (config, tables, report.md, ...)
      logs/<point>.log       each point's output
      tables/<stage>/<table>.csv|.parquet   every point's table, one after the other (long
                             form), with the point and its swept keys as the first columns
      tables/study/points.csv, metrics.csv, summary.csv
      figures/<key>.png      each headline measure against each swept key (mean, 95% interval)
      report.md

One failed point never stops the others. Killing the study leaves every finished point
intact; :func:`resume_study` + :func:`run_study` (``rtk run --resume STUDY_DIR``) reruns only
the failed and unfinished points, each resuming from its own completed stages.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..rundir import RunDir
from ..trust import slug
from .executors import Executor, LocalExecutor, PointOutcome, PointTask, point_dir, point_log
from .sweep import Study, load_study, tag_values

log = logging.getLogger(__name__)

STATES = ("pending", "running", "completed", "failed")


@dataclass(frozen=True)
class StudyProgress:
    """Counts after one event (``started``, ``completed``, ``failed``) of ``point``."""

    total: int
    done: int
    running: int
    failed: int
    point: str | None = None
    event: str = ""


ProgressCallback = Callable[[StudyProgress], None]


@dataclass
class StudyResult:
    """The outcome of a study: its directory, each point's record, the gathered tables."""

    path: Path
    points: list[dict[str, Any]]
    tables: dict[str, pd.DataFrame]
    report: Path
    keys: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [p["id"] for p in self.points if p["state"] != "completed"]

    def table(self, key: str) -> pd.DataFrame:
        """A gathered table by ``"<stage-id>/<table>"`` or its bare name when that is unique."""
        from ..records import table_by_key

        return table_by_key(self.tables, key)


def is_study_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "study.json").exists()


def point_completed(point_dir: Path, stage_ids: list[str]) -> bool:
    """Whether a point's run directory records every stage as completed."""
    state = RunDir(point_dir).read_json("state.json", None) or {}
    stages = state.get("stages", {})
    return all(stages.get(sid, {}).get("status") == "completed" for sid in stage_ids)


def resume_study(study_dir: str | os.PathLike, *, registry: Any = None, allow_unsafe_pickle: bool = False) -> Study:
    """The study of an earlier study directory, validated again (for ``rtk run --resume``).

    A study directory is not trusted (docs/security.md): when its experiment or its recorded
    overrides turn on unsafe loading it is refused unless the user allows it here
    (``rtk run --resume DIR --allow-unsafe-pickle``)."""
    from ..config import read_toml
    from ..trust import untrusted_settings

    d = Path(study_dir)
    record = RunDir(d).read_json("study.json")
    if record is None:
        raise ConfigError(f"--resume {d}: not a study directory (no study.json)")
    if not isinstance(record, dict) or not isinstance(record.get("points"), list):
        raise ConfigError(f"--resume {d}: study.json is not a study record; the study directory is damaged")
    overrides = record.get("overrides") if isinstance(record.get("overrides"), dict) else {}
    # override keys are dotted paths: their last part is the option they set
    flat = {str(k).rsplit(".", 1)[-1]: v for k, v in overrides.items()}
    unsafe = untrusted_settings({"file": read_toml(d / "experiment.toml"), "overrides": flat})
    if unsafe and not allow_unsafe_pickle:
        raise ConfigError(
            f"--resume {d}: the study's experiment turns on unsafe loading at {', '.join(unsafe)}; rtk does not "
            "unpickle on the word of a study directory. Read its experiment.toml and study.json; if you trust every "
            "file they load, pass --allow-unsafe-pickle"
        )
    study = load_study(
        d / "experiment.toml",
        overrides=record.get("overrides") or None,
        registry=registry,
        base_dir=record.get("base_dir"),
    )
    saved = [p["id"] for p in record["points"]]
    if study.ids() != saved:
        raise ConfigError(
            f"--resume {d}: the points of experiment.toml ({len(study.ids())}) differ from study.json's "
            f"({len(saved)}); was experiment.toml edited? Start a new study instead"
        )
    return study


class _Ledger:
    """study.json, written atomically after every change (thread-safe)."""

    def __init__(self, rundir: RunDir, record: dict[str, Any], progress: ProgressCallback | None) -> None:
        self.rundir = rundir
        self.record = record
        self.progress = progress
        self.lock = threading.Lock()
        self.by_id = {p["id"]: p for p in record["points"]}

    def save(self) -> None:
        self.rundir.write_json("study.json", self.record)

    def update(self, point_id: str, event: str, **fields: Any) -> None:
        with self.lock:
            self.by_id[point_id].update(fields)
            self.save()
            counts = {s: sum(1 for p in self.record["points"] if p["state"] == s) for s in STATES}
            snapshot = StudyProgress(
                total=len(self.record["points"]),
                done=counts["completed"],
                running=counts["running"],
                failed=counts["failed"],
                point=point_id,
                event=event,
            )
        if self.progress is not None:
            self.progress(snapshot)


def run_study(
    study: Study,
    *,
    executor: Executor | None = None,
    out: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> StudyResult:
    """Run every point of ``study`` with ``executor`` (default: one local process at a time).

    ``resume`` continues an earlier study directory: completed points are kept, the others
    run again (resuming from their own completed stages). ``progress`` is called after each
    point starts and ends with a :class:`StudyProgress`.
    """
    executor = executor or LocalExecutor()
    executor.check()  # before anything is written
    record: dict[str, Any]
    if resume is not None:
        rundir = RunDir(resume)
        record = rundir.read_json("study.json")
        if record is None:
            raise ConfigError(f"--resume {rundir.path}: not a study directory (no study.json)")
    else:
        rundir = RunDir.create(study.name, out=out, root=runs_root)
        if study.source and Path(study.source).exists():
            rundir.write_text("experiment.toml", Path(study.source).read_text())
        record = {
            "name": study.name,
            "description": study.description,
            "source": study.source,
            "base_dir": study.base_dir,
            "overrides": study.overrides,
            "keys": study.keys,
            "axes": study.axes,
            "points": [
                {
                    "id": p.id,
                    "index": p.index,
                    "values": p.values,
                    "dir": point_dir("", p.id).as_posix(),
                    "state": "pending",
                }
                for p in study.points
            ],
        }
    record["executor"] = executor.describe()
    tasks: list[PointTask] = []
    for p in study.points:
        entry = next(e for e in record["points"] if e["id"] == p.id)
        stage_ids = [s.id for s in p.experiment.stages]
        if point_completed(point_dir(rundir.path, p.id), stage_ids):
            entry["state"] = "completed"
            continue
        _close_attempt(entry, point_dir(rundir.path, p.id), point_log(rundir.path, p.id))
        entry.update(state="pending", error="")
        tasks.append(PointTask(str(rundir.path.resolve()), p.id, threads=executor.threads(), nproc=executor.nproc))
    ledger = _Ledger(rundir, record, progress)
    ledger.save()
    log.info("study %s: %d points, %d to run on %s", study.name, len(study.points), len(tasks), executor.describe())

    def started(task: PointTask) -> None:
        ledger.update(task.point_id, "started", state="running", started_at=time.time())

    def finished(task: PointTask, outcome: PointOutcome) -> None:
        state = "completed" if outcome.ok else "failed"
        earlier = sum(a["seconds"] for a in ledger.by_id[task.point_id].get("attempts", []))
        ledger.update(task.point_id, state, state=state, seconds=earlier + outcome.seconds, error=outcome.error)
        log.log(logging.INFO if outcome.ok else logging.WARNING, "point %s %s (%.1f s) %s",
                task.point_id, state, outcome.seconds, outcome.error)  # fmt: skip

    if tasks:
        executor.run(tasks, started, finished)
    tables, report = gather(rundir.path, study)
    return StudyResult(rundir.path, record["points"], tables, report, list(study.keys))


def _close_attempt(entry: dict[str, Any], directory: Path, log_path: Path) -> None:
    """Before a point runs again, keep its earlier attempt's time in ``entry["attempts"]``, so
    that the point's ``seconds`` stays its whole time across resumes. A failed attempt's time
    is known; an attempt still marked running was stopped with the study (killed, preempted,
    the machine gone), and its time is taken from its start to the last write in its
    ``directory`` or its log ``log_path`` (a lower bound: the point had written nothing after
    that). Both come from the point's id in the study, never from ``study.json``'s paths."""
    state, started = entry.get("state"), entry.get("started_at")
    if state == "failed" and entry.get("seconds") is not None:
        seconds = float(entry["seconds"]) - sum(a["seconds"] for a in entry.get("attempts", []))
        ended = "failed"
    elif state == "running" and started is not None:
        seconds = max(0.0, _last_write(directory, log_path) - started)
        ended = "stopped"
    else:
        return
    entry.setdefault("attempts", []).append({"ended": ended, "seconds": round(seconds, 3)})
    log.info("point %s: its earlier attempt %s after %.1f s; it runs again", entry["id"], ended, seconds)


def _last_write(*paths: Path) -> float:
    """The latest modification time of the files under ``paths`` (0 when there are none)."""
    last = 0.0
    for path in paths:
        if path.is_file():
            last = max(last, path.stat().st_mtime)
        for root, _, files in os.walk(path):
            for name in files:
                try:
                    last = max(last, os.stat(os.path.join(root, name)).st_mtime)
                except OSError:  # removed meanwhile
                    continue
    return last


# ---------------------------------------------------------------------------- gathering
def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _key_columns(keys: list[str], taken: set[str]) -> dict[str, str]:
    """Column name of each swept key in a gathered table (``sweep:KEY`` if the table has KEY)."""
    return {k: (f"sweep:{k}" if k in taken else k) for k in keys}


def gather(study_dir: str | os.PathLike, study: Study) -> tuple[dict[str, pd.DataFrame], Path]:
    """Concatenate every completed point's tables (long form, swept keys as columns), write
    the metrics and their summary, the figures and ``report.md``. Returns (tables, report)."""
    rd = RunDir(study_dir)
    record = rd.read_json("study.json")
    keys = list(study.keys)
    parts: dict[str, list[pd.DataFrame]] = {}
    metrics: list[dict[str, Any]] = []
    for entry in record["points"]:
        if entry["state"] != "completed":
            continue
        prd = RunDir(point_dir(rd.path, entry["id"]))
        state = prd.read_json("state.json", {}) or {}
        tags = tag_values(entry["values"])
        for sid, st in state.get("stages", {}).items():
            for tname, df in prd.read_tables(sid).items():
                cols = _key_columns(keys, set(df.columns) | {"point"})
                front = pd.DataFrame({"point": [entry["id"]] * len(df), **{cols[k]: [tags[k]] * len(df) for k in keys}})
                parts.setdefault(f"{sid}/{tname}", []).append(pd.concat([front, df.reset_index(drop=True)], axis=1))
            for name, value in (st.get("metrics") or {}).items():
                if _numeric(value):
                    metrics.append({"point": entry["id"], **tags, "stage": sid, "metric": name, "value": float(value)})
    tables = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
    for key, df in tables.items():
        sid, tname = key.split("/", 1)
        rd.write_table(sid, tname, df)
    points = pd.DataFrame(
        [
            {
                "point": e["id"],
                **tag_values(e["values"]),
                "state": e["state"],
                "seconds": e.get("seconds"),
                "error": e.get("error", ""),
            }
            for e in record["points"]
        ]  # fmt: skip
    )
    rd.write_table("study", "points", points)
    tables["study/points"] = points
    mdf = pd.DataFrame(metrics, columns=["point", *keys, "stage", "metric", "value"])
    rd.write_table("study", "metrics", mdf)
    tables["study/metrics"] = mdf
    summary = summarize(mdf, keys)
    rd.write_table("study", "summary", summary)
    tables["study/summary"] = summary
    figures = plot_summary(summary, keys, rd)
    report = write_study_report(rd, record, tables, summary, figures)
    return tables, report


def _varied_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k != "seed"]


def summarize(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and 95% interval (Student t) of each metric per value of the swept keys other
    than ``seed``, over the points that differ only in seed (or in nothing)."""
    from scipy import stats

    cols = ["stage", "metric", *_varied_keys(keys), "n", "mean", "std", "ci95_low", "ci95_high"]
    if metrics.empty:
        return pd.DataFrame(columns=cols)
    by = ["stage", "metric", *_varied_keys(keys)]
    rows = []
    for group, part in metrics.groupby(by, sort=False, dropna=False):
        vals = part["value"].astype(float)
        n = len(vals)
        mean = float(vals.mean())
        std = float(vals.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
        group = group if isinstance(group, tuple) else (group,)
        rows.append({**dict(zip(by, group)), "n": n, "mean": mean, "std": std,
                     "ci95_low": mean - half, "ci95_high": mean + half})  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def plot_summary(summary: pd.DataFrame, keys: list[str], rd: RunDir) -> dict[str, Path]:
    """One figure per swept key (other than seed) with two or more values: a panel per
    headline measure that varies across points, its mean against the key's values, a 95%
    interval band, one line per combination of the other swept keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varied = _varied_keys(keys)
    figures: dict[str, Path] = {}
    if summary.empty:
        return figures
    measures = [
        (s, m) for (s, m), part in summary.groupby(["stage", "metric"], sort=False) if part["mean"].nunique() > 1
    ]
    for key in varied:
        if summary[key].nunique() < 2 or not measures:
            continue
        others = [k for k in varied if k != key]
        shown = measures[:16]
        ncols = min(4, len(shown))
        nrows = math.ceil(len(shown) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
        for ax, (stage, metric) in zip(axes.flat, shown):
            part = summary[(summary["stage"] == stage) & (summary["metric"] == metric)]
            groups = part.groupby(others, sort=False, dropna=False) if others else [((), part)]
            for label, g in groups:
                xs = list(g[key])
                numeric = all(_numeric(x) for x in xs)
                order = sorted(range(len(xs)), key=lambda i: xs[i]) if numeric else list(range(len(xs)))
                x = [xs[i] if numeric else str(xs[i]) for i in order]
                y = g["mean"].to_numpy()[order]
                lo, hi = g["ci95_low"].to_numpy()[order], g["ci95_high"].to_numpy()[order]
                name = ", ".join(f"{k}={v}" for k, v in zip(others, label if isinstance(label, tuple) else (label,)))
                ax.plot(x, y, marker="o", label=name or None)
                ax.fill_between(x, lo, hi, alpha=0.2)
            ax.set_title(f"{stage}: {metric}", fontsize=8)
            ax.set_xlabel(key, fontsize=8)
            ax.tick_params(labelsize=7)
            if others:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(shown) :]:
            ax.axis("off")
        fig.tight_layout()
        path = rd.path / "figures" / f"{slug(key) or 'key'}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        figures[key] = path
    return figures


def write_study_report(
    rd: RunDir, record: dict[str, Any], tables: dict[str, pd.DataFrame], summary: pd.DataFrame, figures: dict[str, Path]
) -> Path:
    from ..report import markdown_table

    pts = record["points"]
    done = sum(p["state"] == "completed" for p in pts)
    lines = [f"# Study: {record['name']}", ""]
    if record.get("description"):
        lines += [record["description"].strip(), ""]
    lines += [
        f"- {len(pts)} points over {', '.join(record.get('keys', [])) or '(no sweep)'}; "
        f"{done} completed, {sum(p['state'] == 'failed' for p in pts)} failed, "
        f"{sum(p['state'] in ('pending', 'running') for p in pts)} not finished",
        f"- executor: {record.get('executor', '')}",
    ]
    if record.get("overrides"):
        lines.append("- overrides: " + ", ".join(f"`{k}={v}`" for k, v in record["overrides"].items()))
    lines += ["", "## Points", ""]
    rows = []
    for p in pts:
        report = point_dir(rd.path, p["id"]) / "report.md"
        link = f"[{p['id']}]({report.relative_to(rd.path).as_posix()})" if report.exists() else p["id"]
        secs = f"{p['seconds']:.1f}" if p.get("seconds") is not None else ""
        rows.append({"point": link, **tag_values(p["values"]), "state": p["state"], "seconds": secs})
    lines += [markdown_table(pd.DataFrame(rows)), ""]
    failed = [p for p in pts if p["state"] != "completed"]
    if failed:
        lines += ["Points not completed (rerun only these with `rtk run --resume " + str(rd.path) + "`):", ""]
        lines += [f"- `{p['id']}` ({p['state']}): {p.get('error') or 'not finished'} (log: `logs/{p['id']}.log`)"
                  for p in failed]  # fmt: skip
        lines.append("")
    if not summary.empty:
        lines += [
            "## Headline measures",
            "",
            "Mean and 95% interval (Student t) over the points that differ only in seed.",
            "",
        ]
        lines += [markdown_table(summary.head(80)), ""]
        if len(summary) > 80:
            lines += [f"... {len(summary) - 80} more rows in `tables/study/summary.csv`.", ""]
    for key, path in figures.items():
        lines += [f"![{key}]({os.path.relpath(path, rd.path)})", ""]
    gathered = [k for k in tables if not k.startswith("study/")]
    if gathered:
        lines += ["## Tables", "", "Every point's table, one after the other, with the swept keys as columns:", ""]
        lines += [f"- `tables/{k}.csv` ({len(tables[k])} rows)" for k in gathered]
        lines.append("")
    return rd.write_text("report.md", "\n".join(lines))
