"""Experiment files, planning errors, the runner, the run directory, resume."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pandas as pd
import pytest
from experimenthelpers import digits_experiment, experiment_toml

import rtk
from rtk.errors import ConfigError

BASE = experiment_toml(digits_experiment("t", limits=(300, 100), model={"arch": "mlp", "hidden": [32]}, seed=3))
TRAIN = experiment_toml({"stages": [{"kind": "train", "model": "net", "epochs": 2, "lr": 0.1, "batch_size": 64}]})
EVAL = experiment_toml(
    {"stages": [{"kind": "evaluate", "models": ["net"], "attacks": [{"name": "pgd", "eps": "16/255", "steps": 3}]}]}
)


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def plan_errors(tmp_path, registry, text) -> list[str]:
    with pytest.raises(ConfigError) as err:
        rtk.plan(rtk.load_experiment(write(tmp_path, text), registry), registry)
    assert str(tmp_path / "exp.toml") in str(err.value)  # the file is named
    return err.value.problems


def test_valid_plan_describes_every_stage(tmp_path, registry):
    p = rtk.plan(rtk.load_experiment(write(tmp_path, BASE + TRAIN + EVAL)), registry)
    text = p.describe()
    assert "01-train" in text and "02-evaluate" in text and "digits" in text


def test_typo_in_stage_key_names_key_path_and_suggests(tmp_path, registry):
    problems = plan_errors(tmp_path, registry, BASE + TRAIN.replace("epochs = 2", "epohcs = 2"))
    assert any(p.startswith("stages[0].epohcs: unknown key") and "'epochs'" in p for p in problems), problems


def test_bad_component_option_names_nested_path(tmp_path, registry):
    problems = plan_errors(tmp_path, registry, BASE + TRAIN + EVAL.replace('eps = "16/255"', 'epz = "16/255"'))
    assert any(p.startswith("stages[1].attacks[0].epz: unknown key") and "'eps'" in p for p in problems), problems


def test_bad_fraction_and_range(tmp_path, registry):
    problems = plan_errors(tmp_path, registry, BASE + TRAIN + EVAL.replace('"16/255"', '"16/0"'))
    assert any("stages[1].attacks[0].eps" in p and "fraction" in p for p in problems), problems
    problems = plan_errors(tmp_path, registry, BASE + TRAIN.replace("epochs = 2", "epochs = 0"))
    assert any(p.startswith("stages[0].epochs") and "greater than or equal to 1" in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path, registry):
    text = (
        BASE.replace('arch = "mlp"', 'arch = "mlpp"')
        + TRAIN.replace('"net"', '"nett"')
        + EVAL.replace('name = "pgd"', 'name = "pgdd"')
    )
    problems = plan_errors(tmp_path, registry, text)
    joined = "\n".join(problems)
    assert "models.net.arch: unknown model 'mlpp'" in joined and "did you mean 'mlp'" in joined
    assert "stages[0].model: unknown model 'nett'" in joined
    assert "stages[1].attacks[0].name: unknown attack 'pgdd'" in joined


def test_unknown_stage_kind_and_top_level_key(tmp_path, registry):
    problems = plan_errors(tmp_path, registry, "sed = 1\n" + BASE + TRAIN.replace('kind = "train"', 'kind = "trian"'))
    joined = "\n".join(problems)
    assert "sed: unknown key" in joined and "'seed'" in joined
    assert "stages[0].kind: unknown stage 'trian'" in joined and "'train'" in joined


def test_missing_checkpoint_file(tmp_path, registry):
    problems = plan_errors(
        tmp_path, registry, BASE.replace("hidden = [32]", 'hidden = [32]\ncheckpoint = "nope/model"') + TRAIN
    )
    assert any(p.startswith("models.net.checkpoint: file not found") for p in problems), problems


def test_toml_syntax_error_names_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        rtk.load_experiment(write(tmp_path, "name = \n"))


def test_no_stages_is_an_error(tmp_path, registry):
    assert any("no stages" in p for p in plan_errors(tmp_path, registry, BASE))


def test_run_writes_run_directory_and_returns_tables(tmp_path, registry):
    res = rtk.run(write(tmp_path, BASE + TRAIN + EVAL), registry=registry, out=tmp_path / "run")
    d = res.path
    for rel in (
        "experiment.toml",
        "config.json",
        "environment.json",
        "state.json",
        "report.md",
        "tables/01-train/history.csv",
        "tables/01-train/history.parquet",
        "tables/02-evaluate/accuracy.csv",
        "checkpoints/net/last.safetensors",
        "checkpoints/net/last.json",
    ):
        assert (d / rel).exists(), rel
    env = json.loads((d / "environment.json").read_text())
    assert env["seed"] == 3 and env["torch"] and env["rtk"] == "0.1.0" and "rtk.attacks" in env["plugins"]
    acc = res.table("accuracy")
    clean = acc.loc[acc.attack == "clean", "accuracy"].item()
    worst = acc.loc[acc.attack == "worst_case", "accuracy"].item()
    assert 0.5 < clean <= 1.0 and worst <= clean
    pd.testing.assert_frame_equal(acc, pd.read_csv(d / "tables/02-evaluate/accuracy.csv"), check_dtype=False)
    report = (d / "report.md").read_text()
    assert "02-evaluate" in report and "| net |" in report


def test_same_seed_repeats_exactly(tmp_path, registry):
    text = BASE + TRAIN
    a = rtk.run(write(tmp_path, text), registry=registry, out=tmp_path / "a").table("history")
    b = rtk.run(write(tmp_path, text), registry=registry, out=tmp_path / "b").table("history")
    pd.testing.assert_frame_equal(
        a.drop(columns=[c for c in a if "time" in c]), b.drop(columns=[c for c in b if "time" in c])
    )


def test_run_from_python_dict(tmp_path, registry):
    import tomllib

    data = tomllib.loads(BASE + TRAIN)
    res = rtk.run(data, registry=registry, out=tmp_path / "d")
    assert len(res.table("history")) == 2


def _flaky_plugin(calls: dict):
    mod = types.ModuleType("flaky")

    class Opts(rtk.Options):
        fail: bool = False

    def run(ctx, opts):
        calls[ctx.stage_id] = calls.get(ctx.stage_id, 0) + 1
        if calls.get("fail", False):
            raise RuntimeError("disk on fire")
        return rtk.StageResult(tables={"t": pd.DataFrame({"x": [1]})})

    @rtk.hookimpl
    def rtk_stages():
        yield rtk.StageSpec(name="flaky", summary="fails while calls['fail'] is set", options=Opts, run=run)

    mod.rtk_stages = rtk_stages
    return mod


def test_failing_stage_keeps_earlier_results_and_resume_skips_them(tmp_path):
    calls: dict = {"fail": True}
    reg = rtk.Registry.from_plugin_manager(
        rtk.plugin_manager(entry_points=False, extra=[("flaky", _flaky_plugin(calls))])
    )
    text = BASE + TRAIN + '\n[[stages]]\nkind = "flaky"\nid = "boom"\n'
    out = tmp_path / "run"
    with pytest.raises(
        rtk.StageError,
        match="stage 'boom' failed: stage 'flaky' \\(plugin 'flaky'\\) raised RuntimeError: disk on fire",
    ):
        rtk.run(write(tmp_path, text), registry=reg, out=out)
    state = json.loads((out / "state.json").read_text())
    assert state["stages"]["01-train"]["status"] == "completed"
    assert state["stages"]["boom"]["status"] == "failed"
    assert (out / "tables/01-train/history.csv").exists()
    assert "stage `boom` failed" in (out / "report.md").read_text()
    trained = (out / "checkpoints/net/last.safetensors").read_bytes()

    calls["fail"] = False
    from rtk.runner import resumed_experiment

    res = rtk.execute(rtk.plan(resumed_experiment(out), reg), resume=out)
    assert calls["boom"] == 2
    assert (out / "checkpoints/net/last.safetensors").read_bytes() == trained  # training was not redone
    assert set(res.tables) == {"01-train/history", "boom/t"}
    assert json.loads((out / "state.json").read_text())["stages"]["boom"]["status"] == "completed"


def test_out_dir_that_is_not_empty_is_refused(tmp_path, registry):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        rtk.run(write(tmp_path, BASE + TRAIN), registry=registry, out=out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_table_by_bare_name_two_stages_wrote_is_a_clear_error():
    import pandas as pd

    df = pd.DataFrame({"accuracy": [0.5]})
    res = rtk.RunResult(
        Path("run"), {"02-evaluate/accuracy": df, "04-evaluate/accuracy": df, "01-train/history": df}, {}, Path("r")
    )
    assert res.table("history") is df and res.table("04-evaluate/accuracy") is df
    with pytest.raises(rtk.RtkError, match="'accuracy' is written by 2 stages; name one of: 02-evaluate/accuracy"):
        res.table("accuracy")
    with pytest.raises(KeyError, match="no table 'nope'"):
        res.table("nope")


def test_model_reference_is_parsed_in_one_place():
    assert rtk.ModelRef.parse("net@best") == rtk.ModelRef("net", "best")
    assert rtk.ModelRef.parse("net") == rtk.ModelRef("net") and rtk.ModelRef.parse("net").tag is None
    assert str(rtk.ModelRef.parse("net@epoch-3")) == "net@epoch-3" and str(rtk.ModelRef("net")) == "net"
