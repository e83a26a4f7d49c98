"""Start-up: `rtk --help` imports neither torch nor pandas nor pydantic; the package face
``rtk`` imports its parts on first use."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

HEAVY = ("torch", "pandas", "pydantic", "numpy")

PROBE = """
import json, sys
from click.testing import CliRunner
from rtk.cli.main import cli
res = CliRunner().invoke(cli, ["--help"])
print(json.dumps({"code": res.exit_code, "output": res.output,
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def test_help_imports_no_heavy_module():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RTK_NO_ENTRY_POINTS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["code"] == 0 and out["heavy"] == [], out["heavy"]
    for verb in ("certify", "evaluate", "plugins", "prune", "reference", "run", "similarity", "train", "zoo"):
        assert f"\n  {verb} " in out["output"], verb


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

    assert set(rtk.__all__) == set(rtk._LAZY)
    for name in rtk.__all__:
        assert getattr(rtk, name) is getattr(importlib.import_module(f"rtk.{rtk._LAZY[name]}"), name)
    assert rtk.evaluation.evaluate is importlib.import_module("rtk.evaluation").evaluate
    try:
        rtk.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("rtk.no_such_thing did not raise")
