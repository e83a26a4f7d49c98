"""``rtk launch``: run any rtk command on N local processes through torchrun.

Home of the launcher (:func:`torchrun_command`, :func:`launch`; the engine's
:mod:`rtk.distributed` only runs inside the processes it starts) and of :func:`relaunch`,
which backs ``rtk run --nproc N``: it rebuilds the command line a verb was invoked with
(minus ``--nproc``) and runs it under torchrun.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import click
from click.core import ParameterSource

from .common import friendly_errors

_log = logging.getLogger(__name__)


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


def torchrun_command(
    argv: Sequence[str], nproc: int, *, module: str = "rtk.cli.main", port: int | None = None
) -> list[str]:
    """The command :func:`launch` runs: ``python -m torch.distributed.run`` on this machine.

    Without ``port`` it uses ``--standalone`` (a local c10d rendezvous on a port the OS
    picks while binding, so concurrent launches never collide); with ``port`` the
    rendezvous listens on ``127.0.0.1:port``.
    """
    from rtk.errors import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if port is None:
        cmd += ["--standalone"]
    else:
        cmd += [
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            f"rtk-{os.getpid()}-{port}",
        ]
    cmd += ["--nnodes", "1", "--nproc-per-node", str(nproc), "-m", module, *map(str, argv)]
    return cmd


def launch(
    argv: Sequence[str],
    nproc: int,
    *,
    module: str = "rtk.cli.main",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """Run ``rtk <argv>`` on ``nproc`` local processes through torchrun; return its exit status.

    Refuses to nest: under torchrun already, it raises :class:`ConfigError`. Each worker
    inherits this environment (plus ``env``); unless ``OMP_NUM_THREADS`` is set, each worker
    gets ``cpu_count // nproc`` threads. Interrupting the launcher stops torchrun, which stops its workers.
    """
    from rtk.distributed import launched_by_torchrun
    from rtk.errors import ConfigError

    if launched_by_torchrun():
        raise ConfigError("already running under torchrun (RANK is set); launch the command without --nproc")
    cmd = torchrun_command(argv, nproc, module=module, port=port)
    full_env = {**os.environ, **(env or {})}
    # share this machine's cores between the workers (torchrun alone would give each one thread)
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    _log.info("launching: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=full_env)
    try:
        return proc.wait(timeout=timeout)
    except BaseException:
        proc.terminate()  # torchrun forwards the signal to its workers and waits for them
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def relaunch(ctx: click.Context, nproc: int, *, drop: Iterable[str] = ("nproc",)) -> None:
    """Run the current command again on ``nproc`` local processes under torchrun and wait.

    Raises ``click.ClickException`` when torchrun fails, or a usage error when this process
    already runs under torchrun (no nesting).
    """
    from rtk.distributed import launched_by_torchrun

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
    from rtk.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise click.UsageError("rtk launch cannot run under torchrun; run the command itself")
    argv = _params_argv(ctx.find_root(), ()) + list(args)
    status = launch(argv, nproc, port=port)
    if status != 0:
        raise click.ClickException(f"torchrun exited with status {status}")
