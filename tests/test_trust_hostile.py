"""Hostile artifacts behind every entry point that reads a checkpoint or a run directory.

Each case plants something an attacker controls (a checkpoint JSON asking for unsafe
unpickling of a pickle payload, a state.json pointing outside, a symlink, tampered tensors)
and drives one entry point: ``rtk certify CKPT``, ``rtk evaluate CKPT``, ``rtk prune info
CKPT``, an experiment's ``checkpoint =``, ``rtk run --resume DIR`` and ``rtk evaluate DIR``.
Every case must end in success or one clear rtk error (exit 1, no traceback), the payload
must never run (it would create a marker directory), and no file outside the run
directory may change.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from trusthelpers import (
    CIFAR_INFO,
    EXPERIMENT,
    edit_spec,
    finished_run,
    hostile_zoo_spec,
    make_checkpoint,
    snapshot,
    write_pickle_payload,
    write_tiny_cifar10,
)

import rtk
from rtk.cli.main import cli

ZOO_REL = Path("cifar10/Linf/Ding2020MMA.pt")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture()
def world(tmp_path, finished, registry, monkeypatch):
    """A payload zoo file, a victim file, a hostile checkpoint, CIFAR-10 data where rtk looks for
    it by default, and a copy of a finished run."""
    w = {"root": tmp_path, "marker": tmp_path / "PWNED"}
    write_tiny_cifar10(tmp_path / "data" / "cifar10")
    monkeypatch.setenv("RTK_DATA", str(tmp_path / "data"))
    w["zoo"] = tmp_path / "evil-models"
    write_pickle_payload(w["zoo"] / ZOO_REL, w["marker"])
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("precious")
    w["ckpt"] = make_checkpoint(tmp_path / "ck" / "hostile", registry)
    # the JSON claims CIFAR-10 data, so a loader that trusted it would build the zoo model and unpickle the payload
    edit_spec(w["ckpt"], arch="robustbench", options=hostile_zoo_spec(w["zoo"]), data=CIFAR_INFO)
    w["run"] = tmp_path / "run"
    shutil.copytree(finished, w["run"])
    return w


def _hostile_ckpt_in_run(w):
    """The run's current checkpoint replaced by the hostile one (same tensors, hostile JSON)."""
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(str(w["ckpt"]) + suffix, w["run"] / "checkpoints" / "m" / f"last{suffix}")


def _state_points_to(w, target: str):
    state = json.loads((w["run"] / "state.json").read_text())
    state["models"]["m"]["checkpoints"]["current"] = target
    (w["run"] / "state.json").write_text(json.dumps(state))


def _symlink_ckpt_outside(w):
    outside = make_checkpoint(w["root"] / "outside" / "ck", rtk.Registry.from_plugin_manager(_pm()))
    for suffix in (".json", ".safetensors"):
        p = w["run"] / "checkpoints" / "m" / f"last{suffix}"
        p.unlink()
        os.symlink(str(outside) + suffix, p)


def _tamper(w):
    st = w["run"] / "checkpoints" / "m" / "last.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-5] ^= 0x01
    st.write_bytes(bytes(blob))


def _plant_tmp_links(w):
    victim = w["root"] / "outside" / "victim.txt"
    for name in ("state.json.tmp", "report.md.tmp", "config.json.tmp", "environment.json.tmp"):
        os.symlink(victim, w["run"] / name)
    (w["run"] / "report.md").unlink()
    os.symlink(victim, w["run"] / "report.md")


def _records_outside(w):
    """The evaluate stage's records folder replaced by a link to a folder outside the run."""
    records = w["run"] / "artifacts" / "02-evaluate" / "records"
    shutil.rmtree(records)
    os.symlink(w["root"] / "outside", records)
    state = json.loads((w["run"] / "state.json").read_text())
    state["stages"]["02-evaluate"]["status"] = "failed"  # so that resuming evaluates (and would write records)
    (w["run"] / "state.json").write_text(json.dumps(state))


def _unsafe_experiment_in_run(w):
    """The run's experiment.toml on CIFAR-10 data with a zoo model that allows unsafe unpickling."""
    toml = w["run"] / "experiment.toml"
    cifar = w["root"] / "data" / "cifar10"
    text = toml.read_text().replace(
        'name = "digits"\nlimit_train = 60\nlimit_test = 30', f'name = "cifar10"\nroot = "{cifar}"'
    )
    assert "cifar10" in text
    text += '\n[models.z]\narch = "robustbench:cifar10/Linf/Ding2020MMA"\nallow_unsafe_pickle = true\n'
    toml.write_text(text + f'model_dir = "{w["zoo"]}"\n')


def _experiment_with_checkpoint(w, arch: str) -> Path:
    exp = w["root"] / "exp.toml"
    exp.write_text(EXPERIMENT.replace('arch = "mlp"\nhidden = [8]', f'arch = "{arch}"\ncheckpoint = "{w["ckpt"]}"'))
    return exp


