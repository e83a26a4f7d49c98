"""``report.md``: the human-readable page of a run directory.

The runner rewrites the report after every stage (so an interrupted run still has one) and
writes the final one at the end of the run, or when a stage fails. The final report also
holds the sections plugins add through the ``rtk_report_sections`` hook (see
:mod:`rtk.lifecycle`), after the stages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Experiment
from .lifecycle import ReportSection, StageInfo
from .rundir import RunDir

#: Rows of a table shown in the report; the CSV holds all of them.
MAX_ROWS = 40


def render_report(
    rundir: RunDir,
    experiment: Experiment,
    stages: Sequence[StageInfo],
    *,
    device: Any = None,
    failed: str | None = None,
    sections: Sequence[ReportSection] = (),
) -> str:
    """The markdown of ``report.md``: a header, one section per stage (status, summary,
    tables, figures), the plugins' ``sections``, and a note when stage ``failed``."""
    exp = experiment
    lines = [f"# Report: {exp.name}", ""]
    if exp.description:
        lines += [exp.description, ""]
    env = rundir.read_json("environment.json", {}) or {}
    lines += [
        f"- dataset: `{exp.dataset.name}`; seed {exp.seed}; device `{env.get('device', device)}`",
        f"- rtk {env.get('rtk')}, torch {env.get('torch')}; git commit `{env.get('git_commit')}`",
        "",
    ]
    for st in stages:
        secs = f", {st.seconds:.1f} s" if st.seconds is not None else ""
        lines += [f"## Stage `{st.id}` ({st.kind}): {st.status}{secs}", ""]
        if st.status == "failed":
            lines += ["```", st.error or "", "```", ""]
            continue
        if st.summary:
            lines += [st.summary.strip(), ""]
        for tname, df in st.tables.items():
            lines += [f"**{tname}** (`tables/{st.id}/{tname}.csv`)", ""]
            shown = df.head(MAX_ROWS)
            lines += [markdown_table(shown), ""]
            if len(df) > len(shown):
                lines += [f"... {len(df) - len(shown)} more rows in the CSV.", ""]
        for fname, fpath in st.figures.items():
            rel = os.path.relpath(fpath, rundir.path)
            lines += [f"![{fname}]({rel})", ""]
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.body.strip(), ""]
    if failed:
        lines += [
            f"**The run stopped: stage `{failed}` failed.** Results of earlier stages are kept; "
            f"fix the problem and continue with `rtk run --resume {rundir.path}`.",
            "",
        ]
    return "\n".join(lines)


def write_report(rundir: RunDir, experiment: Experiment, stages: Sequence[StageInfo], **kwargs: Any) -> Path:
    """Write ``report.md`` (see :func:`render_report` for the arguments); returns its path."""
    return rundir.write_text("report.md", render_report(rundir, experiment, stages, **kwargs))


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (floats to 4 significant digits)."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        rows.append("| " + " | ".join(cell(v) for v in rec) + " |")
    return "\n".join(rows)


__all__ = ["markdown_table", "render_report", "write_report"]
