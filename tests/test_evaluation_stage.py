"""The ``evaluate`` stage in an experiment, and the ``rtk evaluate`` verb."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import rtk
from rtk.cli.evaluate import parse_attack, parse_eps
from rtk.cli.main import cli

_REG = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


def experiment(checkpoint) -> dict:
    return {
        "name": "eval-stage",
        "dataset": {"name": "digits"},
        "models": {"net": {"arch": "mlp", "hidden": [64], "checkpoint": str(checkpoint)}},
        "stages": [
            {
                "kind": "evaluate",
                "models": ["net"],
                "attacks": [{"name": "pgd", "steps": 5}, "fgsm"],
                "eps": ["4/255", "8/255", "24/255"],
                "limit": 120,
                "per_example": True,
                "check_settings": {"examples": 40, "square_queries": 50},
            },
        ],
    }


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    """An MLP trained for a second on digits, saved as an rtk checkpoint."""
    from rtk.models import ModelRecipe, save_checkpoint
    from rtk.models.small import mlp

    torch.manual_seed(0)
    model = mlp(digits.info, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(digits.train.x), digits.train.y).backward()
        opt.step()
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "net", model, ModelRecipe("mlp", {"hidden": [64]}, digits.info)
    )


@pytest.fixture(scope="module")
def run_dir(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate-stage") / "run"
    return rtk.run(experiment(checkpoint), registry=_REG, out=out)


def test_stage_tables_figure_records_and_report(run_dir):
    acc = run_dir.table("accuracy")
    assert acc.model.unique().tolist() == ["net"]
    assert acc.loc[acc.attack == "clean", "n"].item() == 120
    worst = run_dir.table("worst_case")
    assert len(worst) == 3 and worst.accuracy.is_monotonic_decreasing
    assert (worst.accuracy <= worst.clean_accuracy).all()
    checks = run_dir.table("checks")
    assert set(checks.status) <= {"pass", "fail", "skipped"} and len(checks) == len(rtk.evaluation.CHECKS)
    per = run_dir.table("per_example")
    assert len(per) == 120 * 6 and {"index", "attack", "eps", "status", "delta"} <= set(per.columns)
    d = run_dir.path
    assert (d / "figures" / "01-evaluate" / "accuracy_vs_eps.png").exists()
    assert list((d / "artifacts" / "01-evaluate" / "records").glob("part-*.jsonl"))
    assert (d / "artifacts" / "01-evaluate" / "per_example.csv").exists()
    report = (d / "report.md").read_text()
    assert "worst case over the suite" in report and "Sanity checks:" in report and "accuracy_vs_eps.png" in report
    metrics = run_dir.stages["01-evaluate"].metrics
    assert metrics["net.worst_case_accuracy"] == pytest.approx(worst.accuracy.iloc[-1])


def test_limit_draws_the_same_subset_as_before(run_dir):
    from rtk.data import subset

    per = run_dir.table("per_example")
    bundle = _REG.get("dataset", "digits").load(_REG.get("dataset", "digits").options())
    sub = subset(bundle.test, 120, 0)
    one = per[(per.attack == per.attack.iloc[0]) & (per.eps == per.eps.iloc[0])]
    labels = one.sort_values("index").label.to_numpy()
    assert (labels == sub.y.numpy()).all()


def _plan_problems(stage: dict) -> list[str]:
    exp = rtk.experiment_from_dict(
        {**experiment("x"), "models": {"net": {"arch": "mlp"}}, "stages": [stage]}, source="<t>"
    )
    with pytest.raises(rtk.ConfigError) as err:
        rtk.plan(exp, _REG)
    return err.value.problems


def test_stage_options_are_checked_before_any_work():
    base = {"kind": "evaluate", "models": ["net"]}
    probs = _plan_problems({**base, "attacks": [{"name": "pgd", "eps": 0.1}], "eps": [0.1, 0.2]})
    assert any(p.startswith("stages[0].attacks[0].eps: set both") for p in probs), probs
    probs = _plan_problems({**base, "attacks": ["pgd", "pgd-l2"], "eps": [0.1]})
    assert any("stages[0].eps" in p and "mixes norms" in p for p in probs), probs
    probs = _plan_problems({**base, "models": ["nett"], "attacks": [{"name": "pgd", "stepz": 3}]})
    assert any("stages[0].models[0]: unknown model 'nett'" in p for p in probs)
    assert any("stages[0].attacks[0].stepz: unknown key" in p for p in probs)
    probs = _plan_problems({**base, "check_settings": {"exampels": 3}, "output": "second"})
    assert any("check_settings.exampels" in p for p in probs) and any("stages[0].output" in p for p in probs)
    opts = rtk.validate_options(_REG.get("stage", "evaluate").options, {"models": ["net"]}, "s")
    assert [a.name for a in opts.attacks] == ["autoattack"]  # strong by default


def test_parse_attack_and_eps():
    assert parse_attack("pgd") == "pgd"
    assert parse_attack("pgd:eps=8/255,steps=20,random_start=false") == {
        "name": "pgd",
        "eps": "8/255",
        "steps": 20,
        "random_start": False,
    }
    assert parse_attack('{ name = "apgd-ce", norm = "L2" }') == {"name": "apgd-ce", "norm": "L2"}
    assert parse_eps(("2/255,8/255",)) == ["2/255", "8/255"]
    assert parse_eps(("Linf:8/255", "L2:0.5,1")) == {"Linf": ["8/255"], "L2": ["0.5", "1"]}
    assert parse_eps(()) is None


def _invoke(*args, pm=None):
    return CliRunner().invoke(
        cli, ["--quiet", *map(str, args)], obj=pm or rtk.plugin_manager(entry_points=False), catch_exceptions=False
    )


def test_cli_evaluates_a_checkpoint_and_resumes(checkpoint, tmp_path):
    ckpt = checkpoint
    out = tmp_path / "ev"
    res = _invoke(
        "evaluate", ckpt, "-a", "pgd:steps=3", "-a", "fgsm", "--eps", "4/255,8/255", "--limit", 80, "--out", out
    )
    assert res.exit_code == 0, res.output
    for text in ("== accuracy", "== worst case", "== sanity checks", "PASS", "run directory"):
        assert text in res.output
    acc = pd.read_csv(out / "tables" / "evaluate" / "accuracy.csv")
    assert set(acc.attack) == {"clean", "pgd(steps=3)", "fgsm", "worst_case"}
    res = _invoke("evaluate", "--resume", out)
    assert res.exit_code == 0 and "== worst case" in res.output


def test_cli_evaluates_a_model_of_a_run_directory(run_dir, tmp_path):
    res = _invoke(
        "evaluate", run_dir.path, "--model", "net", "-a", "fgsm", "--limit", 50, "--no-checks", "--out", tmp_path / "ev"
    )
    assert res.exit_code == 0, res.output
    assert "sanity checks" not in res.output
    res = _invoke("evaluate", run_dir.path, "--model", "nope", "-a", "fgsm")
    assert res.exit_code == 1 and "no model 'nope'" in res.output and "net" in res.output


def test_cli_reports_bad_options_by_key(checkpoint):
    res = _invoke("evaluate", checkpoint, "-a", "pgd:stepz=3", "--dry-run")
    assert res.exit_code == 1 and "attacks[0].stepz: unknown key" in res.output and "Traceback" not in res.output
    res = _invoke("evaluate", "does/not/exist")
    assert res.exit_code == 1 and "no such checkpoint" in res.output


@pytest.mark.filterwarnings("ignore::rtk.evaluation.checks.SanityCheckWarning")
def test_cli_strict_fails_on_a_broken_model(tmp_path, digits):
    """A model whose last layer is a softmax: the check fails, --strict makes it an error."""
    from rtk.models import ModelRecipe, save_checkpoint
    from rtk.models.small import mlp

    def build(info, opts):
        return nn.Sequential(mlp(info, (32,)), nn.Softmax(dim=1))

    plugin = types.ModuleType("broken_models")
    plugin.rtk_models = rtk.hookimpl(lambda: [rtk.ModelSpec(name="softmax-mlp", summary="probabilities", build=build)])
    pm = rtk.plugin_manager(entry_points=False, extra=[("broken-models", plugin)])
    model = build(digits.info, None)
    ckpt = save_checkpoint(tmp_path / "soft", model, ModelRecipe("softmax-mlp", {}, digits.info))
    args = ("evaluate", ckpt, "-a", "fgsm", "--limit", 40, "--out")
    res = _invoke(*args, tmp_path / "a", pm=pm)
    assert res.exit_code == 0 and "FAIL" in res.output and "outputs_are_logits" in res.output
    res = _invoke(*args, tmp_path / "b", "--strict", pm=pm)
    assert res.exit_code == 1 and "outputs_are_logits" in res.output and "strict" in res.output
    assert "Traceback" not in res.output


def test_records_from_another_run_are_merged_not_recomputed(run_dir, checkpoint, tmp_path):
    exp = experiment(checkpoint)
    exp["stages"][0]["records_from"] = [str(run_dir.path / "artifacts" / "01-evaluate")]
    again = rtk.run(exp, registry=_REG, out=tmp_path / "again")
    pd.testing.assert_frame_equal(again.table("accuracy"), run_dir.table("accuracy"))
    assert not list((tmp_path / "again" / "artifacts" / "01-evaluate" / "records").glob("part-*.jsonl"))
    exp["stages"][0]["records_from"] = [str(tmp_path / "nowhere")]
    with pytest.raises(rtk.ConfigError, match="records_from.0.: .*nowhere is not a directory"):
        rtk.plan(rtk.experiment_from_dict(exp, source="<t>"), _REG)


def test_norms_have_one_spelling_and_one_reader():
    """rtk.NORMS spells every norm (the evaluation's, the CLI's --eps NORM:..., rtk.evaluate's
    norm); rtk.check_norm is the one reader, naming where and what is allowed."""
    from typing import get_args

    assert rtk.check_norm("L2") == "L2" and get_args(rtk.Norm) == rtk.NORMS == rtk.evaluation.NORMS
    with pytest.raises(rtk.ConfigError, match="stages\\[0\\].eps: 'linf' is not a norm here .*spelled Linf, L2, L1"):
        rtk.check_norm("linf", "stages[0].eps")
    with pytest.raises(rtk.ConfigError, match="allowed: Linf, L2$"):
        rtk.check_norm("L1", "norm", allowed=get_args(rtk.NormLinfL2))
    assert parse_eps(("L1:1,2", "Linf:8/255")) == {"L1": ["1", "2"], "Linf": ["8/255"]}
