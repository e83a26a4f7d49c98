"""Plugin isolation: a broken third-party plugin is skipped with one warning naming plugin,
distribution and fix (an error under RTK_STRICT_PLUGINS=1); every other plugin and every
command keep working; an error inside a component at run time names the component."""

from __future__ import annotations

import logging
import sys
import types

import click
import pytest
from click.testing import CliRunner
from pluginhelpers import install_plugin

import rtk
from rtk.cli.main import cli
from rtk.errors import ComponentError, PluginError, StageError


def _module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, rtk.hookimpl(fn, specname=hook_name))
    return mod


def _hello_plugin() -> types.ModuleType:
    """A healthy plugin with a command, which must keep working beside a broken one."""

    def rtk_commands():
        yield rtk.CommandSpec(name="hello", summary="says hello", build=lambda: click.Command("hello", callback=_hi))

    return _module("hello", rtk_commands=rtk_commands)


def _hi() -> None:
    click.echo("hi from a healthy plugin")


def _taken_name_plugin() -> types.ModuleType:
    def rtk_attacks():
        yield rtk.AttackSpec(name="own-attack", summary="fine", build=lambda m, o: lambda x, y: x)
        yield rtk.AttackSpec(name="pgd", summary="a second pgd", build=lambda m, o: lambda x, y: x)

    return _module("taken", rtk_attacks=rtk_attacks)


def _misspelled_hook_plugin() -> types.ModuleType:
    def rtk_atacks():
        return []

    return _module("typo", rtk_atacks=rtk_atacks)


def _malformed_record_plugin() -> types.ModuleType:
    def rtk_attacks():
        yield {"name": "not-a-record"}

    return _module("malformed", rtk_attacks=rtk_attacks)


def _raising_hook_plugin() -> types.ModuleType:
    def rtk_attacks():
        raise RuntimeError("hook blew up")
        yield  # pragma: no cover

    return _module("raising", rtk_attacks=rtk_attacks)


CASES = {
    "taken-name": (_taken_name_plugin, "registers the attack 'pgd', which plugin 'rtk.attacks'"),
    "misspelled-hook": (_misspelled_hook_plugin, "'rtk_atacks' (did you mean 'rtk_attacks'?)"),
    "malformed-record": (_malformed_record_plugin, "expected AttackSpec records, got dict"),
    "raising-hook": (_raising_hook_plugin, "raised RuntimeError in its hook rtk_attacks: hook blew up"),
}


