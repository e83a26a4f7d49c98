"""The ``rtk`` command line. It parses, calls the toolkit, and prints; no logic lives here.

The group takes its plugin manager from ``ctx.obj`` when given (tests pass their own:
``CliRunner().invoke(cli, args, obj=pm)``), else builds one on first use. Built-in verbs
are the modules of ``rtk.cli`` that define ``command``; plugins add more through the
``rtk_commands`` hook.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from typing import Any

import click

_CORE_MODULES = ("main", "common")


class State:
    """What every subcommand receives through ``click.get_current_context().obj``."""

    def __init__(self, pm: Any = None) -> None:
        self._pm = pm
        self._registry = None
        self.quiet = False

    @property
    def pm(self):
        if self._pm is None:
            from rtk.registry import plugin_manager

            self._pm = plugin_manager()
        return self._pm

    @property
    def registry(self):
        if self._registry is None:
            from rtk.registry import Registry

            self._registry = Registry.from_plugin_manager(self.pm)
        return self._registry


def _state(ctx: click.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State(root.obj)
    return root.obj


def _builtin_command_modules() -> list[str]:
    import rtk.cli as pkg

    return sorted(
        m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in _CORE_MODULES and not m.name.startswith("_")
    )


def _third_party_plugins() -> bool:
    """Whether any plugin is installed through the entry-point group ``rtk`` (and not switched off)."""
    if os.environ.get("RTK_NO_ENTRY_POINTS", "") in ("1", "true", "yes"):
        return False
    from importlib.metadata import entry_points

    return bool(entry_points(group="rtk"))


def _builtin_help(module: str) -> str:
    """The help text of built-in verb ``module`` (``short_help`` or ``help`` given to its click
    decorator, else the docstring of its ``command`` function), read from the source."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"rtk.cli.{module}")
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            for dec in node.decorator_list:
                if not (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Attribute)
                    and dec.func.attr in ("command", "group")
                ):
                    continue  # an option's help= is not the command's
                for kw in dec.keywords:
                    if kw.arg in ("short_help", "help") and isinstance(kw.value, ast.Constant):
                        return str(kw.value.value)
            return ast.get_docstring(node) or ""
    return ""


class RtkGroup(click.Group):
    """Adds built-in verbs (modules of rtk.cli) and plugin commands lazily."""

    def _builtins(self) -> dict[str, str]:
        return {m.replace("_", "-"): m for m in _builtin_command_modules()}

    def _plugin_commands(self, ctx: click.Context, *, listing: bool = False) -> dict[str, Any]:
        """Commands that plugins add. For a listing (``rtk --help``) without a plugin manager given,
        only the installed third-party plugins are loaded: built-in verbs are the modules of
        rtk.cli, the built-in plugins add none (a test holds this), and importing them would
        import torch just to print help."""
        state = _state(ctx)
        try:
            if listing and state._pm is None and state._registry is None:
                if not _third_party_plugins():
                    return {}
                from rtk.registry import Registry, plugin_manager

                reg = Registry.from_plugin_manager(plugin_manager(builtins=False))
            else:
                reg = state.registry
        except Exception as exc:  # a broken plugin must never break --help
            logging.getLogger("rtk.cli").warning("plugins unavailable: %s", exc)
            return {}
        return {spec.name: spec for spec in reg.specs("command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx)) | set(self._builtins())
        names |= set(self._plugin_commands(ctx, listing=True))
        return sorted(names)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``rtk --help``. Built-in verbs are described from their modules'
        source (the docstring of ``command``), without importing them: some build their options
        from the toolkit's models at import time, which would import torch just to print help."""
        builtins = self._builtins()
        entries: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            if name in builtins and super().get_command(ctx, name) is None:
                entries.append((name, click.Command(name, help=_builtin_help(builtins[name]))))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                entries.append((name, cmd))
        if not entries:
            return
        limit = formatter.width - 6 - max(len(n) for n, _ in entries)
        rows = [(n, c.get_short_help_str(limit)) for n, c in entries]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        mod = self._builtins().get(name)
        if mod is not None:
            return importlib.import_module(f"rtk.cli.{mod}").command
        spec = self._plugin_commands(ctx).get(name)
        if spec is not None:
            return spec.build()
        return None


@click.group(cls=RtkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rtk", prog_name="rtk")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info messages.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: int) -> None:
    """rtk: train, attack, prune, certify and compare adversarially robust networks."""
    state = _state(ctx)
    state.quiet = quiet
    if "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") not in ("", "0"):
        # a torchrun worker other than rank 0: only rank 0 prints and shows progress; errors,
        # warnings and logs still go to stderr
        state.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this worker process
    level = (
        logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def main() -> None:
    cli(prog_name="rtk")


if __name__ == "__main__":
    # `python -m rtk.cli.main` (torchrun's workers): run the imported module's main, so every
    # verb sees one State class (this file's __main__ copy would be a second one)
    from rtk.cli.main import main as _main

    _main()
