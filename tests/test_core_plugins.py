"""The plugin core: manager, registry, entry points, failures, blocking, duplicates."""

from __future__ import annotations

import sys
import types

import pydantic
import pytest
from pluginhelpers import install_plugin

import rtk
from rtk.errors import PluginError, UnknownComponentError
from rtk.hookspecs import HOOK_KINDS
from rtk.records import KINDS


def _attack_plugin(name: str):
    mod = types.ModuleType(f"fake_{name}")

    @rtk.hookimpl
    def rtk_attacks():
        yield rtk.AttackSpec(name=name, summary="test attack", build=lambda model, opts: lambda x, y: x)

    mod.rtk_attacks = rtk_attacks
    return mod


def test_builtins_register_every_kind_the_foundation_promises(registry):
    for kind in ("dataset", "model", "trainer", "attack", "stage"):
        assert registry.names(kind), f"no built-in {kind}"
    assert "digits" in registry.names("dataset")
    assert "standard" in registry.names("trainer")
    assert "pgd" in registry.names("attack")
    assert {"train", "evaluate"} <= set(registry.names("stage"))


def test_every_hook_has_a_record_kind():
    import rtk.hookspecs

    assert set(HOOK_KINDS.values()) == set(KINDS)
    for hook, kind in HOOK_KINDS.items():  # each record names a hook that has a specification
        assert hasattr(getattr(rtk.hookspecs, hook), "rtk_spec"), hook
        assert KINDS[kind].HOOK == hook


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownComponentError) as err:
        registry.get("attack", "pgdd")
    assert "'pgd'" in str(err.value) and "did you mean" in str(err.value)


def test_duplicate_component_names_both_plugins(monkeypatch):
    # outside strict mode the later plugin is skipped with a warning: tests/test_plugin_isolation.py
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    pm = rtk.plugin_manager(entry_points=False, extra=[("first", _attack_plugin("pgd"))])
    with pytest.raises(PluginError) as err:
        rtk.Registry.from_plugin_manager(pm)
    msg = str(err.value)
    assert "'pgd'" in msg and "'first'" in msg and "'rtk.attacks'" in msg


def test_disable_plugins_blocks_by_name(monkeypatch):
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", "rtk.attacks, rtk.unforeseen, extra")
    pm = rtk.plugin_manager(entry_points=False, extra=[("extra", _attack_plugin("noop"))])
    reg = rtk.Registry.from_plugin_manager(pm)
    assert reg.names("attack") == []
    assert "digits" in reg.names("dataset")