def _build(plugin: types.ModuleType) -> tuple[rtk.registry.RtkPluginManager, rtk.Registry]:
    pm = rtk.plugin_manager(entry_points=False, extra=[(plugin.__name__, plugin), ("hello", _hello_plugin())])
    return pm, rtk.Registry.from_plugin_manager(pm)


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_plugin_is_skipped_with_one_warning(case, monkeypatch, caplog):
    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    make, expected = CASES[case]
    plugin = make()
    with caplog.at_level(logging.WARNING, logger="rtk.registry"):
        pm, reg = _build(plugin)
    warnings = [r.getMessage() for r in caplog.records if plugin.__name__ in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"plugin {plugin.__name__!r} (no distribution)" in warnings[0]
    assert expected in warnings[0] and "Fix: " in warnings[0] and "RTK_DISABLE_PLUGINS=" in warnings[0]
    assert [f.name for f in pm.failures] == [plugin.__name__]
    # the rest of rtk and the other plugin keep working
    assert reg.registration("attack", "pgd").plugin == "rtk.attacks"
    assert "own-attack" not in reg.names("attack")  # the skipped plugin is skipped as a whole
    assert "hello" in reg.names("command") and "digits" in reg.names("dataset")
    res = CliRunner().invoke(cli, ["plugins"], obj=pm)
    assert res.exit_code == 0, res.output
    assert "pgd" in res.output and "hello" in res.output
    assert f"skipped plugin {plugin.__name__!r}" in res.output
    res = CliRunner().invoke(cli, ["hello"], obj=pm)
    assert res.exit_code == 0 and "hi from a healthy plugin" in res.output


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_plugin_is_an_error_in_strict_mode(case, monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    make, expected = CASES[case]
    plugin = make()
    with pytest.raises(PluginError) as err:
        _build(plugin)
    assert expected in str(err.value) and "RTK_STRICT_PLUGINS" in str(err.value)


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """A plugin that fails at import and a healthy one with a command, installed as pip would."""
    ok = """
        import click
        import rtk

        @rtk.hookimpl
        def rtk_commands():
            yield rtk.CommandSpec(name="ok-cmd", summary="a healthy command",
                                  build=lambda: click.Command("ok-cmd", callback=lambda: click.echo("ok!")))
    """
    for dist, module, source in (("ok-plug", "okplug", ok), ("broken-plug", "brokenplug", "import not_a_module_x\n")):
        install_plugin(tmp_path, monkeypatch, dist=dist, version="2.0", entry=module, module=module, source=source)
    monkeypatch.delenv("RTK_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    for m in ("okplug", "brokenplug"):
        sys.modules.pop(m, None)


def test_import_error_skips_the_plugin_and_commands_keep_working(installed, monkeypatch):
    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0, res.output
    assert "ok-cmd" in res.output and "[okplug; ok-plug 2.0]" in res.output
    # one warning on stderr (the log), one line in the listing
    warning = (
        "WARNING rtk.registry: plugin 'brokenplug' (distribution broken-plug 2.0) failed to import: ModuleNotFoundError"
    )
    assert res.output.count(warning) == 1, res.output
    assert "skipped plugin 'brokenplug' (broken-plug): failed to import" in res.output
    assert "RTK_DISABLE_PLUGINS=brokenplug" in res.output
    res = CliRunner().invoke(cli, ["ok-cmd"])
    assert res.exit_code == 0 and "ok!" in res.output


def test_import_error_is_fatal_in_strict_mode(installed, monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="'brokenplug' .*failed to import"):
        rtk.plugin_manager()
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code != 0 and "brokenplug" in res.output


def test_disable_plugins_accepts_distribution_names(installed, monkeypatch, caplog):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")  # the broken plugin is never imported
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", "Broken_Plug, ok-plug")
    with caplog.at_level(logging.WARNING, logger="rtk.registry"):
        pm = rtk.plugin_manager()
    assert not pm.has_plugin("brokenplug") and not pm.has_plugin("okplug") and pm.has_plugin("rtk.attacks")
    assert not caplog.records


def test_disable_plugins_warns_on_unknown_names(monkeypatch, caplog):
    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", "rtk.atacks")
    with caplog.at_level(logging.WARNING, logger="rtk.registry"):
        pm = rtk.plugin_manager(entry_points=False)
    assert pm.has_plugin("rtk.attacks")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "RTK_DISABLE_PLUGINS names 'rtk.atacks'" in msg and "did you mean 'rtk.attacks'" in msg
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="rtk.atacks"):
        rtk.plugin_manager(entry_points=False)


# ---------------------------------------------------------------------------- run time
def _failing_attack_plugin() -> types.ModuleType:
    def attack(x, y):
        raise RuntimeError("the attack broke")

    def rtk_attacks():
        yield rtk.AttackSpec(name="boom", summary="always fails", build=lambda model, opts: attack)

    return _module("boomplug", rtk_attacks=rtk_attacks)


@pytest.mark.parametrize("strict", ["0", "1"])
def test_runtime_error_names_component_kind_and_plugin(strict, monkeypatch, tmp_path):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", strict)
    pm = rtk.plugin_manager(entry_points=False, extra=[("boomplug", _failing_attack_plugin())])
    reg = rtk.Registry.from_plugin_manager(pm)
    exp = {
        "name": "boom",
        "dataset": {"name": "digits", "limit_train": 50, "limit_test": 20},
        "models": {"net": {"arch": "mlp", "hidden": [8]}},
        "stages": [{"kind": "evaluate", "models": ["net"], "attacks": ["boom"]}],
    }
    with pytest.raises(StageError) as err:
        rtk.run(exp, registry=reg, out=tmp_path / "run")
    msg = str(err.value)
    assert "attack 'boom' (plugin 'boomplug') raised RuntimeError: the attack broke" in msg
    cause = err.value.cause
    assert isinstance(cause, ComponentError) and isinstance(cause.__cause__, RuntimeError)
    # the built attack keeps the component's attributes
    spec = reg.get("attack", "boom")
    assert spec.build(None, spec.options()).__name__ == "attack"
