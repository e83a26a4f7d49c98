"""Loading RobustBench zoo models from a local model directory, safely.

No network: a checkpoint for a small zoo entry (Ding2020MMA, a WRN-28-4 of 5.8M parameters,
23 MB) is written here with random weights in the layout robustbench reads, then loaded.
robustbench's own loader reads the same file, which checks the format.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil

import pytest
import torch

import rtk
from rtk.zoo import (
    CorruptWeightsError,
    HashMismatchError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    ZooError,
    build_architecture,
    load_zoo_model,
    robustbench_available,
    save_zoo_checkpoint,
    sha256_file,
    sidecar_path,
)

pytestmark = pytest.mark.skipif(
    not robustbench_available() and not os.environ.get("CI"),
    reason="robustbench (pip install 'rtk[zoo]') is not installed here",
)

ZID = "cifar10/Linf/Ding2020MMA"
REL = "cifar10/Linf/Ding2020MMA.pt"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The architecture with random weights and a pristine checkpoint file written from it."""
    torch.manual_seed(0)
    model = build_architecture(ZID)
    for m in model.modules():  # non-trivial BN statistics, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = save_zoo_checkpoint(model, tmp_path_factory.mktemp("pristine") / REL)
    return model, path


@pytest.fixture()
def model_dir(tmp_path, source):
    _, pristine = source
    target = tmp_path / "models" / REL
    target.parent.mkdir(parents=True)
    shutil.copyfile(pristine, target)
    return tmp_path / "models"


def _x(n=2):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_checkpoint_is_in_robustbench_format_and_loads_identically(source, model_dir):
    from robustbench.utils import load_model

    model, _ = source
    ours = load_zoo_model(ZID, model_dir=model_dir)
    theirs = load_model("Ding2020MMA", model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    x = _x()
    with torch.no_grad():
        ref = model.eval()(x)
        assert torch.equal(ours(x), ref)
        assert torch.equal(theirs(x), ref)
    assert not ours.training
    files = ours.rtk_zoo["files"]
    assert files[0]["sha256"] == sha256_file(model_dir / REL) and files[0]["checked_against"] is None
    assert files[0]["keys"] == "without 'module.'"  # the DataParallel prefix robustbench checkpoints carry


def test_zoo_models_normalize_their_own_inputs(source):
    # RobustBench's contract equals rtk's ([0, 1] in, logits out), so rtk adds no Normalize layer:
    # Ding2020MMA standardizes each image itself, so an affine change of the input does not matter
    model, _ = source
    x = _x()
    assert not any(type(m).__name__ == "Normalize" for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), model(x * 0.5 + 0.25), atol=1e-4)
        assert not torch.allclose(model(x), model(x.flip(-1)), atol=1e-4)  # ... while content does


def test_sha256_recorded_on_first_load_then_checked(model_dir):
    path = model_dir / REL
    load_zoo_model(ZID, model_dir=model_dir)
    record = json.loads(sidecar_path(path).read_text())
    assert record["sha256"] == sha256_file(path) and record["model"] == ZID
    again = load_zoo_model(ZID, model_dir=model_dir)
    assert again.rtk_zoo["files"][0]["checked_against"] == "recorded"
    # the file changes afterwards (same size, one byte): refused, both hashes named
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError) as exc:
        load_zoo_model(ZID, model_dir=model_dir)
    msg = str(exc.value)
    assert record["sha256"] in msg and sha256_file(path) in msg and str(sidecar_path(path)) in msg
    assert path.exists()  # a mismatch is reported, not silently deleted


def test_sha256_option_and_pinned_table(model_dir, monkeypatch):
    good = sha256_file(model_dir / REL)
    m = load_zoo_model(ZID, model_dir=model_dir, sha256=good.upper())
    assert m.rtk_zoo["files"][0]["checked_against"] == "option"
    with pytest.raises(HashMismatchError, match=f"expected {'0' * 64} .*found {good}"):
        load_zoo_model(ZID, model_dir=model_dir, sha256="0" * 64)
    monkeypatch.setitem(rtk.zoo.PINNED_SHA256, REL, "f" * 64)
    with pytest.raises(HashMismatchError, match="pinned hash table"):
        load_zoo_model(ZID, model_dir=model_dir)


def test_missing_file_names_expected_path_and_origin(tmp_path):
    with pytest.raises(WeightsNotFoundError) as exc:
        load_zoo_model(ZID, model_dir=tmp_path / "nowhere")
    msg = str(exc.value)
    assert str((tmp_path / "nowhere" / REL).resolve()) in msg
    assert "Ding2020MMA" in msg and "Google Drive" in msg and "download = true" in msg


def test_model_dir_from_environment(model_dir, monkeypatch):
    monkeypatch.setenv("RTK_MODEL_DIR", str(model_dir))
    assert load_zoo_model(ZID).rtk_zoo["model_dir"] == str(model_dir)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>", "HTML page"),
        (b"", "empty"),
        (b"\x00\x01 not a checkpoint" * 64, "neither"),
    ],
)
def test_corrupt_or_html_file_is_moved_aside(model_dir, content, what):
    path = model_dir / REL
    path.write_bytes(content)
    with pytest.raises(CorruptWeightsError) as exc:
        load_zoo_model(ZID, model_dir=model_dir)
    assert what in str(exc.value) and "moved aside" in str(exc.value)
    assert not path.exists() and path.with_name(path.name + ".corrupt").read_bytes() == content
    with pytest.raises(WeightsNotFoundError):  # the next attempt does not take it for weights
        load_zoo_model(ZID, model_dir=model_dir)