def test_wrong_record_type_is_an_error_naming_the_plugin(monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    mod = types.ModuleType("bad")

    @rtk.hookimpl
    def rtk_attacks():
        yield rtk.DatasetSpec(name="x", summary="", load=lambda o: None)

    mod.rtk_attacks = rtk_attacks
    pm = rtk.plugin_manager(builtins=False, entry_points=False, extra=[("bad", mod)])
    with pytest.raises(PluginError, match="'bad'.*AttackSpec"):
        rtk.Registry.from_plugin_manager(pm)


def test_misspelled_hook_is_caught(monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    mod = types.ModuleType("typo")

    @rtk.hookimpl
    def rtk_atacks():
        return []

    mod.rtk_atacks = rtk_atacks
    with pytest.raises(PluginError, match="rtk_atacks"):
        rtk.plugin_manager(builtins=False, entry_points=False, extra=[("typo", mod)])


@pytest.fixture()
def installed_plugins(tmp_path, monkeypatch):
    """Two plugins installed exactly as pip would: dist-info with entry_points.txt on sys.path."""
    good = """
        import rtk

        @rtk.hookimpl
        def rtk_attacks():
            yield rtk.AttackSpec(name="identity", summary="returns x unchanged",
                                 build=lambda model, opts: (lambda x, y: x), norm="none")
    """
    bad = "raise ImportError('this plugin is broken on purpose')\n"
    for dist, source in (("goodplug", good), ("badplug", bad)):
        install_plugin(tmp_path, monkeypatch, dist=dist, version="1.2.3", entry=dist, module=dist, source=source)
    yield tmp_path
    for m in ("goodplug", "badplug"):
        sys.modules.pop(m, None)


def test_entry_point_plugins_load_and_broken_ones_are_reported(installed_plugins, monkeypatch):
    monkeypatch.delenv("RTK_STRICT_PLUGINS", raising=False)
    pm = rtk.plugin_manager()
    reg = rtk.Registry.from_plugin_manager(pm)
    r = reg.registration("attack", "identity")
    assert (r.plugin, r.distribution, r.version) == ("goodplug", "goodplug", "1.2.3")
    assert [f.name for f in pm.failures] == ["badplug"]
    assert "broken on purpose" in pm.failures[0].error


def test_strict_plugins_makes_a_broken_plugin_fatal(installed_plugins, monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="badplug.*broken on purpose"):
        rtk.plugin_manager()


def test_every_component_record_is_well_formed(registry):
    """Contract over every registered component of every kind."""
    for reg in registry.registrations():
        spec = reg.spec
        assert spec.name and spec.name == spec.name.strip(), spec
        assert spec.summary, f"{spec.KIND} {spec.name} has no summary"
        assert issubclass(spec.options, rtk.Options), f"{spec.KIND} {spec.name}: options must subclass rtk.Options"
        if spec.options.model_config.get("extra") == "allow":
            # a source passes extra keys to the user's callable; its plan-time check binds them to
            # the callable's signature (tests/test_sources.py), so a typo is still an error
            assert getattr(spec, "source", None) and spec.check is not None, spec
            continue
        assert spec.options.model_config.get("extra") == "forbid"
        with pytest.raises(pydantic.ValidationError):
            spec.options.model_validate({"definitely_not_an_option": 1})
        required = [n for n, f in spec.options.model_fields.items() if f.is_required()]
        if not required:
            spec.options()  # defaults alone must validate


def test_builtin_plugin_tuple_lists_every_module_of_the_plugins_package():
    """The engine names its built-ins by module name (it never imports rtk.plugins); a new
    module in plugins/ must be added to rtk.registry.BUILTIN_PLUGINS."""
    import pkgutil

    import rtk.plugins
    from rtk.registry import BUILTIN_PLUGINS

    modules = sorted(f"rtk.plugins.{m.name}" for m in pkgutil.iter_modules(rtk.plugins.__path__) if m.name[0] != "_")
    assert sorted(BUILTIN_PLUGINS) == modules


# ---------------------------------------------------------------------------- rtk.Components
class _WidthOptions(rtk.Options):
    width: int = 3


def test_components_declare_records_where_they_are_written_and_yield_them_by_kind(monkeypatch):
    components = rtk.Components()

    def check(opts, planning):
        return ["a problem"]

    @components.register(rtk.StageSpec, "count", check=check)
    def run(ctx, opts):
        """count the parameters
        of every model

        (this paragraph is not part of the summary)"""

    identity = lambda model, o: lambda x, y: x  # noqa: E731
    components.table(rtk.AttackSpec, [("same", rtk.NoOptions, identity, "returns x")], norm="none")
    components.table(
        rtk.TrainerSpec, [("lazy", _WidthOptions, "make", "built by a module imported late")], module="rtk_lazy_target"
    )
    mod = types.ModuleType("declared")
    mod.rtk_stages = components.hookimpl(rtk.StageSpec)
    mod.rtk_attacks = components.hookimpl(rtk.AttackSpec)
    mod.rtk_trainers = components.hookimpl(rtk.TrainerSpec)
    assert mod.rtk_stages.__name__ == "rtk_stages"

    (stage,) = mod.rtk_stages()
    assert (stage.name, stage.summary, stage.run, stage.check) == (
        "count",
        "count the parameters of every model",
        run,
        check,
    )
    assert stage.options is rtk.NoOptions
    (attack,) = mod.rtk_attacks()
    assert (attack.name, attack.summary, attack.build, attack.norm) == ("same", "returns x", identity, "none")

    # listed through the registry like any plugin's records; the trainer's module is not imported to list it
    reg = rtk.Registry.from_plugin_manager(
        rtk.plugin_manager(builtins=False, entry_points=False, extra=[("declared", mod)])
    )
    assert reg.names("stage") == ["count"] and reg.names("attack") == ["same"] and reg.names("trainer") == ["lazy"]
    assert reg.registration("trainer", "lazy").plugin == "declared"
    assert "rtk_lazy_target" not in sys.modules
    target = types.ModuleType("rtk_lazy_target")
    target.make = lambda **kw: ("made", kw)
    monkeypatch.setitem(sys.modules, "rtk_lazy_target", target)
    assert reg.get("trainer", "lazy").build(_WidthOptions(width=5)) == ("made", {"width": 5})


def test_components_refuse_a_record_without_summary_or_a_function_without_its_module():
    components = rtk.Components()
    with pytest.raises(PluginError, match=r"stage 'quiet' has no summary.*docstring"):

        @components.register(rtk.StageSpec, "quiet")
        def run(ctx, opts):
            pass

    with pytest.raises(PluginError, match=r"trainer 'lazy' names the function 'make': give its module="):
        components.table(rtk.TrainerSpec, [("lazy", _WidthOptions, "make", "summary")])
    assert list(components.hookimpl(rtk.StageSpec)()) == [] and list(components.hookimpl(rtk.TrainerSpec)()) == []


def test_a_components_hook_under_the_wrong_hook_name_is_a_malformed_record(monkeypatch):
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    components = rtk.Components()
    components.table(rtk.DatasetSpec, [("x", rtk.NoOptions, lambda o: None, "a dataset")])
    mod = types.ModuleType("misnamed")
    mod.rtk_attacks = components.hookimpl(rtk.DatasetSpec)
    pm = rtk.plugin_manager(builtins=False, entry_points=False, extra=[("misnamed", mod)])
    with pytest.raises(PluginError, match="'misnamed'.*expected AttackSpec records, got DatasetSpec"):
        rtk.Registry.from_plugin_manager(pm)