def _pm():
    return rtk.plugin_manager(entry_points=False)


def _resume(w):
    return ["run", "--resume", w["run"]]


def _evaluate_dir(w):
    return ["evaluate", w["run"], "--limit", "4"]


def _after(setup, command):
    """A case that first plants something with ``setup(w)``, then runs ``command(w)``."""
    return lambda w: (setup(w), command(w))[1]


# (kind, entry point, setup(w) -> CLI arguments)
CASES = {
    "pickle/certify-ckpt": lambda w: ["certify", w["ckpt"], "--limit", "4"],
    "pickle/evaluate-ckpt": lambda w: ["evaluate", w["ckpt"], "--limit", "4", "--out", w["run"].parent / "ev"],
    "pickle/prune-info-ckpt": lambda w: ["prune", "info", w["ckpt"]],
    "pickle/certify-ckpt-zoo-folder-without-unsafe": _after(
        lambda w: edit_spec(w["ckpt"], options=hostile_zoo_spec(w["zoo"], unsafe=False)),
        lambda w: ["certify", w["ckpt"], "--limit", "4"],
    ),
    "pickle/experiment-checkpoint-declared-mlp": lambda w: ["run", _experiment_with_checkpoint(w, "mlp"), "--dry-run"],
    "pickle/experiment-checkpoint-declared-zoo": lambda w: [
        "run",
        _experiment_with_checkpoint(w, "robustbench:cifar10/Linf/Ding2020MMA"),
        "--out",
        w["root"] / "r2",
    ],
    "pickle/resume-state-json": _after(_hostile_ckpt_in_run, _resume),
    "pickle/evaluate-run-dir": _after(_hostile_ckpt_in_run, _evaluate_dir),
    "pickle/resume-experiment-toml": _after(_unsafe_experiment_in_run, _resume),
    "traversal/resume-dotdot": _after(lambda w: _state_points_to(w, "../outside/ck"), _resume),
    "traversal/resume-absolute": _after(lambda w: _state_points_to(w, "/etc/passwd"), _resume),
    "traversal/evaluate-dir-dotdot": _after(lambda w: _state_points_to(w, "../outside/ck"), _evaluate_dir),
    "symlink/resume-checkpoint-outside": _after(_symlink_ckpt_outside, _resume),
    "symlink/evaluate-dir-checkpoint-outside": _after(_symlink_ckpt_outside, _evaluate_dir),
    "symlink/resume-planted-tmp-and-report": _after(_plant_tmp_links, _resume),
    "symlink/resume-records-folder-outside": _after(_records_outside, _resume),
    "symlink/evaluate-dir-records-folder-outside": _after(_records_outside, _evaluate_dir),
    "tamper/resume": _after(_tamper, _resume),
    "tamper/evaluate-dir": _after(_tamper, _evaluate_dir),
    "tamper/certify": _after(_tamper, lambda w: ["certify", w["run"] / "checkpoints" / "m" / "last", "--limit", "4"]),
    "tamper/prune-info": _after(_tamper, lambda w: ["prune", "info", w["run"] / "checkpoints" / "m" / "last"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_artifact(world, case):
    args = [str(a) for a in CASES[case](world)]
    run_dir = world["run"]
    before = snapshot(world["root"], skip=run_dir)
    before.pop("PWNED", None)
    res = CliRunner().invoke(cli, args, obj=_pm(), catch_exceptions=False)  # a raw exception fails the test
    after = snapshot(world["root"], skip=run_dir)
    new_outputs = {k for k in set(after) - set(before) if k.split("/")[0] in ("ev", "r2")}  # run dirs of the case
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)} - new_outputs
    print(f"\n[{case}] exit {res.exit_code}: {res.output.strip().splitlines()[-1] if res.output.strip() else ''}")
    assert res.exit_code in (0, 1), res.output
    assert "Traceback" not in res.output
    assert not world["marker"].exists(), f"{case}: the pickle payload ran"
    assert changed == set(), f"{case}: files outside the run directory changed: {sorted(changed)}"
    assert (world["root"] / "outside" / "victim.txt").read_text() == "precious"
    if case.startswith(("pickle/", "traversal/", "symlink/", "tamper/")):
        assert res.exit_code == 1, f"{case}: a hostile artifact was accepted:\n{res.output}"


def test_user_flag_still_allows_unsafe_loading_of_a_zoo_file(tmp_path):
    """The user's own experiment file may allow unsafe loading: then the payload does run.
    (The control case: proves the payload is live, so the cases above test something.)"""
    from rtk.zoo import load_zoo_model

    marker = tmp_path / "PWNED"
    write_pickle_payload(tmp_path / "models" / ZOO_REL, marker)
    with pytest.raises(rtk.RtkError):  # the payload is not a state dict; the load fails after unpickling
        load_zoo_model("cifar10/Linf/Ding2020MMA", model_dir=tmp_path / "models", allow_unsafe_pickle=True)
    assert marker.exists()
