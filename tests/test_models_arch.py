"""The architectures of the papers: structure, sizes, names, options and width mismatches."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import rtk
from rtk.data import DataInfo
from rtk.errors import CheckpointError, ConfigError
from rtk.models import ModelRecipe, block_outputs, load_checkpoint, save_checkpoint

RGB32 = DataInfo("rgb32", 10, 3, 32, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
GRAY28 = DataInfo("gray28", 10, 1, 28, 28, (0.29,), (0.35,))
GRAY8 = DataInfo("gray8", 10, 1, 8, 8, (0.3,), (0.38,))


def build(arch: str, info: DataInfo = RGB32, **options):
    spec = rtk.default_registry().get("model", arch)
    return spec.build(info, rtk.validate_options(spec.options, options, f"models.{arch}"))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_resnet18_is_the_cifar_variant():
    m = build("resnet18")
    names = dict(m.named_modules())
    assert names["stem.conv"].kernel_size == (3, 3) and names["stem.conv"].stride == (1, 1)
    assert count(m, nn.MaxPool2d) == 0 and count(m, nn.Conv2d) == 20  # 17 convs + 3 projection shortcuts
    for key in (
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu1",
        "layer1.0.relu_out",
        "layer2.0.shortcut.conv",
        "layer4.1.relu_out",
        "pool",
        "head",
    ):
        assert key in names, key
    assert n_params(m) == 11_173_962  # the well-known size of CIFAR ResNet-18
    assert block_outputs(m) == [f"layer{s}.{b}.relu_out" for s in range(1, 5) for b in range(2)]
    assert names["head"].in_features == 512
    assert build("resnet18", width=16).head.in_features == 128


def test_wrn_depth_width_and_layer_count():
    m = build("wrn", depth=28, width=4)
    # paper 1 hooks about 80 layers of WRN-28-4: every Conv, BN, ReLU, pooling and Linear
    hooked = sum(
        isinstance(x, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear)) for x in m.modules()
    )
    assert hooked == 80
    assert len(block_outputs(m)) == 12 and block_outputs(m)[0] == "layer1.0.out"
    assert m.head.in_features == 256 and dict(m.named_modules())["layer3.3.conv2"].out_channels == 256
    assert n_params(m) == pytest.approx(5.85e6, rel=0.01)  # WRN-28-4 has 5.85M parameters
    assert n_params(build("wrn")) == pytest.approx(36.5e6, rel=0.01)  # WRN-28-10: 36.5M
    small = build("wrn", info=GRAY8, depth=10, width=1)
    assert len(block_outputs(small)) == 3 and small(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_wrn_options_are_validated():
    spec = rtk.default_registry().get("model", "wrn")
    with pytest.raises(ConfigError, match=r"models\.w\.depth: Value error, depth must be 6n \+ 4 .* got 27"):
        rtk.validate_options(spec.options, {"depth": 27}, "models.w")
    with pytest.raises(ConfigError, match=r"models\.w\.dropout"):
        rtk.validate_options(spec.options, {"dropout": 1.5}, "models.w")
    with pytest.raises(ValueError, match="depth must be 6n"):
        rtk.models.wide_resnet(RGB32, depth=12)


def test_wrn_dropout_acts_only_in_training():
    m = build("wrn", info=GRAY8, depth=10, width=1, dropout=0.5)
    x = torch.rand(4, 1, 8, 8)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.equal(a, m(x))


def test_resnet_small_widths_share_names_and_adapt_to_inputs():
    a, b = build("resnet-small", GRAY28, width=8), build("resnet-small", GRAY28, width=16)
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    assert a.head.in_features == 32 and b.head.in_features == 64
    assert len(block_outputs(build("resnet-small", GRAY8, blocks=3))) == 9  # ResNet-20 layout
    assert build("resnet-small", GRAY28)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch,small,large",
    [("wrn", {"depth": 10, "width": 1}, {"depth": 10, "width": 2}), ("resnet-small", {"width": 8}, {"width": 16})],
)
def test_loading_into_another_width_names_key_and_shapes(tmp_path, arch, small, large):
    model = build(arch, GRAY8, **small)
    path = save_checkpoint(tmp_path / "ck", model, ModelRecipe(arch, small, GRAY8))
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["options"] = large
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    # for example "layer1.0.conv1.weight: checkpoint has shape [16, 16, 3, 3], model expects [32, 16, 3, 3]"
    hit = re.search(
        r"(layer1\.0\.conv1\.weight): checkpoint has shape \[(\d+), \d+, 3, 3\], model expects \[(\d+), \d+, 3, 3\]",
        msg,
    )
    assert hit and int(hit.group(3)) == 2 * int(hit.group(2)), msg


def test_vgg16_structure_and_small_inputs():
    m = build("vgg16")
    assert count(m, nn.Conv2d) == 13 and count(m, nn.BatchNorm2d) == 13 and count(m, nn.ReLU) == 15
    assert count(m, nn.MaxPool2d) == 4
    names = dict(m.named_modules())
    for key in ("block1.conv1", "block1.bn1", "block1.relu1", "block1.pool", "block5.relu3", "classifier.fc1", "head"):
        assert key in names, key
    assert names["classifier.fc1"].in_features == 512 * 2 * 2
    # 8x8 inputs: pools whose input is one pixel become Identity; names and weights keep their shapes
    tiny, big = build("vgg16", GRAY8), build("vgg16", DataInfo("g32", 10, 1, 32, 32, (0.3,), (0.38,)))
    assert count(tiny, nn.MaxPool2d) == 3 and [n for n, _ in tiny.named_modules()] == [
        n for n, _ in big.named_modules()
    ]
    assert {k: v.shape for k, v in tiny.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}
    assert build("vgg16", GRAY28)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    plain = build("vgg16", fc=[], pool_size=1, width=0.25)
    assert count(plain, nn.Linear) == 1 and plain.head.in_features == 128


def test_models_reject_inconsistent_data_info():
    bad = DataInfo("bad", 10, 3, 32, 32, (0.5,), (0.5,))
    for fn in (rtk.models.resnet18, rtk.models.resnet_small, rtk.models.wide_resnet, rtk.models.vgg16):
        with pytest.raises(ValueError, match="3 channels but 1 means and 1 stds"):
            fn(bad)


def test_block_outputs_are_the_residual_sums():
    m = build("resnet-small", GRAY8, blocks=1, width=4).eval()
    outs = {}
    names = block_outputs(m)
    mods = dict(m.named_modules())
    for n in names:
        mods[n].register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o))
    x = torch.rand(2, 1, 8, 8)
    m(x)
    block = mods["layer2.0"]
    inp = mods["layer1.0"](mods["stem"](mods["norm"](x)))
    assert torch.allclose(outs["layer2.0.relu_out"], block(inp))
    assert [tuple(outs[n].shape[1:]) for n in names] == [(4, 8, 8), (8, 4, 4), (16, 2, 2)]
