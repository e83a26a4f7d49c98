"""Exact resume, interruption, NaN/inf handling, atomic state writes."""

from __future__ import annotations

import json
import math
import types

import pandas as pd
import pytest
import torch
from experimenthelpers import digits_experiment

import rtk
from rtk.errors import ConfigError, TrainingDivergedError
from rtk.models import ModelRecipe, read_spec
from rtk.models.small import cnn_small
from rtk.training import (
    Callback,
    LoopConfig,
    PGDATObjective,
    StandardObjective,
    train_model,
)
from rtk.training import state as state_mod

TIME_COLS = ["train_time_s", "eval_time_s"]


class Interrupt(Callback):
    """Raise KeyboardInterrupt (as Ctrl-C or a kill would stop the process) mid-epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def after_step(self, state) -> None:
        if state.epoch == self.epoch and state.batch == self.batch:
            raise KeyboardInterrupt


def _fresh(digits, seed: int):
    torch.manual_seed(seed)
    return cnn_small(digits.info)


def _small(digits):
    from rtk.data import DatasetBundle

    return DatasetBundle(digits.info, digits.train.subset(torch.arange(600)), digits.test.subset(torch.arange(200)))


@pytest.mark.parametrize(
    "opt",
    [
        {"optimizer": "sgd", "schedule": "piecewise", "milestones": [2.5], "momentum": 0.9, "nesterov": True},
        {"optimizer": "adam", "schedule": "one-cycle", "lr": 0.01, "grad_clip": 1.0},
    ],
)
def test_resumed_run_equals_uninterrupted_run(digits, tmp_path, opt):
    data = _small(digits)
    cfg = LoopConfig(
        **{"epochs": 4, "batch_size": 64, "lr": 0.05, **opt},
        eval_size=64,
        eval_train_size=64,
        eval_steps=3,
        checkpoint_every=2,
    )
    obj = PGDATObjective(eps=0.15, steps=3)
    recipe = ModelRecipe("cnn-small", {}, digits.info)

    full = _fresh(digits, 0)
    ref = train_model(full, obj, data, cfg, seed=5, out=tmp_path / "full", recipe=recipe)

    part = _fresh(digits, 0)
    with pytest.raises(KeyboardInterrupt):
        train_model(part, obj, data, cfg, seed=5, out=tmp_path / "cut", recipe=recipe, callbacks=[Interrupt(3, 4)])
    assert (tmp_path / "cut/state/LATEST").read_text() == "epoch-0002"  # only the running epoch was lost
    assert read_spec(tmp_path / "cut/checkpoints/last")["metadata"]["epoch"] == 2

    again = _fresh(digits, 123)  # different starting weights: everything must come from the saved state
    res = train_model(again, obj, data, cfg, seed=5, out=tmp_path / "cut", recipe=recipe, resume=True)
    assert res.resumed_from == 2 and res.epochs_run == 4
    for (k, a), b in zip(full.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # bitwise
    pd.testing.assert_frame_equal(
        res.history.drop(columns=TIME_COLS), ref.history.drop(columns=TIME_COLS), check_exact=True
    )
    assert res.best_epoch == ref.best_epoch and set(res.checkpoints) == set(ref.checkpoints)
    for tag in ("last", "best", "epoch-4"):
        a = (tmp_path / "full/checkpoints" / f"{tag}.safetensors").read_bytes()
        assert a == (tmp_path / "cut/checkpoints" / f"{tag}.safetensors").read_bytes(), tag


def test_resume_with_different_options_is_refused(digits, tmp_path):
    data = _small(digits)
    recipe = ModelRecipe("cnn-small", {}, digits.info)
    cfg = LoopConfig(epochs=2, batch_size=128, eval_every=0)
    train_model(_fresh(digits, 0), StandardObjective(), data, cfg, out=tmp_path, recipe=recipe)
    with pytest.raises(ConfigError) as err:
        train_model(
            _fresh(digits, 0),
            StandardObjective(),
            data,
            cfg.model_copy(update={"lr": 0.5}),
            out=tmp_path,
            recipe=recipe,
            resume=True,
        )
    assert "cannot resume" in str(err.value) and "lr: saved 0.1, now 0.5" in str(err.value)
    # a finished run resumed with the same options returns at once, untouched
    res = train_model(_fresh(digits, 9), StandardObjective(), data, cfg, out=tmp_path, recipe=recipe, resume=True)
    assert res.resumed_from == 2 and len(res.history) == 2


def test_state_write_is_atomic(tmp_path, monkeypatch):
    t = {"model/w": torch.arange(4.0)}
    state_mod.write_state(tmp_path, 1, dict(t), {"epoch": 1})
    real = state_mod.os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if str(dst).endswith("LATEST"):
            raise OSError("killed while switching LATEST")
        return real(src, dst)

    monkeypatch.setattr(state_mod.os, "replace", failing)
    with pytest.raises(OSError):
        state_mod.write_state(tmp_path, 2, {"model/w": torch.zeros(4)}, {"epoch": 2})
    monkeypatch.setattr(state_mod.os, "replace", real)
    st = state_mod.load_latest(tmp_path)
    assert st.epoch == 1 and torch.equal(st.tensors["model/w"], torch.arange(4.0))


class NaNAt:
    """Standard training whose loss becomes NaN (or inf) at one global step."""

    def __init__(self, step: int, value: float = float("nan")) -> None:
        self.step, self.value = step, value

    def __call__(self, model, x, y, *, progress):
        out = StandardObjective()(model, x, y, progress=progress)
        if progress.step == self.step:
            out.loss = out.loss * self.value
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_loss_stops_naming_epoch_and_batch_and_keeps_last_good_checkpoint(digits, tmp_path, value):
    data = _small(digits)  # 600 examples, batch 100: 6 batches per epoch
    cfg = LoopConfig(epochs=4, batch_size=100, lr=0.05, eval_size=0, eval_train_size=0)
    model = _fresh(digits, 0)
    with pytest.raises(TrainingDivergedError) as err:
        train_model(
            model, NaNAt(6 + 2, value), data, cfg, out=tmp_path, recipe=ModelRecipe("cnn-small", {}, digits.info)
        )
    msg = str(err.value)
    assert "epoch 2, batch 3 of 6" in msg and "the last good checkpoint is epoch 1" in msg, msg
    assert ("nan" if math.isnan(value) else "inf") in msg
    assert read_spec(tmp_path / "checkpoints/last")["metadata"]["epoch"] == 1
    assert not (tmp_path / "checkpoints/epoch-2.json").exists()
    assert (tmp_path / "state/LATEST").read_text() == "epoch-0001"
    assert len((tmp_path / "history.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
    # the model in memory is back at the last good weights
    good = rtk.models.checkpoint.read_tensors(tmp_path / "checkpoints/last")
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, good[k]), k


# ---------------------------------------------------------------------------- inside rtk run
CONTROL = {"fail_at": None, "mode": "raise"}


def _flaky_plugin():
    """A third-party trainer: standard training that fails at a chosen step (CONTROL)."""
    mod = types.ModuleType("flaky_trainer")

    class Flaky:
        def __call__(self, model, x, y, *, progress):
            out = StandardObjective()(model, x, y, progress=progress)
            if CONTROL["fail_at"] is not None and progress.step == CONTROL["fail_at"]:
                if CONTROL["mode"] == "raise":
                    raise RuntimeError("power cut")
                out.loss = out.loss * float("nan")
            return out

    @rtk.hookimpl
    def rtk_trainers():
        yield rtk.TrainerSpec(name="flaky", summary="fails on request", build=lambda o: Flaky())

    mod.rtk_trainers = rtk_trainers
    return mod


EXPERIMENT = digits_experiment(
    "resume",
    {
        "kind": "train",
        "id": "fit",
        "model": "net",
        "trainer": "flaky",
        "epochs": 4,
        "batch_size": 100,
        "lr": 0.05,
        "schedule": "cosine",
        "eval_eps": 0.1,
        "eval_steps": 3,
        "eval_size": 50,
        "eval_train_size": 50,
    },
    limits=(400, 100),
    model={"arch": "cnn-small"},
    seed=1,
    device="cpu",
)


def test_rtk_run_resume_continues_an_interrupted_train_stage(tmp_path):
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False, extra=[("flaky", _flaky_plugin())]))
    from rtk.runner import resumed_experiment

    CONTROL.update(fail_at=None)
    ref = rtk.run(EXPERIMENT, registry=reg, out=tmp_path / "ref").table("history")

    CONTROL.update(fail_at=2 * 4 + 1, mode="raise")  # epoch 3, batch 2
    with pytest.raises(rtk.StageError, match="power cut"):
        rtk.run(EXPERIMENT, registry=reg, out=tmp_path / "cut")
    state = json.loads((tmp_path / "cut/state.json").read_text())
    assert state["stages"]["fit"]["status"] == "failed"
    assert read_spec(tmp_path / "cut/checkpoints/net/last")["metadata"]["epoch"] == 2

    CONTROL.update(fail_at=None)
    res = rtk.execute(rtk.plan(resumed_experiment(tmp_path / "cut"), reg), resume=tmp_path / "cut")
    hist = res.table("history")
    assert "resumed after epoch 2" in res.stages["fit"].summary
    pd.testing.assert_frame_equal(hist.drop(columns=TIME_COLS), ref.drop(columns=TIME_COLS), check_exact=True)
    assert (tmp_path / "cut/checkpoints/net/last.safetensors").read_bytes() == (
        tmp_path / "ref/checkpoints/net/last.safetensors"
    ).read_bytes()


def test_nan_inside_a_stage_fails_it_and_keeps_the_last_good_checkpoint(tmp_path):
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False, extra=[("flaky", _flaky_plugin())]))
    CONTROL.update(fail_at=4 + 1, mode="nan")  # epoch 2, batch 2
    try:
        with pytest.raises(rtk.StageError) as err:
            rtk.run(EXPERIMENT, registry=reg, out=tmp_path / "nan")
    finally:
        CONTROL.update(fail_at=None)
    assert "TrainingDivergedError" in str(err.value) and "epoch 2, batch 2 of 4" in str(err.value)
    assert read_spec(tmp_path / "nan/checkpoints/net/last")["metadata"]["epoch"] == 1
    assert "stage `fit` failed" in (tmp_path / "nan/report.md").read_text()


# ---------------------------------------------------------------------------- a real kill
def test_kill_9_mid_training_loses_at_most_the_running_epoch(tmp_path):
    """SIGKILL an `rtk train` process after it completed an epoch; `rtk train --resume`
    finishes the run, and the result equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from rtk.cli.main import cli

    args = [
        "train",
        "--trainer",
        "pgd-at",
        "--eps",
        "0.15",
        "-o",
        "steps=4",
        "--epochs",
        "5",
        "--limit-train",
        "600",
        "--limit-test",
        "100",
        "--batch-size",
        "50",
        "--lr",
        "0.05",
        "--schedule",
        "cosine",
        "--eval-size",
        "50",
        "--eval-train-size",
        "50",
        "--eval-steps",
        "3",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtk.cli.main", "-q", *args, "--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    latest = cut / "artifacts/train/state/LATEST"
    deadline = time.monotonic() + 300
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() not in ("", "epoch-0000"):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_after = int(latest.read_text().split("-")[1])
            break
        time.sleep(0.005)
    assert killed_after is not None and killed_after < 5, f"not killed mid-run: {proc.returncode} {proc.stderr.read()}"
    assert json.loads((cut / "state.json").read_text())["stages"]["train"]["status"] == "running"
    saved = read_spec(cut / "checkpoints/net/last")["metadata"]["epoch"]
    assert saved in (killed_after, killed_after + 1)  # the kill may land between the checkpoint and the state

    resumed = subprocess.run(
        [sys.executable, "-m", "rtk.cli.main", "-q", "train", "--resume", str(cut)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after epoch {killed_after}" in resumed.stdout

    ref = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "ref")], obj=rtk.plugin_manager(entry_points=False))
    assert ref.exit_code == 0, ref.output
    a = pd.read_csv(cut / "tables/train/history.csv").drop(columns=TIME_COLS)
    b = pd.read_csv(tmp_path / "ref/tables/train/history.csv").drop(columns=TIME_COLS)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (cut / "checkpoints/net/last.safetensors").read_bytes() == (
        tmp_path / "ref/checkpoints/net/last.safetensors"
    ).read_bytes()
