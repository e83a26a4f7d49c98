"""Trust boundaries (issue 15): one regression test per numbered item, and the crashes that
became clear errors. Tiny models on digits; no training longer than one epoch on 60 examples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from trusthelpers import EXPERIMENT, digits_info, edit_spec, finished_run, make_checkpoint

import rtk
from rtk.cli.main import cli
from rtk.errors import CheckpointError, ConfigError, DataError, RtkError
from rtk.models import load_checkpoint
from rtk.trust import UnsafePathError, atomic_write, check_name, inside, slug


@pytest.fixture()
def pm():
    return rtk.plugin_manager(entry_points=False)


def invoke(pm, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], obj=pm, catch_exceptions=False)


def _exp(**stage):
    return {
        "name": "t",
        "dataset": {"name": "digits", "limit_train": 60, "limit_test": 30},
        "models": {"m": {"arch": "mlp", "hidden": [8]}},
        "stages": [
            {"kind": "evaluate", "models": ["m"], "attacks": [{"name": "pgd", "steps": 1}], "checks": False, **stage}
        ],
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished run directory (fine-tune 1 epoch + evaluate), copied by the tests that change it."""
    return finished_run(tmp_path_factory.mktemp("trained"))


# ------------------------------------------------------------------ 1: unsafe loading only by the user
def test_1_checkpoint_json_cannot_turn_on_unsafe_pickle(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    edit_spec(stem, arch="robustbench", options={"source": "cifar10/Linf/Ding2020MMA", "allow_unsafe_pickle": True})
    with pytest.raises(CheckpointError, match=r"options\.allow_unsafe_pickle: a checkpoint may not turn on unsafe"):
        load_checkpoint(stem, registry)


def test_1_rebuild_options_ignore_the_checkpoints_zoo_folder():
    from rtk.models.checkpoint import rebuild_options
    from rtk.plugins.zoo import RobustBenchOptions

    opts = RobustBenchOptions(source="cifar10/Linf/Ding2020MMA", model_dir="/elsewhere", download=True)
    rebuilt = rebuild_options(RobustBenchOptions, opts)
    assert (rebuilt.model_dir, rebuilt.pretrained, rebuilt.download, rebuilt.allow_unsafe_pickle) == (
        None,
        False,
        False,
        False,
    )


def test_1_resumed_run_directory_cannot_turn_on_unsafe_pickle(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text('{"stages": {}, "models": {}}')
    (tmp_path / "run" / "experiment.toml").write_text(
        EXPERIMENT
        + '\n[models.z]\narch = "robustbench:cifar10/Linf/Ding2020MMA"\nallow_unsafe_pickle = true\nmodel_dir = "x"\n'
    )
    from rtk.runner import resumed_experiment

    with pytest.raises(ConfigError, match=r"models\.z\.allow_unsafe_pickle.*--allow-unsafe-pickle"):
        resumed_experiment(tmp_path / "run")
    assert resumed_experiment(tmp_path / "run", allow_unsafe_pickle=True).models["z"].options["allow_unsafe_pickle"]


def test_1_saved_checkpoints_never_record_unsafe_loading(tmp_path, registry):
    from rtk.models import ModelRecipe, save_checkpoint

    info = digits_info(registry)
    model = registry.get("model", "mlp").build(info, registry.get("model", "mlp").options(hidden=[4]))
    recipe = ModelRecipe("mlp", {"hidden": [4], "allow_unsafe_pickle": True}, info)
    stem = save_checkpoint(tmp_path / "m", model, recipe)
    assert json.loads(Path(str(stem) + ".json").read_text())["options"]["allow_unsafe_pickle"] is False


# ------------------------------------------------------------------ 2: writes stay in the run directory
@pytest.mark.parametrize("sid", ["../../x", "/tmp/rtk-abs-id", "a/b", "..", "a\nb", ""])
def test_2_stage_ids_follow_the_name_rule(sid):
    with pytest.raises(ConfigError, match=r"stages\[0\]\.id"):
        rtk.experiment_from_dict(_exp(id=sid))


def test_2_created_model_names_follow_the_name_rule():
    exp = _exp()
    exp["stages"] = [{"kind": "fine-tune", "model": "../../y", "source": "m", "epochs": 1}]
    with pytest.raises(ConfigError, match=r"would create a model named '\.\./\.\./y'"):
        rtk.plan(rtk.experiment_from_dict(exp))


def test_2_run_dir_refuses_paths_that_leave_it(tmp_path):
    rd = rtk.rundir.RunDir.create("x", out=tmp_path / "run")
    for bad in ("../x", "/abs", "a/b", "x\n"):
        with pytest.raises(UnsafePathError):
            rd.checkpoint_path("m", bad)
        with pytest.raises(UnsafePathError):
            rd.table_path(bad, "t")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "run" / "tables")
    with pytest.raises(UnsafePathError, match="outside"):
        rd.write_table("s", "t", __import__("pandas").DataFrame({"a": [1]}))
    assert not any((tmp_path / "outside").iterdir())


def test_2_name_rule_and_inside():
    assert check_name("robust-1.x_y", "n") == "robust-1.x_y"
    for bad in ("", "-a", "a..b", "a b", "x" * 129, 5, None):
        with pytest.raises(UnsafePathError):
            check_name(bad, "n")
    with pytest.raises(UnsafePathError):
        inside("/tmp/a", "../b")
    # file names made from text (sweep point ids, figure names) keep only the rule's characters
    assert slug("/lr: 0.1 (x)") == "lr_0.1_x" and check_name(slug("/lr: 0.1 (x)"), "n")
    assert slug("width=4-seed=1", keep="=") == "width=4-seed=1" and slug("width=4") == "width_4"
    assert slug("///") == ""


# ------------------------------------------------------------------ 3: planted symlinks
def test_3_resume_refuses_symlinks_that_leave_the_run_directory(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, run / "state.json.tmp")
    with pytest.raises(UnsafePathError, match=r"state\.json\.tmp is a symlink to .*victim\.txt, outside the run"):
        rtk.execute(rtk.plan(rtk.runner.resumed_experiment(run)), resume=run)
    assert victim.read_text() == "precious"


def test_3_run_dir_writes_never_follow_planted_symlinks(tmp_path):
    rd = rtk.rundir.RunDir.create("x", out=tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("state.json.tmp", "report.md.tmp", "report.md", "config.json"):
        os.symlink(victim, rd.path / name)
    rd.write_json("state.json", {"stages": {}})
    rd.write_text("report.md", "# Report")
    rd.write_json("config.json", {})
    assert victim.read_text() == "precious"
    assert not (rd.path / "report.md").is_symlink() and (rd.path / "report.md").read_text() == "# Report"


def test_3_atomic_write_creates_its_temporary_file_exclusively(tmp_path, monkeypatch):
    import rtk.trust as trust

    target = tmp_path / "f.txt"
    monkeypatch.setattr(trust.secrets, "token_hex", lambda n: "fixed")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".f.txt.fixed.tmp")
    with pytest.raises(UnsafePathError, match="already exists"):
        atomic_write(target, "x")
    assert not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------ 4: integrity
def test_4_flipped_bytes_in_the_tensors_are_detected(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    st = Path(str(stem) + ".safetensors")
    blob = bytearray(st.read_bytes())
    blob[-3] ^= 0x40
    st.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=rf"{st.name}: the weights do not match the checksum"):
        load_checkpoint(stem, registry)


def test_4_checkpoint_without_checksum_is_refused(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    edit_spec(stem, sha256=None)
    with pytest.raises(CheckpointError, match=r"sha256: missing"):
        load_checkpoint(stem, registry)


def test_4_checkpoint_symlink_leaving_the_run_directory_is_refused(tmp_path, trained_run, registry):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    outside = make_checkpoint(tmp_path / "outside" / "evil", registry)
    for suffix in (".json", ".safetensors"):
        p = run / "checkpoints" / "m" / f"last{suffix}"
        p.unlink()
        os.symlink(str(outside) + suffix, p)
    with pytest.raises(UnsafePathError, match="outside"):
        rtk.execute(rtk.plan(rtk.runner.resumed_experiment(run)), resume=run)


def test_4_shape_transform_cannot_set_arbitrary_attributes_or_allocate(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    evil: dict = {"kind": "pruning.shapes"}
    first = next(n for n, m in _mlp_modules(registry) if isinstance(m, torch.nn.Linear))
    evil["modules"] = {first: {"type": "Linear", "attrs": {"forward": 1}, "tensors": {}}}
    edit_spec(stem, extra={"transforms": [evil]})
    with pytest.raises(CheckpointError, match="attribute 'forward'"):
        load_checkpoint(stem, registry)
    evil["modules"] = {first: {"type": "Linear", "attrs": {}, "tensors": {"weight": [2**20, 2**20]}}}
    edit_spec(stem, extra={"transforms": [evil]})
    with pytest.raises(CheckpointError, match="more than"):
        load_checkpoint(stem, registry)


def _mlp_modules(registry):
    spec = registry.get("model", "mlp")
    return list(spec.build(digits_info(registry), spec.options(hidden=[8])).named_modules())


@pytest.mark.parametrize(
    "change,match",
    [
        ({"shapes": {"w": [-1]}}, r"shapes\.w"),
        ({"shapes": {"w": [1] * 9}}, r"shapes\.w"),
        ({"arch": 7}, r"\.arch"),
        ({"options": []}, r"\.options: expected an object"),
        ({"data": {"channels": 10**9}}, r"data\.channels"),
        ({"format": "other"}, "unknown checkpoint format"),
    ],
)
def test_4_checkpoint_schema(tmp_path, registry, change, match):
    stem = make_checkpoint(tmp_path / "m", registry)
    edit_spec(stem, **change)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(stem, registry)


def test_4_deeply_nested_checkpoint_json_is_refused(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    edit_spec(stem, metadata={"a": json.loads("[" * 40 + "]" * 40)})
    with pytest.raises(CheckpointError, match="nested more than"):
        load_checkpoint(stem, registry)


# ------------------------------------------------------------------ 5: the headline eps ran
def test_5_headline_eps_must_be_an_eps_that_ran():
    with pytest.raises(ConfigError, match=r"headline_eps: 0\.5 is not an eps at which a Linf attack runs"):
        rtk.plan(rtk.experiment_from_dict(_exp(eps=[0.02], headline_eps=0.5)))
    rtk.plan(rtk.experiment_from_dict(_exp(eps=[0.02, 0.5], headline_eps=0.5)))


def test_5_no_row_for_a_budget_at_which_nothing_ran(registry):
    from rtk.evaluation import make_units, threats

    pgd = registry.get("attack", "pgd")
    units = make_units([(pgd, pgd.options(), "pgd")], {"Linf": [0.02], "L2": [0.5]})
    assert threats(units, {"Linf": [0.02], "L2": [0.5]}) == [("Linf", 0.02)]


# ------------------------------------------------------------------ 6: state.json paths
def test_6_copied_run_directory_resumes_its_own_model(tmp_path, trained_run):
    state = json.loads((trained_run / "state.json").read_text())
    assert state["models"]["m"]["checkpoints"]["current"] == "checkpoints/m/last"
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    stem = copy / "checkpoints" / "m" / "last"
    module, _, _ = load_checkpoint(stem)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    from rtk.models import save_checkpoint

    spec = json.loads(Path(str(stem) + ".json").read_text())
    save_checkpoint(stem, module, rtk.models.ModelRecipe.from_dict(spec))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # another working directory than the one the run was made in
    try:
        res = rtk.execute(rtk.plan(rtk.runner.resumed_experiment("copy")), resume="copy")
    finally:
        os.chdir(cwd)
    from rtk.runner import saved_checkpoints

    paths = saved_checkpoints(
        rtk.rundir.RunDir(copy), "m", json.loads((copy / "state.json").read_text())["models"]["m"]
    )
    assert paths["current"] == copy / "checkpoints" / "m" / "last"
    assert res.path == Path("copy")


# ------------------------------------------------------------------ 7: declared arch vs checkpoint
def test_7_declared_arch_must_match_the_checkpoint(tmp_path, registry):
    stem = make_checkpoint(tmp_path / "c", registry, arch="cnn-small")
    exp = _exp()
    exp["models"] = {"m": {"arch": "mlp", "checkpoint": str(stem)}}
    with pytest.raises(ConfigError, match=r"arch = 'mlp' is declared but the checkpoint .* holds a 'cnn-small'"):
        rtk.plan(rtk.experiment_from_dict(exp))


# ------------------------------------------------------------------ 9: silent acceptance
@pytest.mark.parametrize("key,split", [("limit_train", "train"), ("limit_test", "test")])
def test_9_limits_larger_than_the_data(tmp_path, key, split):
    exp = _exp()
    exp["dataset"][key] = 10**6
    with pytest.raises(DataError, match=rf"{key} = 1000000, but the 'digits' {split} split has only"):
        rtk.run(exp, out=tmp_path / "r")


def test_9_compression_beyond_the_model_is_refused(tmp_path):
    exp = _exp()
    exp["models"]["m"]["hidden"] = [8, 8]  # the middle layer (64 weights) is the one pruned
    exp["stages"] = [
        {
            "kind": "prune",
            "model": "m",
            "pruners": ["lwm"],
            "compression": [1000],
            "finetune_epochs": 0,
            "eval_limit": 8,
        }
    ]
    with pytest.raises(RtkError, match=r"compression 1000 keeps fewer than one of the 64 weights"):
        rtk.run(exp, out=tmp_path / "r")


@pytest.mark.parametrize(
    "stage,match",
    [
        ({"eps": []}, r"eps: the list is empty"),
        ({"eps": {"Linf": []}}, r"eps\.Linf: the list is empty"),
        ({"batch_size": True}, r"batch_size: .*got 'true'"),
        ({"id": "a\nb"}, r"stages\[0\]\.id: Value error, invalid name"),
    ],
)
def test_9_clear_errors(stage, match):
    with pytest.raises(ConfigError, match=match):
        rtk.plan(rtk.experiment_from_dict(_exp(**stage)))


def test_9_epochs_true_is_refused():
    exp = _exp()
    exp["stages"] = [{"kind": "train", "model": "m", "epochs": True}]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.epochs: .*got 'true'"):
        rtk.plan(rtk.experiment_from_dict(exp))


# ------------------------------------------------------------------ 10: smoothing noise per example
def test_10_smoothing_radii_do_not_depend_on_batch_sizes(registry, digits):
    from rtk.certify import SmoothingCertifier

    torch.manual_seed(0)
    spec = registry.get("model", "mlp")
    model = spec.build(digits.info, spec.options(hidden=[16])).eval()
    x, y = digits.test.x[:6], digits.test.y[:6]
    ref = [r.radius for r in SmoothingCertifier(0.25, 16, 96, batch_size=96, seed=3).certify(model, x, y)]
    small = SmoothingCertifier(0.25, 16, 96, batch_size=7, seed=3)
    per_example = [small.certify(model, x[i : i + 1], y[i : i + 1])[0].radius for i in range(6)]
    assert per_example == ref
    reordered = small.certify(model, x.flip(0), y.flip(0))
    assert [r.radius for r in reordered] == ref[::-1]
    other = [r.radius for r in SmoothingCertifier(0.25, 16, 96, batch_size=96, seed=4).certify(model, x, y)]
    assert other != ref  # the seed still matters


# ------------------------------------------------------------------ crashes that are clear errors now
def test_non_utf8_and_binary_experiment_files(tmp_path, pm):
    for name, data in (("latin.toml", b'name = "\xe9"\n'), ("bin.toml", bytes(range(256)))):
        (tmp_path / name).write_bytes(data)
        res = invoke(pm, "run", tmp_path / name, "--dry-run")
        assert res.exit_code == 1 and "not UTF-8 text" in res.output


def test_deeply_nested_toml(tmp_path, pm):
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    res = invoke(pm, "run", tmp_path / "deep.toml", "--dry-run")
    assert res.exit_code == 1 and "nested too deeply" in res.output


def test_negative_layer_width():
    exp = _exp()
    exp["models"]["m"]["hidden"] = [-5]
    with pytest.raises(
        ConfigError, match=r"models\.m\.hidden: Value error, a layer width must be between 1 and 2\*\*20, got -5"
    ):
        rtk.plan(rtk.experiment_from_dict(exp))


def test_out_that_cannot_be_created_or_written(tmp_path, pm, monkeypatch):
    (tmp_path / "e.toml").write_text(EXPERIMENT)
    (tmp_path / "file").write_text("x")
    res = invoke(pm, "run", tmp_path / "e.toml", "--out", tmp_path / "file" / "sub")
    assert res.exit_code == 1 and "cannot create the run directory" in res.output

    import rtk.trust as trust

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trust.os, "replace", full)
    res = invoke(pm, "run", tmp_path / "e.toml", "--out", tmp_path / "full")
    assert res.exit_code == 1 and "No space left on device" in res.output


def test_seed_and_device_flags(tmp_path, pm):
    (tmp_path / "e.toml").write_text(EXPERIMENT)
    from rtk.cli.common import SEED
    from rtk.config import MAX_SEED

    assert SEED.max == MAX_SEED
    for verb in (["run", tmp_path / "e.toml", "--dry-run"], ["certify", tmp_path / "x"], ["evaluate", tmp_path / "x"]):
        res = invoke(pm, *verb, "--seed", str(10**30))
        assert res.exit_code == 2 and "Invalid value for '--seed'" in res.output
    with pytest.raises(ConfigError, match=r"seed: Input should be less than or equal to"):
        rtk.experiment_from_dict({**_exp(), "seed": 10**30})
    res = invoke(pm, "run", tmp_path / "e.toml", "--dry-run", "--device", "gpu0")
    assert res.exit_code == 1 and "device: Value error, allowed: auto, cpu, cuda, cuda:N, mps" in res.output


@pytest.mark.parametrize("content", ["[1, 2]", "{}"])
def test_checkpoint_json_without_data_or_a_list(tmp_path, registry, content):
    stem = make_checkpoint(tmp_path / "m", registry)
    if content == "{}":
        edit_spec(stem, data=None)
        match = "no 'data' object"
    else:
        Path(str(stem) + ".json").write_text(content)
        match = "expected a JSON object, got a list"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(stem, registry)


def test_non_string_model_name_through_the_python_api():
    exp = _exp()
    exp["models"] = {5: {"arch": "mlp"}}
    with pytest.raises(ConfigError, match="expected a string"):
        rtk.experiment_from_dict(exp)


def test_three_channel_normalize_on_one_channel_data(tmp_path):
    with pytest.raises(rtk.StageError, match=r"normalize: mean and std give 3 channel\(s\) but the inputs have"):
        rtk.run(_exp(normalize={"mean": [0.5] * 3, "std": [0.2] * 3}), out=tmp_path / "r")


def test_checkpoint_on_the_wrong_dataset(tmp_path, registry):
    from rtk.data import DataInfo

    info = DataInfo("colour", 10, 3, 8, 8, (0.5,) * 3, (0.25,) * 3)
    stem = make_checkpoint(tmp_path / "c", registry, info=info)
    exp = _exp()
    exp["models"] = {"m": {"arch": "mlp", "hidden": [8], "checkpoint": str(stem)}}
    with pytest.raises(CheckpointError, match=r"was built for 'colour' \(3x8x8 images.* has 1x8x8 images"):
        rtk.run(exp, out=tmp_path / "r")


def test_eps_abc_has_no_pydantic_internals(tmp_path, pm, registry):
    stem = make_checkpoint(tmp_path / "m", registry)
    res = invoke(pm, "evaluate", stem, "--eps", "abc", "--dry-run")
    assert res.exit_code == 1
    assert "stages[0].eps[0]: Value error, expected a number or a fraction such as '8/255', got 'abc'" in res.output
    assert "function-before" not in res.output and "dict[" not in res.output


def test_run_directory_without_state_json_is_resumable(tmp_path, monkeypatch):
    exp = _exp()
    from rtk import runner

    def boom(self):
        raise DataError("the data could not be read")

    monkeypatch.setattr(runner._Runner, "build_models", boom)
    with pytest.raises(DataError):
        rtk.run(exp, out=tmp_path / "r")
    monkeypatch.undo()
    assert (tmp_path / "r" / "state.json").exists()
    rtk.execute(rtk.plan(rtk.runner.resumed_experiment(tmp_path / "r")), resume=tmp_path / "r")
    (tmp_path / "r" / "state.json").unlink()  # a directory left by an older rtk: resumable from its config
    rtk.execute(rtk.plan(rtk.runner.resumed_experiment(tmp_path / "r")), resume=tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory .* --out"):
        rtk.runner.resumed_experiment(tmp_path / "empty")
