"""``rtk run``: run an experiment file (or the built-in quickstart)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import (
    SEED,
    echo_table,
    friendly_errors,
    key_value_option,
    key_values,
    progress_bars,
    registry,
    state,
    study_progress,
)


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
    help="Run on N local processes through torchrun (gloo on CPU, nccl on GPU); see docs/scaling.md. "
    "In a study, each point runs on N processes.",
)
@key_value_option(
    "--set",
    "sets",
    help="Override a key of the file: a dotted key path (stages by id, index or kind) and a TOML value, "
    "e.g. --set stages.train.epochs=30 --set models.net.width=4. Repeatable.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray", "slurm"]),
    default="local",
    show_default=True,
    help="Where a study's points run (a file with a [sweep] table); see docs/studies.md.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Study points running at once; the cores are split between them.",
)
@click.option("--address", help="--executor ray: join the Ray cluster at HOST:PORT (default: start Ray locally).")
@click.option("--partition", help="--executor slurm: the Slurm partition.")
@click.option("--time-min", type=click.IntRange(min=1), help="--executor slurm: time limit per point, in minutes.")
@click.option("--gpus-per-point", type=click.IntRange(min=0), help="--executor ray/slurm: GPUs for each point.")
@click.option(
    "--slurm-cluster",
    type=click.Choice(["slurm", "local", "debug"]),
    help="--executor slurm: submitit's 'local' or 'debug' executor runs the same jobs on this machine.",
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
    sets: tuple[str, ...] = (),
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    partition: str | None = None,
    time_min: int | None = None,
    gpus_per_point: int | None = None,
    slurm_cluster: str | None = None,
) -> None:
    """Run an EXPERIMENT file (TOML). With no file, run the built-in quickstart.

    A file with a [sweep] table runs as a study: one run per point, in a study directory
    with the gathered tables and a report (see docs/studies.md).
    """
    from rtk.study import has_sweep, is_study_dir

    if resume is not None and experiment is not None:
        raise click.UsageError("give either an EXPERIMENT file or --resume DIR, not both")
    overrides = key_values(sets, "--set")
    sweeping = any(k.split(".", 1)[0].strip("\"' ") == "sweep" for k in overrides)
    if (resume is not None and is_study_dir(resume)) or (
        experiment is not None and (sweeping or has_sweep(experiment))
    ):
        _study(experiment, resume, overrides, dry_run, device, seed, out, runs_root, nproc, loggers,
               dict(executor=executor, jobs=jobs, address=address, partition=partition, time_min=time_min,
                    gpus=gpus_per_point, cluster=slurm_cluster), allow_unsafe_pickle)  # fmt: skip
        return
    if executor != "local" or jobs != 1:
        raise click.UsageError("--executor and --jobs are for studies (a file with a [sweep] table)")
    if nproc > 1:
        from .launch import relaunch

        relaunch(click.get_current_context(), nproc)
        return
    import rtk
    from rtk.distributed import is_main
    from rtk.execution import resumed_experiment

    if resume is not None:
        if overrides:
            raise click.UsageError("--set changes a new run; a resumed run keeps its configuration")
        exp = resumed_experiment(resume, allow_unsafe_pickle=allow_unsafe_pickle)
    elif experiment is not None:
        exp = rtk.load_experiment(experiment, overrides=overrides)
    else:
        from rtk.quickstart import quickstart_path

        exp = rtk.load_experiment(quickstart_path(), overrides=overrides)
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
    runner_log = logging.getLogger("rtk.execution")
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


def _study(
    experiment: Path | None,
    resume: Path | None,
    overrides: dict,
    dry_run: bool,
    device: str | None,
    seed: int | None,
    out: Path | None,
    runs_root: Path,
    nproc: int,
    loggers: tuple[str, ...],
    executor_options: dict,
    allow_unsafe_pickle: bool = False,
) -> None:
    """``rtk run`` on a file with a [sweep] table, or ``--resume STUDY_DIR``."""
    import rtk.study as st
    from rtk.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise click.UsageError("a study runs each point under torchrun with --nproc N; do not launch the study itself")
    if device:
        overrides["device"] = device
    if seed is not None:
        overrides["seed"] = seed
    if loggers and experiment is not None:  # every point gets them, beside the file's own
        from rtk.config import read_toml

        own = read_toml(experiment).get("loggers", [])
        declared = {lg if isinstance(lg, str) else lg.get("name") for lg in own} if isinstance(own, list) else set()
        overrides["loggers"] = list(own) + [n for n in dict.fromkeys(loggers) if n not in declared]
    if resume is not None:
        if overrides or loggers:
            raise click.UsageError(
                "--set, --device, --seed and --logger change a new study; a resumed study keeps its own"
            )
        study = st.resume_study(resume, registry=registry(), allow_unsafe_pickle=allow_unsafe_pickle)
    else:
        assert experiment is not None
        study = st.load_study(experiment, overrides=overrides or None, registry=registry())
    if dry_run:
        click.echo(study.describe())
        click.echo(f"all {len(study.points)} points are valid; nothing was run (--dry-run).")
        return
    name = executor_options.pop("executor")
    executor = st.make_executor(name, nproc=nproc, **executor_options)
    study_log = logging.getLogger("rtk.study")
    level = study_log.level
    if not state().quiet and study_log.getEffectiveLevel() > logging.INFO:
        study_log.setLevel(logging.INFO)
    try:
        with study_progress(len(study.points)) as callback:
            result = st.run_study(study, executor=executor, out=out, runs_root=runs_root, resume=resume,
                                  progress=callback)  # fmt: skip
    finally:
        study_log.setLevel(level)
    points = result.tables["study/points"]
    echo_table(points.drop(columns=["error"]))
    click.echo(f"\nstudy directory: {result.path}\nreport: {result.report}")
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} of {len(result.points)} points did not complete: {', '.join(result.failed)} "
            f"(see {result.report}); rerun only those with: rtk run --resume {result.path}"
        )
