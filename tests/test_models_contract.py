"""The contract of every registered architecture (default options).

For 1-channel 8x8 and 3-channel 32x32 data a model builds (or raises a ValueError naming
the minimum size), returns logits of shape [batch, classes], normalizes its [0, 1]
inputs in a first Normalize layer, has the same layer names on every build, calls each
ReLU module exactly once per forward (so hooks see every activation), survives a
checkpoint round trip exactly, and refuses weights of another shape or architecture with
a CheckpointError that names the keys and shapes.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import rtk
from rtk.data import DataInfo
from rtk.errors import CheckpointError, ConfigError
from rtk.models import ModelRecipe, Normalize, load_checkpoint, save_checkpoint

MODELS = rtk.default_registry().names("model")
GRAY8 = DataInfo("gray8", 10, 1, 8, 8, (0.3,), (0.4,), tuple("abcdefghij"))
RGB32 = DataInfo("rgb32", 10, 3, 32, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), tuple("abcdefghij"))


def _default_options(name: str):
    """The default options, or None when the model needs settings without defaults (which
    must then be reported as missing keys, like any bad experiment file)."""
    spec = rtk.default_registry().get("model", name)
    try:
        return rtk.validate_options(spec.options, {}, f"models.{name}")
    except ConfigError as exc:
        assert all("required key is missing" in p for p in exc.problems), exc.problems
        return None


def _build(name: str, info: DataInfo) -> nn.Module:
    spec = rtk.default_registry().get("model", name)
    return spec.build(info, spec.options())


def _relu_calls(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
        for n, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("info", [GRAY8, RGB32], ids=["1x8x8", "3x32x32"])
@pytest.mark.parametrize("name", MODELS)
def test_model_builds_normalizes_and_names_stably(name, info):
    if _default_options(name) is None:
        return
    try:
        model = _build(name, info)
    except ValueError as exc:  # a model that cannot take these inputs says the minimum size
        assert info is GRAY8, f"{name} must build for 3x32x32 inputs: {exc}"
        assert re.search(r"at least \d+x\d+", str(exc)), str(exc)
        return
    first_name, first = next(iter(model.named_children()))
    assert isinstance(first, Normalize), f"{name}: the first layer must be Normalize, got {type(first).__name__}"
    assert torch.allclose(first.mean.flatten(), torch.tensor(info.mean))
    assert torch.allclose(first.std.flatten(), torch.tensor(info.std))
    seen = []
    first.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    model.eval()
    x = torch.rand(2, info.channels, info.height, info.width)
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert relus, f"{name} has no nn.ReLU modules"
    with torch.no_grad():
        calls = _relu_calls(model, x)
        logits = model(x)
    assert logits.shape == (2, info.num_classes) and torch.isfinite(logits).all()
    assert seen and seen[0][0] is x, "the model must receive raw [0, 1] inputs in its Normalize layer"
    assert torch.allclose(seen[0][1], (x - first.mean) / first.std)
    # each ReLU is its own module, called once per forward, so hooks see every activation
    assert calls == {n: 1 for n in relus}
    # stable, readable names: the same on a second build
    if info is RGB32:
        again = _build(name, info)
        assert [n for n, _ in model.named_modules()] == [n for n, _ in again.named_modules()]
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in again.state_dict().items()
        }


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip_and_mismatches(name, tmp_path):
    spec = rtk.default_registry().get("model", name)
    opts = _default_options(name)
    if opts is None:
        return
    torch.manual_seed(0)
    try:  # small inputs keep this quick; the model contract above covers 32x32
        info, model = GRAY8, spec.build(GRAY8, opts)
    except ValueError:
        info, model = RGB32, spec.build(RGB32, opts)
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their initial values
        model(torch.rand(4, info.channels, info.height, info.width))
    model.eval()
    x = torch.rand(2, info.channels, info.height, info.width)
    with torch.no_grad():
        before = model(x)
    path = save_checkpoint(tmp_path / "m", model, ModelRecipe(name, opts.model_dump(), info), metadata={"epoch": 1})
    loaded, recipe, saved = load_checkpoint(path)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    assert recipe.arch == name and recipe.info == info and saved["metadata"] == {"epoch": 1}

    # the same weights into a model for 7 classes: the head's shape differs, named with both shapes
    js = tmp_path / "m.json"
    doc = json.loads(js.read_text())
    doc["data"]["num_classes"] = 7
    doc["data"]["class_names"] = list("abcdefg")
    js.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    hit = re.search(r"(\S+): checkpoint has shape \[10(?:, \d+)*\], model expects \[7(?:, \d+)*\]", msg)
    assert hit and hit.group(1) in model.state_dict(), msg
    assert "m.safetensors does not match the architecture" in msg

    # the same weights into another architecture: the differing keys are named
    other = "mlp" if name != "mlp" else "cnn-small"
    doc["arch"], doc["options"] = other, {}
    doc["data"] = info.to_dict()
    js.write_text(json.dumps(doc))
    with pytest.raises(
        CheckpointError,
        match=r"does not match the architecture: (missing from the checkpoint|not in the "
        r"model|\S+: checkpoint has shape)",
    ):
        load_checkpoint(path)
