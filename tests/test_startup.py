"""Start-up: `rtk --help` imports neither torch nor pandas nor pydantic; `rtk plugins` and
`rtk reference` list every built-in component without torch, pandas or numpy (the records and
their option models need only pydantic); the package face ``rtk`` and the faces of its
subpackages import their parts on first use."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "pydantic", "numpy")

#: Runs the CLI's group in a fresh interpreter, then reports the exit code, the output and which
#: heavy modules the process imported (looked up in sys.modules after the command ran).
PROBE = """
import json, sys
from click.testing import CliRunner
from rtk.cli.main import cli
res = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"code": res.exit_code, "output": res.output, "error": repr(res.exception),
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*args: str, code: str = PROBE) -> dict:
    """Run ``code`` with ``args`` in a fresh interpreter (built-in plugins only, strict: a plugin that
    fails to import is an error, not a silently shorter listing)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RTK_NO_ENTRY_POINTS": "1", "RTK_STRICT_PLUGINS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_help_imports_no_heavy_module():
    out = _probe("--help")
    assert out["code"] == 0 and out["heavy"] == [], out["heavy"]
    for verb in ("certify", "evaluate", "plugins", "prune", "reference", "run", "similarity", "train", "zoo"):
        assert f"\n  {verb} " in out["output"], verb


def test_plugins_lists_every_builtin_without_torch(registry):
    """`rtk plugins --json` lists every built-in component (the same set as a registry built in this
    process, where torch is loaded) and nothing failed, yet the process never imported torch, pandas
    or numpy. pydantic it needs: the records carry their option models."""
    out = _probe("plugins", "--json")
    assert out["code"] == 0, out["error"]
    assert out["heavy"] == ["pydantic"], out["heavy"]
    listed = json.loads(out["output"])
    assert listed["failures"] == []
    expected = {(r.spec.KIND, r.spec.name, r.plugin) for r in registry.registrations()}
    assert {(c["kind"], c["name"], c["plugin"]) for c in listed["components"]} == expected
    text = _probe("plugins")
    assert text["code"] == 0 and text["heavy"] == ["pydantic"], text["heavy"]
    assert "\n  pgd " in text["output"] and "\n  train " in text["output"]


def test_reference_is_complete_without_torch(registry):
    """`rtk reference` renders every option table without torch, pandas or numpy: its output is the
    reference generated in this process (torch loaded) from the same registry."""
    from rtk.reference import experiment_reference

    out = _probe("reference")
    assert out["code"] == 0, out["error"]
    assert out["heavy"] == ["pydantic"], out["heavy"]
    assert out["output"] == experiment_reference(registry)


@pytest.mark.parametrize(
    "face", ["rtk", "rtk.data", "rtk.evaluation", "rtk.models", "rtk.pruning", "rtk.similarity", "rtk.training"]
)
def test_faces_are_lazy(face):
    """Importing a face imports none of its submodules' heavy dependencies; its option models
    (what plugins import at module level) come without torch; every exported name resolves to the
    object of the submodule that defines it."""
    code = f"""
import importlib, json, sys
face = importlib.import_module({face!r})
light = {{"rtk.data": ["DataOptions"], "rtk.evaluation": ["AttackSuiteOptions", "Normalization", "CheckSettings",
         "OUTPUT_PATTERN", "Norm"], "rtk.training": ["LoopConfig"]}}.get({face!r}, [])
for name in light:
    getattr(face, name)
print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} if m in sys.modules and m != "pydantic")}}))
"""
    assert _probe(code=code)["heavy"] == []
    module = importlib.import_module(face)
    for name in module.__all__:
        home = importlib.import_module(f"{face}.{module._face.where[name]}")
        assert getattr(module, name) is getattr(home, name), (face, name)
        # a face exports a subset of its home's public names (where the home declares them: a
        # submodule's __all__ also lists what only its siblings use)
        assert name in getattr(home, "__all__", [name]), (face, name)


def test_help_describes_each_verb_as_its_command_does():
    """The listing reads each verb's help from its source; it must say what the imported command says."""
    from rtk.cli import main

    for name, mod in main.RtkGroup()._builtins().items():
        cmd = importlib.import_module(f"rtk.cli.{mod}").command
        listed = main.click.Command(name, help=main._builtin_help(mod))
        assert listed.get_short_help_str(70) == cmd.get_short_help_str(70), name


def test_builtin_plugins_add_no_commands():
    """`rtk --help` lists plugin commands without loading the built-in plugins, which holds only
    while they add none (built-in verbs are the modules of rtk.cli)."""
    import rtk

    pm = rtk.plugin_manager(entry_points=False)
    impls = [i.plugin_name for i in pm.hook.rtk_commands.get_hookimpls()]
    assert not [n for n in impls if n.startswith("rtk.")], impls


def test_package_face_is_lazy_and_complete():
    import rtk

    assert {"ApiError", "evaluate", "Options", "plugin_manager", "StageContext"} <= set(rtk.__all__)
    for name in rtk.__all__:
        assert getattr(rtk, name) is getattr(importlib.import_module(f"rtk.{rtk._face.where[name]}"), name)
    assert rtk.evaluation.evaluate is importlib.import_module("rtk.evaluation").evaluate
    try:
        rtk.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("rtk.no_such_thing did not raise")


def test_declared_face_reads_its_type_checking_block(tmp_path, monkeypatch):
    """A face declared by its TYPE_CHECKING imports exports exactly those names (in their order),
    sets ``__all__`` and ``dir()``, and imports a submodule on first use; anything but relative
    ``from`` imports without ``as`` in that block is refused at import."""
    pkg = tmp_path / "facepkg"
    pkg.mkdir()
    (pkg / "one.py").write_text("A = 1\nB = 2\n")
    (pkg / "two.py").write_text("C = 3\n")
    (pkg / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nfrom rtk.lazy import LazyFace\n"
        "if TYPE_CHECKING:\n    from .two import C\n    from .one import B, A\n"
        "LazyFace.declared(__name__)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    face = importlib.import_module("facepkg")
    assert face.__all__ == ["C", "B", "A"]
    assert "facepkg.one" not in sys.modules and {"C", "B", "A"} <= set(dir(face))
    assert face.B == 2 and "facepkg.one" in sys.modules
    (pkg / "bad.py").write_text(
        "from typing import TYPE_CHECKING\nfrom rtk.lazy import LazyFace\n"
        "if TYPE_CHECKING:\n    from .one import A as B\nLazyFace.declared(__name__)\n"
    )
    (pkg / "__init__.py").write_text("")
    with pytest.raises(ImportError, match="TYPE_CHECKING block may hold only"):
        importlib.import_module("facepkg.bad")
