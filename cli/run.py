"""``rtk run``: run an experiment file (or the built-in quickstart)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import SEED, echo_table, friendly_errors, progress_bars, registry, state


@click.command("run")
@click.argument("experiment", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default runs/<name>-<timestamp>)."
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Continue a run directory, skipping completed stages.",
)
@click.option(
    "--allow-unsafe-pickle",
    is_flag=True,
    help="With --resume: accept a run directory whose experiment turns on unsafe loading (only for files you trust).",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; run nothing.")
@click.option("--device", help="Override the experiment's device: auto, cpu, cuda, cuda:N.")
@click.option("--seed", type=SEED, help="Override the experiment's seed.")
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run on N local processes through torchrun (gloo on CPU, nccl on GPU); see docs/scaling.md.",
)
@click.option(
    "--logger",
    "loggers",
    multiple=True,
    metavar="NAME",
    help="Add a logger (tracker) to this run, e.g. tensorboard, mlflow, wandb; repeatable. See docs/tracking.md.",
)
@friendly_errors
def command(
    experiment: Path | None,
    out: Path | None,
    resume: Path | None,
    allow_unsafe_pickle: bool,
    dry_run: bool,
    device: str | None,
    seed: int | None,
    runs_root: Path,
    nproc: int = 1,
    loggers: tuple[str, ...] = (),
) -> None:
    """Run an EXPERIMENT file (TOML). With no file, run the built-in quickstart."""
    if nproc > 1:
        from .launch import relaunch

        relaunch(click.get_current_context(), nproc)
        return
    import rtk
    from rtk.distributed import is_main
    from rtk.runner import resumed_experiment

    if resume is not None and experiment is not None:
        raise click.UsageError("give either an EXPERIMENT file or --resume DIR, not both")
    if resume is not None:
        exp = resumed_experiment(resume, allow_unsafe_pickle=allow_unsafe_pickle)
    elif experiment is not None:
        exp = rtk.load_experiment(experiment)
    else:
        from rtk.quickstart import quickstart_path

        exp = rtk.load_experiment(quickstart_path())
        if is_main():
            click.echo(f"No experiment given: running the built-in quickstart ({quickstart_path().name}).", err=True)
    updates: dict[str, object] = {}
    if device:
        updates["device"] = device
    if seed is not None:
        updates["seed"] = seed
    if loggers:  # added to the experiment's own; one already declared keeps its options
        declared = {lg.name for lg in exp.loggers}
        updates["loggers"] = [lg.model_dump() for lg in exp.loggers] + [
            {"name": n, "options": {}} for n in dict.fromkeys(loggers) if n not in declared
        ]
    if updates:
        from rtk.config import with_overrides

        exp = with_overrides(exp, updates)
    planned = rtk.plan(exp, registry())
    if dry_run:
        if not is_main():
            return
        click.echo(planned.describe())
        click.echo("plan is valid; nothing was run (--dry-run).")
        return
    # one line per stage start and end on stderr, also when the output goes to a log file
    # (progress bars show only on a terminal); -q silences them
    runner_log = logging.getLogger("rtk.runner")
    level = runner_log.level
    if is_main() and not state().quiet and runner_log.getEffectiveLevel() > logging.INFO:
        runner_log.setLevel(logging.INFO)
    with progress_bars(quiet=True if not is_main() else None):  # under torchrun, rank 0 shows progress
        try:
            result = rtk.execute(planned, out=out, resume=resume, runs_root=runs_root)
        except rtk.StageError as exc:
            raise click.ClickException(
                f"{exc}\nEarlier stages' results are kept; continue with --resume after fixing it."
            ) from None
        finally:
            runner_log.setLevel(level)
    if not is_main():
        return  # under torchrun only rank 0 prints
    for key, df in result.tables.items():
        if len(df) <= 30:
            click.echo(f"\n== {key}")
            echo_table(df)
    click.echo(f"\nrun directory: {result.path}\nreport: {result.report}")
