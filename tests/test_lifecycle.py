"""Lifecycle hooks: order, what they receive, report sections, failures in and out of strict mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from pluginhelpers import observed_experiment

import rtk
from rtk.errors import PluginError
from rtk.rundir import RunDir

EXP = observed_experiment("life", seed=1)


class Recorder:
    """A plugin observing every lifecycle hook."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @rtk.hookimpl
    def rtk_run_start(self, run):
        self.calls.append(("run_start", run))

    @rtk.hookimpl
    def rtk_stage_start(self, run, stage):
        self.calls.append(("stage_start", stage))

    @rtk.hookimpl
    def rtk_epoch_metrics(self, stage, epoch, metrics):  # a subset of the arguments, as in pluggy
        self.calls.append(("epoch", stage.id, epoch, metrics))

    @rtk.hookimpl
    def rtk_stage_finish(self, run, stage):
        self.calls.append(("stage_finish", stage))

    @rtk.hookimpl
    def rtk_report_sections(self, run, stages):
        yield rtk.ReportSection(title="Recorder", body=f"{len(stages)} stages seen; tags {dict(run.tags)}")

    @rtk.hookimpl
    def rtk_run_finish(self, run, outcome):
        self.calls.append(("run_finish", outcome))


def registry_with(*plugins: tuple[str, object]) -> rtk.Registry:
    return rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False, extra=plugins))


def test_hooks_are_called_in_order_with_the_run_records(tmp_path):
    rec = Recorder()
    result = rtk.run(EXP, registry=registry_with(("recorder", rec)), out=tmp_path / "run")
    names = [c[0] for c in rec.calls]
    assert names == [
        "run_start",
        "stage_start",
        "epoch",
        "epoch",
        "stage_finish",
        "stage_start",
        "stage_finish",
        "run_finish",
    ]
    run = rec.calls[0][1]
    assert run.path == result.path.resolve() and run.name == "life" and not run.resumed
    assert run.config["seed"] == 1 and run.config["stages"][0]["kind"] == "train"
    # the epochs handed to the hook are the history table's numbers
    history = result.table("01-train/history")
    for (_, sid, epoch, m), (_, row) in zip([c for c in rec.calls if c[0] == "epoch"], history.iterrows()):
        assert sid == "01-train" and epoch == row["epoch"] and m.round == 0
        assert m.values["train_loss"] == pytest.approx(row["train_loss"])
        assert m.values["test_clean_acc"] == pytest.approx(row["test_clean_acc"])
    finished = [c[1] for c in rec.calls if c[0] == "stage_finish"]
    assert [s.status for s in finished] == ["completed", "completed"]
    pd.testing.assert_frame_equal(finished[1].tables["accuracy"], result.table("02-evaluate/accuracy"))
    assert finished[0].figures and all(p.exists() for p in finished[0].figures.values())
    outcome = rec.calls[-1][1]
    assert outcome.status == "completed" and outcome.report == result.report
    assert set(outcome.tables) == set(result.tables)
    # the report section is in the final report, after the stages
    text = result.report.read_text()
    assert "## Recorder\n\n2 stages seen" in text
    assert text.index("## Recorder") > text.index("## Stage `02-evaluate`")


def test_records_are_read_only(tmp_path):
    rec = Recorder()
    rtk.run(EXP | {"stages": EXP["stages"][:1]}, registry=registry_with(("recorder", rec)), out=tmp_path / "r")
    run = rec.calls[0][1]
    with pytest.raises(TypeError):
        run.config["seed"] = 5  # type: ignore[index]
    with pytest.raises(AttributeError):
        run.name = "other"  # type: ignore[misc]


class Broken:
    @rtk.hookimpl
    def rtk_stage_finish(self, stage):
        raise ValueError("tracker down")

    @rtk.hookimpl
    def rtk_report_sections(self):
        return ["not a section"]


def test_a_failing_hook_warns_naming_the_plugin_and_loses_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="rtk.lifecycle"):
        result = rtk.run(EXP, registry=registry_with(("broken", Broken()), ("recorder", rec)), out=tmp_path / "run")
    msgs = [r.getMessage() for r in caplog.records]
    assert any("'broken'" in m and "rtk_stage_finish" in m and "tracker down" in m for m in msgs)
    assert any("'broken'" in m and "ReportSection" in m and "str" in m for m in msgs)
    # every stage ran, every table is on disk, the other plugin saw everything
    assert (result.path / "tables" / "02-evaluate" / "accuracy.csv").exists()
    assert [c[0] for c in rec.calls].count("stage_finish") == 2
    assert "## Recorder" in result.report.read_text()