def test_truncated_checkpoint_is_corrupt_and_not_recorded(model_dir):
    path = model_dir / REL
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match="torch cannot read it"):
        load_zoo_model(ZID, model_dir=model_dir)
    assert not path.exists() and not sidecar_path(path).exists()


def test_checkpoint_needing_pickle_is_refused_unless_opted_in(source, model_dir, caplog):
    model, _ = source
    path = model_dir / REL
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "args": argparse.Namespace(lr=0.1),
            "epoch": 99,
        },
        path,
    )
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_zoo_model(ZID, model_dir=model_dir)
    assert "argparse.Namespace" in str(exc.value) and "allow_unsafe_pickle = true" in str(exc.value)
    assert path.exists()  # refused, but not corrupt: the file stays
    with caplog.at_level(logging.WARNING, logger="rtk.zoo.weights"):
        m = load_zoo_model(ZID, model_dir=model_dir, allow_unsafe_pickle=True)
    assert "arbitrary code" in caplog.text
    assert m.rtk_zoo["files"][0]["unsafe_pickle"] is True
    with torch.no_grad():
        assert torch.equal(m(_x()), model(_x()))


@pytest.mark.parametrize("layout", ["bare", "last", "model-prefix"])
def test_other_robustbench_layouts(source, model_dir, layout):
    model, _ = source
    state = model.state_dict()
    payload = {
        "bare": dict(state),
        "last": {"last": {"state_dict": dict(state)}, "best": {}},
        "model-prefix": {"state_dict": {f"module.model.{k}": v for k, v in state.items()}},
    }[layout]
    torch.save(payload, model_dir / REL)
    m = load_zoo_model(ZID, model_dir=model_dir)
    with torch.no_grad():
        assert torch.equal(m(_x()), model(_x()))


def test_weights_of_another_architecture_are_refused_with_the_differences(model_dir):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    save_zoo_checkpoint(other, model_dir / REL)
    with pytest.raises(rtk.CheckpointError) as exc:
        load_zoo_model(ZID, model_dir=model_dir)
    assert "does not match the architecture" in str(exc.value) and "missing from the checkpoint" in str(exc.value)
    assert not sidecar_path(model_dir / REL).exists()  # no hash is recorded for weights that did not load


def test_missing_normalization_constants_are_tolerated(tmp_path):
    # Hendrycks2020AugMix_WRN (WRN-40-2) defines mu/sigma buffers its published checkpoint lacks
    zid = "cifar10/corruptions/Hendrycks2020AugMix_WRN"
    torch.manual_seed(0)
    arch = build_architecture(zid)
    state = {k: v for k, v in arch.state_dict().items() if k not in ("mu", "sigma")}
    save_zoo_checkpoint(state, tmp_path / "cifar10/corruptions/Hendrycks2020AugMix_WRN.pt")
    m = load_zoo_model(zid, model_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(m(_x()), arch(_x()))


def test_data_mismatch_is_named(model_dir, digits):
    with pytest.raises(ZooError) as exc:
        load_zoo_model(ZID, model_dir=model_dir, info=digits.info)
    msg = str(exc.value)
    assert "10 classes" not in msg  # the class count matches ...
    assert "3 channels (the data has 1)" in msg and "32x32 images (the data has 8x8)" in msg and "'digits'" in msg


def test_download_failures_leave_nothing_behind(tmp_path, source, monkeypatch):
    from robustbench import utils as rb_utils

    target = tmp_path / REL

    def offline(gid, out):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(rb_utils, "download_gdrive_new", offline)
    with pytest.raises(WeightsNotFoundError, match="download failed.*ConnectionError"):
        load_zoo_model(ZID, model_dir=tmp_path, download=True)

    def quota_page(gid, out):
        open(out, "w").write("<html><body>Too many users have viewed or downloaded this file recently</body></html>")

    monkeypatch.setattr(rb_utils, "download_gdrive_new", quota_page)
    with pytest.raises(CorruptWeightsError, match="HTML page"):
        load_zoo_model(ZID, model_dir=tmp_path, download=True)
    assert not target.exists()

    _, pristine = source
    monkeypatch.setattr(rb_utils, "download_gdrive_new", lambda gid, out: shutil.copyfile(pristine, out))
    m = load_zoo_model(ZID, model_dir=tmp_path, download=True)
    assert target.exists() and sidecar_path(target).exists() and m.rtk_zoo["files"][0]["path"] == str(target)


def test_model_plugin_in_an_experiment(model_dir, registry):
    exp = rtk.experiment_from_dict(
        {
            "dataset": "digits",
            "models": {
                "z": {"arch": "robustbench:cifar10/Linf/Ding2020MMA", "model_dir": str(model_dir), "sha256": "abc"},
                "y": {"arch": "robustbench:cifar10/Linf/NoSuchModel"},
            },
            "stages": [{"kind": "evaluate", "models": ["z"]}],
        }
    )
    with pytest.raises(rtk.ConfigError) as exc:
        rtk.plan(exp, registry)
    msg = str(exc.value)
    assert "models.z.sha256" in msg and "64 hex digits" in msg and "models.y.source" in msg
    spec = registry.get("model", "robustbench")
    opts = rtk.validate_options(spec.options, {"source": "cifar10/linf/Ding2020MMA", "model_dir": str(model_dir)}, "m")
    assert opts.source == ZID and opts.allow_unsafe_pickle is False
    from rtk.data import DataInfo

    info = DataInfo("cifar10", 10, 3, 32, 32, (0.5,) * 3, (0.25,) * 3)
    module = spec.build(info, opts)
    assert module.rtk_zoo["id"] == ZID and module(_x(2)).shape == (2, 10)
