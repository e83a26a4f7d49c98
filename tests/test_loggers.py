"""Loggers: what TensorBoard, MLflow and W&B (offline) recorded, read back with each tool's
own reader and compared to the run's tables; choosing loggers; plan-time errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from pluginhelpers import observed_experiment

import rtk
from rtk.errors import ConfigError

EXP = observed_experiment("tracked", seed=2)
TAGS = {"models.net.width": 16, "seed": 2}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, registry):
    """One run with all three loggers (W&B forced offline), tagged like a study point."""
    pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")
    pytest.importorskip("wandb", reason="the dev extra installs wandb")
    root = tmp_path_factory.mktemp("tracked")
    exp = rtk.experiment_from_dict(
        {**EXP, "loggers": ["tensorboard", "mlflow", {"name": "wandb", "mode": "offline"}]}, base_dir=root
    )
    exp = exp.model_copy(update={"tags": TAGS})  # what a study sets on each point (Experiment.tags)
    return rtk.run(exp, registry=registry, out=root / "runs" / "point")


def test_tensorboard_events_hold_epochs_tables_and_report(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    ea = EventAccumulator(str(tracked.path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    history = tracked.table("01-train/history")
    for col in ("train_loss", "train_acc", "test_clean_acc", "lr"):
        events = ea.Scalars(f"01-train/{col}")
        assert [e.step for e in events] == history["epoch"].tolist()
        assert [e.value for e in events] == pytest.approx(history[col].tolist(), rel=1e-6)
    assert "01-train/train_robust_acc" not in ea.Tags()["scalars"]  # NaN columns are not logged
    metrics = tracked.stages["02-evaluate"].metrics
    assert ea.Scalars("02-evaluate/metrics/net.clean_accuracy")[0].value == pytest.approx(metrics["net.clean_accuracy"])

    def text(tag: str) -> str:
        return tensor_util.make_ndarray(ea.Tensors(f"{tag}/text_summary")[-1].tensor_proto).item().decode()

    assert text("report.md") == tracked.report.read_text()
    table = text("tables/02-evaluate/accuracy")
    acc = tracked.table("02-evaluate/accuracy")
    assert table.count("\n") == len(acc) + 1 and all(c in table.splitlines()[0] for c in acc.columns)
    config = json.loads(text("config").strip("`\njson"))
    assert config["stages"][0]["options"]["epochs"] == 2
    assert "`models.net.width` = `16`" in text("tags")
    assert ea.Tags()["images"] == ["figures/01-train/robust-overfitting"]


def test_mlflow_run_holds_params_tags_metrics_and_tables(tracked):
    from mlflow import MlflowClient

    client = MlflowClient((tracked.path.parent / "mlruns").as_uri())
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "point"
    assert run.data.tags["models.net.width"] == "16" and run.data.tags["rtk.run_dir"] == str(tracked.path.resolve())
    assert run.data.params["seed"] == "2" and run.data.params["dataset.options.limit_train"] == "200"
    history = tracked.table("01-train/history")
    for col in ("train_loss", "test_clean_acc"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"01-train/{col}"))
        assert [s for s, _ in got] == history["epoch"].tolist()
        assert [v for _, v in got] == pytest.approx(history[col].tolist())
    for key in tracked.tables:
        local = client.download_artifacts(run.info.run_id, f"tables/{key}.csv")
        pd.testing.assert_frame_equal(pd.read_csv(local), pd.read_csv(tracked.path / "tables" / f"{key}.csv"))
    report = client.download_artifacts(run.info.run_id, "report.md")
    assert Path(report).read_text() == tracked.report.read_text()
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures/01-train")]
    assert figures == ["figures/01-train/robust-overfitting.png"]


class FailOnce:
    """A stage that fails on its first run and succeeds when resumed."""

    def __init__(self) -> None:
        self.failed = False

    @rtk.hookimpl
    def rtk_stages(self):
        def run(ctx, opts):
            if not self.failed:
                self.failed = True
                raise RuntimeError("interrupted")
            return rtk.StageResult(tables={"done": pd.DataFrame({"ok": [1]})})

        yield rtk.StageSpec(name="flaky", summary="fails once", run=run)


def test_mlflow_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")
    from mlflow import MlflowClient

    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False, extra=[("flaky", FailOnce())]))
    exp = {**EXP, "stages": [EXP["stages"][0], {"kind": "flaky"}], "loggers": ["mlflow"]}
    with pytest.raises(rtk.StageError):
        rtk.run(exp, registry=reg, out=tmp_path / "run")
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    exp_id = client.get_experiment_by_name("tracked").experiment_id
    (first,) = client.search_runs([exp_id])
    assert first.info.status == "FAILED"
    rtk.run(exp, registry=reg, resume=tmp_path / "run")
    (again,) = client.search_runs([exp_id])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert client.get_metric_history(again.info.run_id, "01-train/train_loss")  # from the first start
    assert client.list_artifacts(again.info.run_id, "tables/02-flaky")[0].path == "tables/02-flaky/done.csv"


def _wandb_records(path: Path):
    """The records of a W&B offline ``.wandb`` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def test_wandb_offline_files_hold_config_history_and_tables(tracked):
    (run_dir,) = (tracked.path / "wandb").glob("offline-run-*")
    records = list(_wandb_records(next(run_dir.glob("run-*.wandb"))))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["seed"] == 2 and config["tags"] == {"models.net.width": 16, "seed": 2}
    assert sorted(run.tags) == ["models.net.width=16", "seed=2"]
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    epochs = [r for r in rows if "01-train/train_loss" in r]
    history = tracked.table("01-train/history")
    assert [r["01-train/epoch"] for r in epochs] == history["epoch"].tolist()
    assert [r["01-train/train_loss"] for r in epochs] == pytest.approx(history["train_loss"].tolist())
    assert next(r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit") == 0
    files = run_dir / "files"
    for key, df in tracked.tables.items():
        (table_file,) = (files / "media" / "table" / "tables").glob(f"{key}_*.table.json")
        logged = json.loads(table_file.read_text())
        got = pd.DataFrame(logged["data"], columns=logged["columns"])
        pd.testing.assert_frame_equal(got, df.reset_index(drop=True), check_dtype=False)
    assert (files / "report.md").read_text() == tracked.report.read_text()


def test_unknown_logger_and_bad_options_fail_at_plan_time(registry, tmp_path):
    exp = rtk.experiment_from_dict({**EXP, "loggers": ["tensorbord", {"name": "tensorboard", "dirr": "x"}]})
    with pytest.raises(ConfigError) as err:
        rtk.plan(exp, registry)
    text = str(err.value)
    assert "loggers[0].name: unknown logger 'tensorbord'; did you mean 'tensorboard'" in text
    assert "loggers[1]" in text and "dirr" in text
    with pytest.raises(ConfigError, match="loggers.0.*expected a logger name"):
        rtk.experiment_from_dict({**EXP, "loggers": [3]})
    with pytest.raises(ConfigError, match="leaves|relative"):
        rtk.plan(rtk.experiment_from_dict({**EXP, "loggers": [{"name": "tensorboard", "dir": "../out"}]}), registry)


class NeedsMissing:
    @rtk.hookimpl
    def rtk_loggers(self):
        yield rtk.LoggerSpec(
            name="neptune-ish",
            summary="needs a module that is not installed",
            build=lambda opts, run: object(),
            requires=("rtk_no_such_module",),
            install="pip install rtk-no-such-module",
        )


def test_a_logger_whose_extra_is_missing_fails_at_plan_time_with_the_install_hint():
    pm = rtk.plugin_manager(entry_points=False, extra=[("needs", NeedsMissing())])
    reg = rtk.Registry.from_plugin_manager(pm)
    with pytest.raises(ConfigError) as err:
        rtk.plan(rtk.experiment_from_dict({**EXP, "loggers": ["neptune-ish"]}), reg)
    assert (
        "loggers[0]: logger 'neptune-ish' needs rtk_no_such_module, which is not installed; "
        "install it with pip install rtk-no-such-module"
    ) in str(err.value)


def test_cli_logger_flag_adds_a_logger_to_the_run(tmp_path, registry):
    from rtk.cli.main import cli

    pm = rtk.plugin_manager(entry_points=False)
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'name = "cli"\n[dataset]\nname = "digits"\nlimit_train = 150\nlimit_test = 60\n'
        '[models.net]\narch = "mlp"\nhidden = [8]\n[[stages]]\nkind = "train"\nmodel = "net"\nepochs = 1\n'
    )
    runner = CliRunner()
    res = runner.invoke(cli, obj=pm, args=["run", str(exp), "--dry-run", "--logger", "tensorboard"])
    assert res.exit_code == 0, res.output
    assert "logger tensorboard" in res.output
    res = runner.invoke(cli, obj=pm, args=["run", str(exp), "--logger", "tensorbord", "--dry-run"])
    assert res.exit_code != 0 and "did you mean 'tensorboard'" in res.output
    res = runner.invoke(cli, obj=pm, args=["run", str(exp), "--out", str(tmp_path / "run"), "--logger", "tensorboard"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_auto_mode_is_offline_without_a_key_or_a_server(monkeypatch, tmp_path):
    import socket

    from rtk.plugins.loggers import _wandb_reachable

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not _wandb_reachable()
    with socket.socket() as s:  # a port that answers nothing once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert not _wandb_reachable(timeout=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
        assert _wandb_reachable(timeout=0.5)


def test_mlflow_default_store_is_shared_by_a_studys_points(tmp_path):
    from rtk.plugins.loggers import _runs_root

    study = tmp_path / "study"
    (study / "points" / "p0").mkdir(parents=True)
    assert _runs_root(rtk.RunInfo(study / "points" / "p0", "x", {})) == study / "points"  # no study.json
    (study / "study.json").write_text("{}")
    assert _runs_root(rtk.RunInfo(study / "points" / "p0", "x", {})) == study
    assert _runs_root(rtk.RunInfo(tmp_path / "runs" / "r1", "x", {})) == tmp_path / "runs"


class Misspelled:
    def __init__(self, options, run):
        pass

    def rtk_run_finsh(self, outcome):  # never called: not a lifecycle hook
        pass


class MisspelledPlugin:
    @rtk.hookimpl
    def rtk_loggers(self):
        yield rtk.LoggerSpec(name="typo", summary="a logger with a misspelled hook method", build=Misspelled)


def test_a_logger_method_that_is_not_a_hook_fails_its_contract_and_warns_at_run_time(tmp_path, caplog, monkeypatch):
    import logging

    import rtk.testing

    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False, extra=[("typo", MisspelledPlugin())]))
    result = rtk.testing.check(reg.registration("logger", "typo"))
    assert not result.passed and any("rtk_run_finsh" in p for p in result.problems)
    assert rtk.testing.check(reg.registration("logger", "tensorboard")).passed
    exp = {**EXP, "stages": EXP["stages"][:1], "loggers": ["typo"]}
    with caplog.at_level(logging.WARNING, logger="rtk.lifecycle"):
        rtk.run(exp, registry=reg, out=tmp_path / "run")
    assert any(
        "'rtk_run_finsh'" in r.getMessage() and "did you mean 'rtk_run_finish'" in r.getMessage()
        for r in caplog.records
    )
