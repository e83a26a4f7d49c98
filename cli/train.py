"""``rtk train``: train one model with a registered trainer, without writing an experiment file.

It builds a one-stage experiment (dataset, model, a ``train`` stage) and runs it through
the runner, so the run directory, checkpoints (last, best, epoch-N), the robust-overfitting
table and figure, and ``--resume`` behave exactly as in ``rtk run``. Every option of the
training loop is a flag here (generated from :class:`rtk.training.LoopConfig`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .common import (
    echo_table,
    execute_or_describe,
    friendly_errors,
    given,
    key_value_option,
    key_values,
    registry,
    request_flags,
    run_directory_options,
)

_LOOP_SKIP = ("amp",)  # handled by the explicit --amp/--no-amp below


def _loop_options(fn):
    """One flag per LoopConfig field: ``--eval-size 500``, ``--restore-best/--no-restore-best``."""
    from rtk.training import LoopConfig

    return request_flags(LoopConfig, skip=_LOOP_SKIP)(fn)


def _cli_message(text: str, model: str) -> str:
    """Name command-line flags instead of experiment keys in error messages."""
    text = text.replace("invalid experiment <rtk train>", "invalid options")
    text = re.sub(r"stages\[0\]\.trainer\.", "trainer option ", text)
    text = re.sub(r"stages\[0\]\.([a-z_]+)", lambda m: "--" + m.group(1).replace("_", "-"), text)
    text = text.replace("stages[0]", "options")
    text = text.replace(f"models.{model}.", "model option ").replace("dataset.", "dataset option ")
    return text


@click.command("train")
@click.option("--dataset", default="digits", show_default=True, help="A registered dataset.")
@key_value_option("-d", "--data-option", help="A dataset option (repeatable).")
@click.option("--limit-train", type=int, help="Train on a fixed subset of this many examples.")
@click.option("--limit-test", type=int, help="Evaluate on a fixed subset of this many test examples.")
@click.option("--arch", default="cnn-small", show_default=True, help="A registered architecture.")
@key_value_option("-m", "--model-option", help="An architecture option (repeatable).")
@click.option("--name", default="net", show_default=True, help="Name of the model in the run directory.")
@click.option(
    "--init",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Start from this checkpoint (NAME of NAME.safetensors + NAME.json), e.g. to fine-tune.",
)
@click.option("--trainer", default="standard", show_default=True, help="standard, pgd-at, trades, mart, fast-at, ...")
@key_value_option(
    "-o",
    "--trainer-option",
    help="A trainer option (repeatable), e.g. -o steps=7 -o beta=6.",
)
@click.option("--eps", help="The trainer's eps, e.g. 8/255 (same as -o eps=...).")
@click.option("--params", help="Comma-separated glob patterns of parameter names to train (others frozen).")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA.")
@run_directory_options(
    out="runs/<name>-<time>",
    resume="Continue an interrupted run directory from its last completed epoch (takes its options from there).",
    skips="train",
)
@_loop_options
@friendly_errors
def command(**kw: Any) -> None:
    """Train a model with a registered trainer and print its per-epoch history.

    \b
    Examples:
      rtk train --trainer pgd-at --eps 0.1 -o steps=7 --epochs 10 --out runs/pgd
      rtk train --trainer trades --eps 8/255 -o beta=6 --schedule piecewise --epochs 100
      rtk train --resume runs/pgd
    """
    import rtk
    from rtk.execution import resumed_experiment

    ctx = click.get_current_context()
    resume: Path | None = kw.pop("resume")
    runs_root: Path = kw.pop("runs_root")
    dry_run: bool = kw.pop("dry_run")
    if resume is not None:
        given = [n for n in kw if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"--resume takes every option from the run directory; do not also give {flags}")
        planned = rtk.plan(resumed_experiment(resume), registry())
    else:
        exp = _experiment(kw)
        try:
            planned = rtk.plan(rtk.experiment_from_dict(exp, source="<rtk train>", base_dir=Path.cwd()), registry())
        except rtk.ConfigError as exc:
            raise click.ClickException(_cli_message(str(exc), kw["name"])) from None
    result = execute_or_describe(
        planned,
        dry_run=dry_run,
        failed=lambda exc: (
            f"{exc}\nCheckpoints of the last good epoch are kept; continue with "
            "rtk train --resume <run directory> after fixing the cause."
        ),
        out=kw.get("out") if resume is None else None,
        resume=resume,
        runs_root=runs_root,
    )
    if result is not None:
        _report(result)


def _experiment(kw: dict[str, Any]) -> dict[str, Any]:
    name = kw["name"]
    dataset = {"name": kw["dataset"], **key_values(kw["data_option"], "--data-option")}
    for key in ("limit_train", "limit_test"):
        if kw[key] is not None:
            dataset[key] = kw[key]
    model: dict[str, Any] = {"arch": kw["arch"], **key_values(kw["model_option"], "--model-option")}
    if kw["init"] is not None:
        model["checkpoint"] = str(Path(kw["init"]).resolve())
    trainer = {"name": kw["trainer"], **key_values(kw["trainer_option"], "--trainer-option")}
    if kw["eps"] is not None:
        trainer["eps"] = kw["eps"]
    stage: dict[str, Any] = {"kind": "train", "id": "train", "model": name, "trainer": trainer}
    if kw["params"]:
        stage["params"] = [p.strip() for p in kw["params"].split(",") if p.strip()]
    if kw["amp"] is not None:
        stage["amp"] = kw["amp"]
    from rtk.training import LoopConfig

    stage.update(given(kw, LoopConfig, [k for k in LoopConfig.model_fields if k not in _LOOP_SKIP]))
    label = re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"train-{kw['arch']}-{kw['trainer']}").strip("-")
    return {
        "name": label,
        "seed": kw["seed"],
        "device": kw["device"],
        "dataset": dataset,
        "models": {name: model},
        "stages": [stage],
    }


def _report(result) -> None:
    stage = result.stages.get("train") or next(iter(result.stages.values()))
    history = result.table("history")
    from rtk.training import HISTORY_COLUMNS

    shown = [c for c in HISTORY_COLUMNS if c != "eval_time_s"]  # the evaluation's time: in the log, not the table
    cols = [c for c in shown if c in history and history[c].notna().any()]
    echo_table(history[cols])
    if stage.summary:
        click.echo("\n" + stage.summary)
    for fname, fpath in stage.figures.items():
        click.echo(f"figure {fname}: {fpath}")
    click.echo(f"run directory: {result.path}\nresume with: rtk train --resume {result.path}")
