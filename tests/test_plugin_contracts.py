"""rtk.testing's contract checks: every built-in component meets its contract, and a
deliberately broken plugin fails ``rtk plugins --check`` with a clear message."""

from __future__ import annotations

import types

import pytest
import torch
from click.testing import CliRunner

import rtk
import rtk.testing
from rtk.cli.main import cli

BUILTINS = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


@pytest.mark.parametrize("reg", BUILTINS.registrations(), ids=lambda r: f"{r.spec.KIND}:{r.spec.name}")
def test_every_builtin_meets_its_contract(reg):
    result = rtk.testing.assert_contract(reg)
    assert result.passed


def _broken_plugin() -> types.ModuleType:
    def too_far(model, opts):
        return lambda x, y: (x + 0.5).clamp(0, 1)  # far beyond eps = 8/255

    def wrong_shape(info, opts):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(info.num_classes + 1))

    class Opts(rtk.Options):
        eps: rtk.Eps = 8 / 255

    mod = types.ModuleType("brokenkinds")

    @rtk.hookimpl
    def rtk_attacks():
        yield rtk.AttackSpec(name="too-far", summary="moves x too far", options=Opts, build=too_far)

    @rtk.hookimpl
    def rtk_models():
        yield rtk.ModelSpec(name="wrong-shape", summary="one logit too many", build=wrong_shape)

    mod.rtk_attacks, mod.rtk_models = rtk_attacks, rtk_models
    return mod


def test_check_fails_with_a_clear_message_on_a_broken_plugin():
    pm = rtk.plugin_manager(entry_points=False, extra=[("brokenkinds", _broken_plugin())])
    res = CliRunner().invoke(cli, ["plugins", "--check", "brokenkinds"], obj=pm)
    assert res.exit_code == 1, res.output
    assert "FAIL attack 'too-far' (brokenkinds)" in res.output
    assert "x_adv is 0.5 from x in Linf, beyond eps = 0.03137" in res.output
    assert "FAIL model 'wrong-shape' (brokenkinds)" in res.output
    assert "expected shape [2, 10], got torch.Size([2, 11])" in res.output
    assert "0 of 2 components meet their contracts" in res.output
    with pytest.raises(rtk.testing.ContractError, match="too-far"):
        rtk.testing.assert_contracts("brokenkinds", registry=rtk.Registry.from_plugin_manager(pm))


def test_check_passes_on_builtins_by_plugin_and_component_names():
    pm = rtk.plugin_manager(entry_points=False)
    res = CliRunner().invoke(cli, ["plugins", "--check", "rtk.similarity", "attack:fgsm", "mlp"], obj=pm)
    assert res.exit_code == 0, res.output
    assert "ok   attack 'fgsm' (rtk.attacks)" in res.output and "ok   model 'mlp' (rtk.models)" in res.output
    res = CliRunner().invoke(cli, ["plugins", "--check", "no-such-thing"], obj=pm)
    assert res.exit_code != 0 and "'no-such-thing' is neither a plugin, a distribution nor a component" in res.output
