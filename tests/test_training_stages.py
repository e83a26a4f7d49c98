"""The train and fine-tune stages of rtk run, and the rtk train command."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from experimenthelpers import digits_experiment

import rtk
from rtk.errors import ConfigError
from rtk.models.checkpoint import read_tensors

BASE = digits_experiment("t", limits=(400, 100), model={"arch": "cnn-small"}, seed=0, device="cpu")


def _exp(*stages):
    return {**BASE, "stages": list(stages)}


TRAIN = {
    "kind": "train",
    "id": "pre",
    "model": "net",
    "trainer": {"name": "pgd-at", "eps": "0.1", "steps": 3},
    "epochs": 3,
    "batch_size": 100,
    "lr": 0.05,
    "eval_size": 50,
    "eval_train_size": 50,
    "eval_steps": 3,
    "checkpoint_every": 2,
    "schedule": "piecewise",
    "milestones": [2],
}


def test_train_then_fine_tune_from_best(tmp_path, registry):
    ft = {
        "kind": "fine-tune",
        "id": "ft",
        "model": "net-ft",
        "source": "net@best",
        "trainer": "trades",
        "epochs": 2,
        "batch_size": 100,
        "eval_size": 50,
        "eval_train_size": 0,
        "eval_steps": 3,
        "params": ["fc1.*", r"re:head\.(weight|bias)"],  # a glob and a regular expression (rtk.NamePattern)
    }
    again = {"kind": "train", "id": "again", "model": "net-ft", "epochs": 1, "batch_size": 200, "eval_every": 0}
    res = rtk.run(_exp(TRAIN, ft, again), registry=registry, out=tmp_path / "run")
    hist = res.table("pre/history")
    assert list(hist.columns[:2]) == ["model", "trainer"] and set(hist.trainer) == {"pgd-at(eps=0.1, steps=3)"}
    assert hist.lr.round(5).tolist() == [0.05, 0.05, 0.005]  # piecewise, milestone at epoch 2
    assert hist.test_robust_acc.notna().all() and hist.train_robust_acc.notna().all()
    state = json.loads((tmp_path / "run/state.json").read_text())
    assert set(state["models"]["net"]["checkpoints"]) == {"last", "best", "epoch-2", "current"}
    assert set(state["models"]["net-ft"]["checkpoints"]) >= {"start", "last", "best", "current"}
    assert res.stages["pre"].figures["robust-overfitting"].exists()
    assert "Best epoch" in res.stages["pre"].summary and res.stages["pre"].metrics["best_epoch"] in (1, 2, 3)
    # fine-tuning started from net@best and trained only fc1/head with the lower default LR
    # (state.json stores checkpoint paths relative to the run directory)
    state = {
        "models": {
            m: {"checkpoints": {t: tmp_path / "run" / p for t, p in v["checkpoints"].items()}}
            for m, v in state["models"].items()
        }
    }
    start = read_tensors(state["models"]["net-ft"]["checkpoints"]["start"])
    best = read_tensors(state["models"]["net"]["checkpoints"]["best"])
    best_ft = read_tensors(state["models"]["net-ft"]["checkpoints"]["best"])
    assert all(torch.equal(start[k], best[k]) for k in best)
    assert torch.equal(best_ft["conv1.weight"], best["conv1.weight"]) and not torch.equal(
        best_ft["head.weight"], best["head.weight"]
    )
    ft_hist = res.table("ft/history")
    assert ft_hist.lr.tolist() == [0.01, 0.01] and ft_hist.trainer.iloc[0] == "trades"
    assert set(ft_hist.model) == {"net-ft"}
    # params froze conv1 during fine-tuning only: the next stage trains every parameter again
    assert torch.equal(
        read_tensors(state["models"]["net-ft"]["checkpoints"]["best"])["conv1.weight"], best["conv1.weight"]
    )
    final = read_tensors(state["models"]["net-ft"]["checkpoints"]["last"])
    assert not torch.equal(final["conv1.weight"], best["conv1.weight"])
    report = (tmp_path / "run/report.md").read_text()
    assert "robust-overfitting.png" in report


@pytest.mark.parametrize(
    "stage,needle",
    [
        (
            {**TRAIN, "trainer": {"name": "fast-at", "steps": 3}},
            "stages[0].trainer.steps: Value error, fast-at takes exactly one FGSM step",
        ),
        ({**TRAIN, "schedule": "one-cycle"}, "milestones apply only to schedule = 'piecewise'"),
        (
            {**TRAIN, "trainer": {"name": "pgd-at", "eps": "8/255", "eps_ramp": 5}},
            "ramp ends at epoch 5, after training ends (3 epochs)",
        ),
        ({**TRAIN, "trainer": {"name": "pgd-at", "eps": 1.5}}, "out of range for Linf"),
        ({**TRAIN, "trainer": "pgd-att"}, "unknown trainer 'pgd-att'; did you mean 'pgd-at'"),
        ({"kind": "fine-tune", "model": "ft", "source": "nett@best"}, "stages[0].source: unknown model 'nett@best'"),
        ({**TRAIN, "optimizer": "adam", "nesterov": True}, "momentum and nesterov apply only to optimizer = 'sgd'"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, registry, stage, needle):
    with pytest.raises(ConfigError) as err:
        rtk.plan(rtk.experiment_from_dict(_exp(stage), source="exp.toml"), registry)
    assert needle in str(err.value) and "exp.toml" in str(err.value)
    assert not (tmp_path / "run").exists()


def _cli(args, registry_pm=None):
    from rtk.cli.main import cli

    pm = rtk.plugin_manager(entry_points=False)
    return CliRunner().invoke(cli, args, obj=pm, catch_exceptions=False)


def test_rtk_train_command(tmp_path):
    out = tmp_path / "run"
    r = _cli(
        [
            "train",
            "--trainer",
            "fast-at",
            "--eps",
            "0.1",
            "--epochs",
            "2",
            "--limit-train",
            "300",
            "--limit-test",
            "100",
            "--eval-size",
            "50",
            "--batch-size",
            "100",
            "--lr",
            "0.05",
            "--schedule",
            "cosine",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    assert "test_robust_acc" in r.output and f"rtk train --resume {out}" in r.output
    assert (out / "checkpoints/net/best.safetensors").exists()
    again = _cli(["train", "--resume", str(out)])  # already complete: nothing retrained
    assert again.exit_code == 0 and "test_robust_acc" in again.output
    clash = _cli(["train", "--resume", str(out), "--epochs", "5"])
    assert clash.exit_code != 0 and "--resume takes every option from the run directory" in clash.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lr", "-1"], "--lr: Input should be greater than 0"),
        (
            ["--trainer", "fast-at", "-o", "steps=3"],
            "trainer option steps: Value error, fast-at takes exactly one FGSM step",
        ),
        (["--schedule", "one-cycle", "--milestones", "1,2"], "milestones apply only to schedule = 'piecewise'"),
        (["--trainer", "pgd-at", "--eps", "2"], "out of range for Linf"),
        (["-o", "eps"], "expected KEY=VALUE"),
    ],
)
def test_rtk_train_names_the_flag_in_errors(tmp_path, args, needle):
    r = _cli(["train", "--dry-run", "--out", str(tmp_path / "x"), *args])
    assert r.exit_code != 0 and needle in r.output, r.output
