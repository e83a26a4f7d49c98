"""Studies: --set overrides, [sweep] expansion and validation, the study directory, executors
(local processes, submitit's local executor, torchrun points), faults and resume.

The Ray executor runs end to end in docs/tutorials/studies.md (tests/test_docs.py), which
checks that its tables equal the local executor's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from experimenthelpers import digits_experiment, experiment_toml

import rtk
from rtk.cli.main import cli
from rtk.study import (
    LocalExecutor,
    SlurmExecutor,
    apply_overrides,
    format_key_path,
    load_study,
    make_executor,
    parse_key_path,
    resume_study,
    run_study,
    threads_per_point,
)

TINY = experiment_toml(
    digits_experiment(
        "tiny",
        {
            "id": "train",
            "kind": "train",
            "model": "net",
            "trainer": "standard",
            "epochs": 1,
            "lr": 0.05,
            "eval_size": 0,
        },
        {
            "id": "evaluate",
            "kind": "evaluate",
            "models": ["net"],
            "attacks": [{"name": "pgd", "steps": 2}],
            "eps": [0.1],
            "limit": 60,
            "checks": False,
        },
        limits=(200, 60),
        model={"arch": "cnn-small"},
        seed=0,
    )
)


def write(tmp_path: Path, sweep: str = "", name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(TINY + ("\n[sweep]\n" + sweep if sweep else ""))
    return p


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ----------------------------------------------------------------------------- overrides
def test_key_paths():
    assert parse_key_path('models."a.b".width') == ("models", "a.b", "width")
    assert format_key_path(("models", "a.b", "width")) == 'models."a.b".width'
    assert parse_key_path("stages.01-train.epochs") == ("stages", "01-train", "epochs")
    with pytest.raises(rtk.ConfigError, match="not a key path"):
        parse_key_path("models..width")


def test_overrides_address_stages_by_id_index_and_kind():
    data = {
        "models": {"net": {"arch": "cnn-small"}},
        "stages": [{"kind": "train", "trainer": "pgd-at"}, {"kind": "evaluate"}],
    }
    out = apply_overrides(
        data,
        {"stages.01-train.epochs": 3, "stages.1.limit": 10, "stages.train.trainer.eps": 0.2, "models.net.width": 4},
    )
    assert out["stages"][0] == {"kind": "train", "trainer": {"name": "pgd-at", "eps": 0.2}, "epochs": 3}
    assert out["stages"][1]["limit"] == 10 and out["models"]["net"]["width"] == 4
    assert "epochs" not in data["stages"][0], "the input is not changed"
    with pytest.raises(rtk.ConfigError) as err:
        apply_overrides(data, {"stages.trian.epochs": 1, "models.nett.width": 2, "stages.9.x": 1})
    text = str(err.value)
    assert "no stage 'trian'" in text and "did you mean '01-train'" in text
    assert "no model 'nett'" in text and "stages.9.x" in text


def test_run_with_overrides_validates_and_records_the_resolved_config(tmp_path):
    exp = write(tmp_path)
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.epochs: Input should be greater than or equal to 1"):
        rtk.run(exp, overrides={"stages.train.epochs": 0}, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    over = {"models.net.width": 2, "stages.evaluate.limit": 30, "tags": {"team": "a"}}
    res = rtk.run(exp, overrides=over, out=tmp_path / "run", runs_root=tmp_path)
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["models"]["net"]["options"] == {"width": 2}
    assert cfg["overrides"] == over and cfg["tags"] == {"team": "a"}
    assert res.table("accuracy")["n"].max() == 30
    again = rtk.runner.resumed_experiment(res.path)  # --resume rebuilds the same experiment
    assert again.models["net"].options == {"width": 2} and again.stages[1].options["limit"] == 30


def test_cli_set_errors_name_the_key_path(tmp_path):
    exp = write(tmp_path)
    res = CliRunner().invoke(cli, ["run", str(exp), "--set", "stages.trian.epochs=2", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no stage 'trian'" in res.output
    res = invoke("run", str(exp), "--set", "models.net.width=3", "--set", "stages.train.epochs=2", "--dry-run")
    assert res.exit_code == 0 and "width=3" in res.output and "epochs=2" in res.output
    res = invoke("run", str(exp), "--set", "stages.train.trainer={name = 'pgd-at', steps = 1}",
                 "--set", "stages.train.trainer.eps=8/255", "--dry-run")  # fmt: skip
    assert res.exit_code == 0 and "'steps': 1, 'eps': '8/255'" in res.output, res.output
    res = invoke("run", str(exp), "--set", "sweep.seed=[1, 2]", "--dry-run")  # a sweep from the command line
    assert res.exit_code == 0 and "all 2 points are valid" in res.output


# ----------------------------------------------------------------------------- sweeps
def test_sweep_cross_product_zip_and_tags(tmp_path):
    exp = write(
        tmp_path,
        '"models.net.width" = [1, 2]\nseed = [0, 1, 2]\n[[sweep.zip]]\n'
        '"stages.train.trainer" = ["standard", { name = "pgd-at", eps = 0.1, steps = 1 }]\n'
        '"stages.train.lr" = [0.05, 0.02]\n',
    )
    study = load_study(exp)
    assert len(study.points) == 2 * 3 * 2
    assert study.keys == ["models.net.width", "seed", "stages.train.trainer", "stages.train.lr"]
    last = study.points[-1]
    assert last.values == {
        "models.net.width": 2,
        "seed": 2,
        "stages.train.trainer": {"name": "pgd-at", "eps": 0.1, "steps": 1},
        "stages.train.lr": 0.02,
    }
    assert last.experiment.seed == 2 and last.experiment.models["net"].options == {"width": 2}
    assert last.experiment.tags["stages.train.trainer"] == '{"name":"pgd-at","eps":0.1,"steps":1}'
    assert last.experiment.tags["models.net.width"] == 2
    assert len(set(study.ids())) == len(study.points)
    res = invoke("run", str(exp), "--dry-run")
    assert res.exit_code == 0 and res.output.count("\n  p0") == 12 and "all 12 points are valid" in res.output


@pytest.mark.parametrize(
    "sweep, message",
    [
        ('"models.net.widht" = [1, 2]', "models.net.widht: unknown key"),
        ("seed = []", "sweep.seed: the list of values is empty"),
        ("seed = 3", "sweep.seed: expected a list of values"),
        ('"stages.nope.epochs" = [1]', "no stage 'nope'"),
        ('"models.net.width" = [2, 0, -1]', "models.net.width: Input should be greater than or equal to 1"),
        ('[[sweep.zip]]\nseed = [0, 1]\n"models.net.width" = [1]', "keys that vary together need lists of one length"),
    ],
)
def test_bad_sweeps_fail_before_any_point_starts(tmp_path, sweep, message):
    exp = write(tmp_path, sweep)
    with pytest.raises(rtk.ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")) as err:
        load_study(exp)
    if "0, -1" in sweep:
        assert "(got 0) (point p001-width=0)" in str(err.value) and "(got -1) (point p002-width=-1)" in str(err.value)
    res = CliRunner().invoke(cli, ["run", str(exp), "--out", str(tmp_path / "study")])
    assert res.exit_code != 0 and not (tmp_path / "study").exists()


def test_a_file_with_a_sweep_is_not_one_experiment(tmp_path):
    exp = write(tmp_path, "seed = [0, 1]")
    with pytest.raises(rtk.ConfigError, match="declares a study"):
        rtk.run(exp)
    with pytest.raises(rtk.ConfigError, match="seed: this key is swept"):
        load_study(exp, overrides={"seed": 3})
    assert [p.experiment.seed for p in load_study(exp, overrides={"sweep.seed": [5]}).points] == [5]


# ----------------------------------------------------------------------------- executors
def test_executor_options_and_missing_extras(monkeypatch, tmp_path):
    assert threads_per_point(2, 1, cpus=8) == 4 and threads_per_point(4, 2, cpus=8) == 1
    assert threads_per_point(3, 1, cpus=2) == 1
    with pytest.raises(rtk.ConfigError, match="option.*address.*do not apply"):
        make_executor("local", address="h:1")
    with pytest.raises(rtk.ConfigError, match="unknown executor"):
        make_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "submitit", None)
    exp = write(tmp_path, "seed = [0, 1]")
    for args, extra in ((["--executor", "ray"], "rtk[ray]"), (["--executor", "slurm"], "rtk[slurm]")):
        res = CliRunner().invoke(cli, ["run", str(exp), "--out", str(tmp_path / "s"), *args])
        assert res.exit_code != 0 and extra in res.output, res.output
        assert not (tmp_path / "s").exists()


def test_ray_address_that_does_not_answer(tmp_path):
    pytest.importorskip("ray")
    from rtk.distributed import free_port

    exp = write(tmp_path, "seed = [0, 1]")
    port = free_port()  # nothing listens there
    res = CliRunner().invoke(
        cli, ["run", str(exp), "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "s")]
    )
    assert res.exit_code != 0 and "no Ray cluster answers" in res.output
    assert not (tmp_path / "s").exists()


def test_slurm_executor_without_slurm_says_so(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(rtk.ConfigError, match="sbatch is not on PATH"):
        SlurmExecutor().check()


def _no_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in df.columns if c.endswith("_time_s") or c == "seconds"])


def test_study_local_jobs_2_one_failed_point_and_resume(tmp_path):
    """Two points at once; the diverging point fails without stopping the other; the
    gathered tables carry the swept key; --resume reruns only the failed point."""
    exp = write(tmp_path, '"stages.train.lr" = [0.05, 1e30]')
    out = tmp_path / "study"
    res = CliRunner().invoke(cli, ["run", str(exp), "--jobs", "2", "--out", str(out)])
    assert res.exit_code != 0 and "1 of 2 points did not complete" in res.output, res.output
    record = json.loads((out / "study.json").read_text())
    states = {p["values"]["stages.train.lr"]: p for p in record["points"]}
    assert states[0.05]["state"] == "completed" and states[1e30]["state"] == "failed"
    assert "TrainingDivergedError" in states[1e30]["error"]
    acc = pd.read_csv(out / "tables" / "evaluate" / "accuracy.csv")
    assert list(acc.columns[:2]) == ["point", "stages.train.lr"] and set(acc["stages.train.lr"]) == {0.05}
    assert pd.read_parquet(out / "tables" / "evaluate" / "accuracy.parquet").shape == acc.shape
    report = (out / "report.md").read_text()
    assert "1 completed, 1 failed" in report and "rtk run --resume" in report
    point_dir = out / states[0.05]["dir"]  # `rtk run --resume POINT_DIR` rebuilds the point's experiment
    again = rtk.runner.resumed_experiment(point_dir)
    assert again.stages[0].options["lr"] == 0.05 and again.tags == {"stages.train.lr": 0.05}
    ok_log = out / "logs" / f"{states[0.05]['id']}.log"
    size = ok_log.stat().st_size
    res = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert res.exit_code != 0 and "1 of 2 points did not complete" in res.output
    assert ok_log.stat().st_size == size, "the completed point did not run again"
    assert (out / "logs" / f"{states[1e30]['id']}.log").read_text().count("TrainingDivergedError") >= 2
    # the point's seconds are its whole time: the failed first attempt is kept beside the second
    again = {p["values"]["stages.train.lr"]: p for p in json.loads((out / "study.json").read_text())["points"]}
    first_try = states[1e30]["seconds"]
    assert again[1e30]["attempts"] == [{"ended": "failed", "seconds": round(first_try, 3)}]
    assert again[1e30]["seconds"] > round(first_try, 3)
    assert "attempts" not in again[0.05] and again[0.05]["seconds"] == states[0.05]["seconds"]


def test_killing_the_study_keeps_finished_points_and_resume_finishes(tmp_path):
    exp = write(tmp_path, "seed = [0, 1]")
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtk.cli.main", "-q", "run", str(exp), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        first = None
        while time.monotonic() < deadline and proc.poll() is None:
            rec = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else None
            if rec and rec["points"][0]["state"] == "completed" and rec["points"][1]["state"] == "running":
                first = rec["points"][0]
                break
            time.sleep(0.2)
        assert first is not None, "the first point did not complete in time"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
    time.sleep(1.0)
    rec = json.loads((out / "study.json").read_text())
    assert [p["state"] for p in rec["points"]] == ["completed", "running"]
    stopped = rec["points"][1]
    first_dir = out / first["dir"]
    mtime = (first_dir / "state.json").stat().st_mtime_ns
    study = resume_study(out)
    events = []
    result = run_study(study, executor=LocalExecutor(), resume=out, progress=events.append)
    assert result.failed == []
    assert [(e.event, e.point) for e in events] == [
        (ev, p["id"]) for p in rec["points"][1:] for ev in ("started", "completed")
    ]
    assert (events[-1].done, events[-1].running, events[-1].failed, events[-1].total) == (2, 0, 0, 2)
    assert (first_dir / "state.json").stat().st_mtime_ns == mtime, "the finished point was kept as it was"
    # the stopped attempt's time (its start to its last write) is kept, and counted in the point's seconds
    after = json.loads((out / "study.json").read_text())["points"]
    (attempt,) = after[1]["attempts"]
    assert attempt["ended"] == "stopped" and 0 <= attempt["seconds"] <= killed_at - stopped["started_at"] + 0.01
    assert after[1]["seconds"] >= attempt["seconds"] and after[1]["started_at"] > stopped["started_at"]
    assert "attempts" not in after[0]
    acc = result.table("evaluate/accuracy")
    assert sorted(set(acc["seed"])) == [0, 1] and (acc.groupby("point").size() == 3).all()
    summary = result.table("study/summary")
    clean = summary[summary["metric"] == "net.clean_accuracy"].iloc[0]
    assert clean["n"] == 2 and clean["ci95_low"] <= clean["mean"] <= clean["ci95_high"]


def test_slurm_through_submitit_local_and_a_torchrun_point(tmp_path):
    """submitit's local executor runs the same point jobs; a point with nproc 2 runs under
    torchrun inside its job."""
    pytest.importorskip("submitit")
    exp = write(tmp_path, '"models.net.width" = [2]')
    study = load_study(exp)
    ex = make_executor("slurm", cluster="local", nproc=2, time_min=10, poll_s=0.5)
    result = run_study(study, executor=ex, out=tmp_path / "study")
    assert result.failed == [], result.points
    env = json.loads((tmp_path / "study" / result.points[0]["dir"] / "environment.json").read_text())
    assert env["distributed"]["world_size"] == 2
    hist = result.table("train/history")
    assert list(hist["models.net.width"]) == [2] and list(hist.columns[:2]) == ["point", "models.net.width"]
    assert "slurm (local" in json.loads((tmp_path / "study" / "study.json").read_text())["executor"]


def test_paper1_width_sweep_is_the_width_files_recipe():
    """experiments/paper1-width.toml: one study over width 2/4/8/16 whose width-16 point is
    paper1-wide.toml's experiment (models renamed std/pgd/trades)."""
    root = Path(__file__).resolve().parents[1] / "experiments"
    on_digits = {"dataset.name": "digits"}  # the check of Fashion-MNIST's files is not the point here
    study = load_study(root / "paper1-width.toml", overrides=on_digits)
    assert [p.experiment.models["pgd"].options["width"] for p in study.points] == [2, 4, 8, 16]
    wide = rtk.load_experiment(root / "paper1-wide.toml", overrides=on_digits)
    rename = {"std-w16": "std", "pgd-w16": "pgd", "trades-w16": "trades"}

    def renamed(text: str) -> str:
        for old, new in rename.items():
            text = text.replace(old, new)
        return text

    point = study.points[-1].experiment
    assert [(s.id, s.kind) for s in point.stages] == [(renamed(s.id), s.kind) for s in wide.stages]
    assert [json.dumps(s.options, sort_keys=True) for s in point.stages] == [
        renamed(json.dumps(s.options, sort_keys=True)) for s in wide.stages
    ]
    assert {n: m.options for n, m in point.models.items()} == {rename[n]: m.options for n, m in wide.models.items()}