def test_strict_mode_turns_a_failing_hook_into_an_error_after_results_are_written(tmp_path, monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="'broken' failed in rtk_stage_finish: ValueError: tracker down"):
        rtk.run(EXP, registry=registry_with(("broken", Broken())), out=tmp_path / "run")
    state = RunDir(tmp_path / "run").read_json("state.json")
    assert state["stages"]["01-train"]["status"] == "completed"
    assert (tmp_path / "run" / "tables" / "01-train" / "history.csv").exists()


class FailingStage:
    @rtk.hookimpl
    def rtk_stages(self):
        def run(ctx, opts):
            raise RuntimeError("boom")

        yield rtk.StageSpec(name="explode", summary="always fails", run=run)


def test_a_failed_stage_reaches_stage_finish_and_run_finish(tmp_path):
    rec = Recorder()
    exp = EXP | {"stages": [EXP["stages"][0], {"kind": "explode"}]}
    with pytest.raises(rtk.StageError):
        rtk.run(exp, registry=registry_with(("recorder", rec), ("failing", FailingStage())), out=tmp_path / "run")
    finished = [c[1] for c in rec.calls if c[0] == "stage_finish"]
    assert [s.status for s in finished] == ["completed", "failed"]
    assert "boom" in finished[1].error
    outcome = rec.calls[-1][1]
    assert outcome.status == "failed" and outcome.failed == "02-explode" and "boom" in outcome.error
    text = outcome.report.read_text()
    assert "## Recorder" in text and "stage `02-explode` failed" in text


def test_training_rounds_within_one_stage_are_numbered():
    from rtk.lifecycle import EpochMetrics, Lifecycle, RunInfo, StageEpochs, StageInfo, epoch_listener, report_epoch

    seen = []

    class Obs:
        def rtk_epoch_metrics(self, epoch, metrics):
            seen.append((epoch, metrics.round, dict(metrics.values)))

    run = RunInfo(Path("."), "x", {})
    listener = StageEpochs(Lifecycle(observers=[("obs", Obs())]), run, StageInfo("s", "k", 0))
    with epoch_listener(listener):
        for epoch in (1, 2, 1, 2, 3):
            report_epoch(epoch, {"loss": 0.5, "note": "text", "nan": float("nan"), "flag": True})
    report_epoch(9, {"loss": 1.0})  # outside a run: nobody listens
    assert [(e, r) for e, r, _ in seen] == [(1, 0), (2, 0), (1, 1), (2, 1), (3, 1)]
    assert seen[0][2] == {"loss": 0.5}
    with pytest.raises(TypeError):
        EpochMetrics(1, {"a": 1.0}).values["a"] = 2.0  # type: ignore[index]


def test_the_tracking_guide_examples_work(tmp_path):
    """docs/tracking.md: the report-section plugin and the logger example, run as written."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "tracking.md").read_text()
    ns: dict = {}
    for body in re.findall(r"```python\n(.*?)```", text, re.S):
        if "class SlowestStage" in body or "class JsonLinesLogger" in body:
            exec(compile(body, "docs/tracking.md", "exec"), ns)  # noqa: S102 - our own docs
    module = type("DocsPlugin", (), {"rtk_loggers": staticmethod(ns["rtk_loggers"])})()
    reg = registry_with(("slowest", ns["SlowestStage"]()), ("jsonl", module))
    result = rtk.run(EXP | {"stages": EXP["stages"][:1], "loggers": ["jsonl"]}, registry=reg, out=tmp_path / "run")
    assert "## Slowest stage\n\n`01-train` took" in result.report.read_text()
    lines = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    history = result.table("history")
    assert [r["epoch"] for r in lines] == history["epoch"].tolist()
    assert [r["train_loss"] for r in lines] == pytest.approx(history["train_loss"].tolist())


def test_every_lifecycle_hook_is_specified_and_documented():
    import inspect as _inspect

    from rtk import hookspecs
    from rtk.lifecycle import LIFECYCLE_HOOKS

    specified = {n for n, f in _inspect.getmembers(hookspecs, _inspect.isfunction) if n.startswith("rtk_")}
    assert specified == set(hookspecs.HOOK_KINDS) | set(LIFECYCLE_HOOKS)
    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in ("tracking.md", "writing-a-plugin.md"):
        text = (docs / page).read_text()
        assert not [h for h in LIFECYCLE_HOOKS if f"`{h}" not in text], page
