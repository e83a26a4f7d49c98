"""The click CLI, driven through CliRunner with a plugin manager passed in."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner
from experimenthelpers import digits_experiment, experiment_toml

import rtk
from rtk.cli.main import cli

EXP = experiment_toml(
    digits_experiment(
        "cli",
        {"kind": "train", "model": "net", "epochs": 1},
        {"kind": "evaluate", "models": ["net"], "attacks": [{"name": "pgd", "eps": 0.1, "steps": 2}]},
        limits=(200, 60),
        model={"arch": "mlp", "hidden": [16]},
    )
)


@pytest.fixture()
def pm():
    return rtk.plugin_manager(entry_points=False)


def invoke(pm, *args):
    return CliRunner().invoke(cli, list(args), obj=pm, catch_exceptions=False)


def test_help_lists_core_verbs(pm):
    res = invoke(pm, "--help")
    assert res.exit_code == 0
    for verb in ("run", "plugins"):
        assert f"  {verb} " in res.output


def test_help_survives_a_broken_plugin():
    mod = types.ModuleType("broken")

    @rtk.hookimpl
    def rtk_commands():
        raise RuntimeError("kaboom")

    mod.rtk_commands = rtk_commands
    pm = rtk.plugin_manager(entry_points=False, extra=[("broken", mod)])
    res = invoke(pm, "--help")
    assert res.exit_code == 0 and "run" in res.output


def test_plugin_commands_are_added(pm):
    import click

    mod = types.ModuleType("hello")

    @click.command("hello")
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")

    @rtk.hookimpl
    def rtk_commands():
        yield rtk.CommandSpec(name="hello", summary="say hello", build=lambda: hello)

    mod.rtk_commands = rtk_commands
    pm2 = rtk.plugin_manager(entry_points=False, extra=[("hello", mod)])
    assert "hello" in invoke(pm2, "--help").output
    assert invoke(pm2, "hello").output.strip() == "hello from a plugin"


def test_plugins_lists_components_with_provenance(pm):
    res = invoke(pm, "plugins")
    assert res.exit_code == 0
    assert "attacks:" in res.output and "pgd" in res.output and "[rtk.attacks; rtk 0.1.0]" in res.output
    res = invoke(pm, "plugins", "--kind", "nope")
    assert res.exit_code != 0 and "allowed" in res.output


def test_run_dry_run_and_real_run(pm, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(EXP)
    res = invoke(pm, "run", str(exp), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "stage 02-evaluate: evaluate" in res.output and "nothing was run" in res.output
    assert not (tmp_path / "runs").exists()
    out = tmp_path / "out"
    res = invoke(pm, "run", str(exp), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "02-evaluate/accuracy" in res.stdout and (out / "report.md").exists()
    # one line per stage start and end on stderr, also without a terminal
    assert "stage 1/2 01-train (train) started" in res.stderr
    assert "stage 2/2 02-evaluate completed in" in res.stderr


def test_run_quiet_prints_no_stage_lines(pm, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(EXP.split('[[stages]]\nkind = "evaluate"')[0])
    res = invoke(pm, "--quiet", "run", str(exp), "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "01-train/history" in res.stdout
    assert "stage 1/1" not in res.stderr and "started" not in res.output


def test_bad_experiment_exits_nonzero_with_file_and_key(pm, tmp_path):
    exp = tmp_path / "bad.toml"
    exp.write_text(EXP.replace("epochs = 1", "epochs = 'many'"))
    res = invoke(pm, "run", str(exp))
    assert res.exit_code == 1
    assert str(exp) in res.output and "stages[0].epochs" in res.output
    assert "Traceback" not in res.output


def test_missing_experiment_file(pm, tmp_path):
    res = invoke(pm, "run", str(tmp_path / "none.toml"))
    assert res.exit_code == 1 and "file not found" in res.output


def test_quickstart_plan_is_valid(pm):
    res = invoke(pm, "run", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "quickstart" in res.output


@pytest.mark.parametrize(
    "args,module,plugin,options",
    [
        (["evaluate"], "rtk.cli.evaluate", "rtk.plugins.evaluation", "EvaluateOptions"),
        (["zoo", "compare"], "rtk.cli.zoo", "rtk.plugins.zoo", "ZooStageOptions"),
    ],
)
def test_evaluate_and_zoo_flags_come_from_the_stage_options(args, module, plugin, options):
    """Each generated flag exists, shows the options' description and (unless the command keeps
    its own, like zoo's --limit 200) the options' default; a flag not given leaves the default
    to the options, a flag given reaches them."""
    import importlib

    from rtk.cli.common import given

    mod = importlib.import_module(module)
    opts = getattr(importlib.import_module(plugin), options)
    res = CliRunner().invoke(cli, [*args, "--help"], terminal_width=400)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in mod._FLAGS:
        f = opts.model_fields[name]
        assert "--" + name.replace("_", "-") in text
        assert (f.description or "") in text
        if name != "limit" or args[0] == "evaluate":
            assert f"[default: {f.default}]" in text or f.default is None
    kw = {name: None for name in mod._FLAGS}
    assert given(kw, opts, mod._FLAGS) == {}
    kw.update(checks=False, batch_size=7)
    assert given(kw, opts, mod._FLAGS) == {"checks": False, "batch_size": 7}


def test_prune_and_similarity_settings_are_declared_once():
    """The pruning and similarity requests own their defaults: the engine's records take them,
    the stages' options embed them, and the CLI's flags show them."""
    from rtk.pruning import Schedule, ScoreTraining
    from rtk.similarity import SimilarityJob

    schedule = rtk.PruneRequest().schedule()
    assert schedule == Schedule() and schedule.scores == ScoreTraining()
    job, request = SimilarityJob(metric=None, metric_name="m"), rtk.SimilarityRequest()
    for key in ("analyses", "split", "limit", "batch_size", "pooling", "block_threshold", "block_min_size"):
        assert getattr(job, key) == getattr(request, key), key
    reg = rtk.default_registry()
    assert issubclass(reg.get("stage", "prune").options, rtk.PruneRequest)
    assert issubclass(reg.get("stage", "similarity").options, rtk.SimilarityRequest)
    for args, model, fields in (
        (["prune", "run"], rtk.PruneRequest, ("pretrain_epochs", "score_epochs", "finetune_lr", "layers")),
        (["similarity"], rtk.SimilarityRequest, ("split", "limit", "batch_size", "pooling")),
    ):
        res = CliRunner().invoke(cli, [*args, "--help"], terminal_width=400)
        text = " ".join(res.output.split())
        for name in fields:
            assert f"--{name.replace('_', '-')}" in text and model.model_fields[name].description in text, name