@pytest.mark.parametrize("where", ["file", "overrides"])
def test_resuming_a_study_dir_that_turns_on_unsafe_loading_needs_the_users_flag(tmp_path, where):
    """A study directory is untrusted: its experiment.toml or study.json overrides may not turn on
    unpickling; --resume refuses before any point runs unless --allow-unsafe-pickle is given."""
    d = tmp_path / "study"
    d.mkdir()
    unsafe_line = "allow_unsafe_pickle = true\n" if where == "file" else ""
    (d / "experiment.toml").write_text(
        'name = "s"\n[dataset]\nname = "digits"\n[models.net]\narch = "robustbench"\n'
        f'model = "Standard"\n{unsafe_line}[sweep]\nseed = [0, 1]\n'
    )
    overrides = {"models.net.allow_unsafe_pickle": True} if where == "overrides" else {}
    (d / "study.json").write_text(json.dumps({"points": [], "overrides": overrides}))
    with pytest.raises(rtk.ConfigError, match="unsafe loading"):
        rtk.study.resume_study(d)
    res = CliRunner().invoke(cli, ["run", "--resume", str(d)])
    assert res.exit_code != 0 and "unsafe loading" in res.output
    assert not (d / "points").exists()


def test_an_earlier_attempt_keeps_its_time(tmp_path):
    """Before a point runs again, its earlier attempt's time is kept: a failed attempt's own seconds (its total less
    the attempts before it), a stopped one's from its start to the last write in its directory or log."""
    from rtk.study.engine import _close_attempt

    (tmp_path / "points" / "p1" / "artifacts").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    last = tmp_path / "points" / "p1" / "artifacts" / "epoch-3.pt"
    last.write_bytes(b"x")
    (tmp_path / "logs" / "p1.log").write_text("epoch 3\n")
    os.utime(last, (1000.0 + 42.0, 1000.0 + 42.0))
    os.utime(tmp_path / "logs" / "p1.log", (1000.0 + 40.0, 1000.0 + 40.0))
    where = (tmp_path / "points" / "p1", tmp_path / "logs" / "p1.log")
    stopped = {"id": "p1", "dir": "points/p1", "state": "running", "started_at": 1000.0}
    _close_attempt(stopped, *where)
    assert stopped["attempts"] == [{"ended": "stopped", "seconds": 42.0}]
    failed = {
        "id": "p1",
        "dir": "points/p1",
        "state": "failed",
        "seconds": 50.0,
        "attempts": [{"ended": "stopped", "seconds": 42.0}],
    }
    _close_attempt(failed, *where)
    assert failed["attempts"][-1] == {"ended": "failed", "seconds": 8.0}
    pending = {"id": "p1", "dir": "points/p1", "state": "pending"}  # never started: nothing to keep
    _close_attempt(pending, *where)
    assert "attempts" not in pending
