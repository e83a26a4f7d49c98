"""``rtk launch``: run any rtk command on N local processes through torchrun.

Also home of :func:`relaunch`, which backs ``rtk run --nproc N``: it rebuilds the command
line a verb was invoked with (minus ``--nproc``) and runs it under torchrun.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

import click
from click.core import ParameterSource

from .common import friendly_errors


def _value_args(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, PurePath):
        return [str(value)]
    return [str(value)]


def _params_argv(ctx: click.Context, drop: Iterable[str]) -> list[str]:
    """The options and arguments of one level of the command chain that the user gave."""
    dropped = set(drop)
    opts: list[str] = []
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in dropped or name not in ctx.params:
            continue
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        value = ctx.params[name]
        if isinstance(param, click.Argument):
            if value is not None:
                args += _value_args(value) if param.nargs != 1 else [str(value)]
            continue
        assert isinstance(param, click.Option)
        flag = param.opts[0]
        if param.count:
            opts += [flag] * int(value or 0)
        elif param.is_flag and not param.is_bool_flag:  # flag_value style
            opts += [flag] if value == param.flag_value else []
        elif param.is_flag:
            if value:
                opts.append(flag)
            elif param.secondary_opts:
                opts.append(param.secondary_opts[0])
        elif value is None:
            continue
        elif param.multiple:
            for v in value:
                opts += [flag, *_value_args(v)]
        else:
            opts += [flag, *_value_args(value)]
    if any(a.startswith("-") for a in args):
        args = ["--", *args]
    return opts + args


def invocation_argv(ctx: click.Context, *, drop: Iterable[str] = ("nproc",)) -> list[str]:
    """The argv (without the program name) that reproduces ``ctx``'s invocation: root
    options, the chain of subcommands, and each level's given options and arguments,
    leaving out the parameters named in ``drop``. Defaults are not repeated."""
    chain: list[click.Context] = []
    c: click.Context | None = ctx
    while c is not None:
        chain.append(c)
        c = c.parent
    chain.reverse()
    argv: list[str] = []
    for i, level in enumerate(chain):
        if i > 0:
            argv.append(level.info_name or level.command.name or "")
        argv += _params_argv(level, drop)
    return argv


def relaunch(ctx: click.Context, nproc: int, *, drop: Iterable[str] = ("nproc",)) -> None:
    """Run the current command again on ``nproc`` local processes under torchrun and wait.

    Raises ``click.ClickException`` when torchrun fails, or a usage error when this process
    already runs under torchrun (no nesting).
    """
    from rtk.distributed import launch, launched_by_torchrun

    if launched_by_torchrun():
        raise click.UsageError("--nproc is for launching locally; this process already runs under torchrun")
    argv = invocation_argv(ctx, drop=drop)
    status = launch(argv, nproc)
    if status != 0:
        raise click.ClickException(f"torchrun exited with status {status} (rtk {' '.join(argv)} on {nproc} processes)")


@click.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    required=True,
    help="Number of local processes (one per GPU, or CPU processes with gloo).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Rendezvous port on 127.0.0.1 (default: a free port chosen by the OS).",
)
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@friendly_errors
def command(ctx: click.Context, nproc: int, port: int | None, args: tuple[str, ...]) -> None:
    """Run `rtk ARGS...` on NPROC local processes with torchrun (gloo on CPU, nccl on GPU).

    Example: rtk launch --nproc 2 run experiment.toml. For several machines, call torchrun
    directly (see docs/scaling.md).
    """
    from rtk.distributed import launch, launched_by_torchrun

    if launched_by_torchrun():
        raise click.UsageError("rtk launch cannot run under torchrun; run the command itself")
    argv = _params_argv(ctx.find_root(), ()) + list(args)
    status = launch(argv, nproc, port=port)
    if status != 0:
        raise click.ClickException(f"torchrun exited with status {status}")
