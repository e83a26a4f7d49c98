"""``rtk prune``: compress a model with the robust pruning pipeline, export masks, inspect.

- ``rtk prune run``: pre-train (optionally) -> prune -> fine-tune with one objective, for
  several pruners and compression targets; prints the compression table. It builds a
  one-stage experiment (a ``prune`` stage) and runs it through the runner, so the run
  directory, checkpoints, tables, figure and report are those of ``rtk run``.
- ``rtk prune export CHECKPOINT OUT``: make masks permanent (a plain dense model again).
- ``rtk prune info CHECKPOINT``: per-layer sparsity and the recorded pruning of a checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from .common import (
    SEED,
    component_option,
    echo_table,
    execute_or_describe,
    friendly_errors,
    given,
    key_value_option,
    key_values,
    parse_component,
    parse_value,
    registry,
    request_flags,
)


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(parse_value(v.strip())) for v in text.split(",") if v.strip()]
    except (TypeError, ValueError):
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=flag) from None


def _cli_message(text: str) -> str:
    """Name command-line flags instead of experiment keys in error messages."""
    text = text.replace("invalid experiment <rtk prune>", "invalid options")
    text = re.sub(r"stages\[0\]\.trainer\.", "trainer option ", text)
    text = re.sub(r"stages\[0\]\.([a-z_]+)", lambda m: "--" + m.group(1).replace("_", "-"), text)
    for key, flag in (
        ("--ratios", "--ratio"),
        ("--pruners", "--pruner"),
        ("--attacks", "--attack"),
        ("--certifiers", "--certifier"),
    ):
        text = text.replace(key, flag)
    return text.replace("stages[0]", "options").replace("models.model.", "model option ")


#: The fields of the pruning request (rtk.PruneRequest) that are flags of ``rtk prune run``,
#: generated from it: their names, defaults and help come from there.
_FLAGS = (
    "pretrain_epochs",
    "score_epochs",
    "finetune_epochs",
    "batch_size",
    "lr",
    "score_lr",
    "finetune_lr",
    "layers",
    "exclude",
)


def _request_options(fn):
    import rtk

    return request_flags(rtk.PruneRequest, _FLAGS)(fn)


@click.group("prune")
def command() -> None:
    """Compress models robustly: pre-train -> prune -> fine-tune with one objective."""


@command.command("run")
@click.option("--dataset", default="digits", show_default=True, help="A registered dataset.")
@key_value_option("-d", "--data-option", help="A dataset option (repeatable).")
@click.option(
    "--arch", default="cnn-small", show_default=True, help="A registered architecture (ignored with --checkpoint)."
)
@key_value_option("-m", "--model-option", help="An architecture option (repeatable).")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Compress this trained model (NAME of NAME.safetensors + NAME.json).",
)
@click.option(
    "--name", default="model", show_default=True, help="Name of the dense model; pruned ones are NAME-METHOD-Kx."
)
@component_option(
    "--pruner",
    "pruners",
    help="A pruner (repeatable), e.g. --pruner hydra --pruner lwm --pruner channel:importance=lamp. "
    "[default: hydra, lwm]",
)
@click.option("--compression", help="Comma-separated compression targets, e.g. 2,5,10,20,100 [default: 10].")
@click.option("--ratio", "ratios", help="Or comma-separated pruning ratios in (0, 1), e.g. 0.5,0.9.")
@click.option(
    "--trainer",
    default="standard",
    show_default=True,
    help="The objective of every phase: standard, pgd-at, trades, ...",
)
@key_value_option(
    "-o",
    "--trainer-option",
    help="A trainer option (repeatable), e.g. -o eps=8/255.",
)
@_request_options
@key_value_option(
    "-l",
    "--loop-option",
    help="A training-loop option for every phase (repeatable), e.g. -l schedule=cosine.",
)
@click.option("--prune-first", is_flag=True, help="Also prune the first layer (kept dense by default).")
@click.option("--prune-last", is_flag=True, help="Also prune the classifier (kept dense by default).")
@component_option(
    "--attack",
    "attacks",
    help="An attack of the evaluation suite (repeatable), e.g. --attack pgd:eps=0.1,steps=20 [default: pgd].",
)
@component_option(
    "--certifier",
    "certifiers",
    help="A certifier for verified accuracy (repeatable), e.g. --certifier ibp:eps=0.1.",
)
@click.option("--eval-limit", type=int, help="Evaluate on this many test examples [default: 1000].")
@click.option("--export", type=click.Choice(["masked", "dense"]), help="Save pruned models with masks or dense.")
@click.option("--no-timing", is_flag=True, help="Skip inference-time measurements of structured pruning.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default runs/<name>-<time>)."
)
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; run nothing.")
@friendly_errors
def run_command(**kw: Any) -> None:
    """Prune a model with several methods and compression targets; print the table.

    \b
    Examples:
      rtk prune run --trainer pgd-at -o eps=0.1 --pretrain-epochs 15 --compression 2,10,20
      rtk prune run --checkpoint runs/x/checkpoints/robust/last --trainer pgd-at -o eps=8/255 \\
          --pruner hydra --pruner channel:importance=robust-taylor --compression 10
    """
    import rtk

    exp = _experiment(kw)
    try:
        planned = rtk.plan(rtk.experiment_from_dict(exp, source="<rtk prune>", base_dir=Path.cwd()), registry())
    except rtk.ConfigError as exc:
        raise click.ClickException(_cli_message(str(exc))) from None
    result = execute_or_describe(
        planned,
        dry_run=kw["dry_run"],
        failed=lambda exc: _cli_message(str(exc)),
        out=kw["out"],
        runs_root=kw["runs_root"],
    )
    if result is None:
        return
    stage = result.stages["prune"]
    table = result.table("compression")
    cols = [
        c
        for c in (
            "model",
            "params",
            "sparsity",
            "macs_sparse",
            "clean_acc",
            "robust_acc",
            "verified_acc",
            "clean_frac",
            "robust_frac",
            "verified_frac",
            "latency_frac",
            "memory_frac",
        )
        if c in table
    ]
    echo_table(table[cols])
    click.echo("\n" + stage.summary)
    for fname, fpath in stage.figures.items():
        click.echo(f"figure {fname}: {fpath}")
    click.echo(f"run directory: {result.path}\nreport: {result.report}")


def _experiment(kw: dict[str, Any]) -> dict[str, Any]:
    import rtk

    model: dict[str, Any] = {"arch": kw["arch"], **key_values(kw["model_option"], "--model-option")}
    if kw["checkpoint"] is not None:
        from rtk.models.checkpoint import checkpoint_declaration

        model = checkpoint_declaration(kw["checkpoint"])
    stage: dict[str, Any] = {
        "kind": "prune",
        "id": "prune",
        "model": kw["name"],
        "trainer": {"name": kw["trainer"], **key_values(kw["trainer_option"], "--trainer-option")},
        **given(kw, rtk.PruneRequest, _FLAGS),
    }
    if kw["pruners"]:
        stage["pruners"] = [parse_component(p, "--pruner") for p in kw["pruners"]]
    if kw["attacks"]:
        stage["attacks"] = [parse_component(a, "--attack") for a in kw["attacks"]]
    if kw["certifiers"]:
        stage["certifiers"] = [parse_component(c, "--certifier") for c in kw["certifiers"]]
    compression = _numbers(kw["compression"], "--compression")
    ratios = _numbers(kw["ratios"], "--ratio")
    if compression is not None:
        stage["compression"] = compression
    if ratios is not None:
        stage["ratios"] = ratios
    for key in ("eval_limit", "export"):
        if kw[key] is not None:
            stage[key] = kw[key]
    if kw["loop_option"]:
        stage["loop"] = key_values(kw["loop_option"], "--loop-option")
    if kw["prune_first"]:
        stage["keep_first"] = False
    if kw["prune_last"]:
        stage["keep_last"] = False
    if kw["no_timing"]:
        stage["timing"] = False
    label = re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"prune-{model['arch']}-{kw['trainer']}").strip("-")
    return {
        "name": label,
        "seed": kw["seed"],
        "device": kw["device"],
        "dataset": {"name": kw["dataset"], **key_values(kw["data_option"], "--data-option")},
        "models": {kw["name"]: model},
        "stages": [stage],
    }


@command.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def export_command(checkpoint: Path, out: Path) -> None:
    """Make the masks of CHECKPOINT permanent and save a plain dense model as OUT.

    OUT loads into the unpruned architecture with any tool; pruned weights are zero.
    """
    from rtk.models import load_checkpoint, save_checkpoint
    from rtk.pruning import dense_export, exported_recipe, remaining_params

    model, recipe, spec = load_checkpoint(checkpoint, registry())
    before = remaining_params(model)
    dense_export(model)
    path = save_checkpoint(
        out, model, exported_recipe(recipe), metadata={**spec.get("metadata", {}), "dense_export_of": str(checkpoint)}
    )
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    click.echo(f"wrote {path}.safetensors / .json: plain modules, {before} non-pruned parameters, {zeros} zeros")


@command.command("info")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def info_command(checkpoint: Path) -> None:
    """Per-layer shapes and sparsity of CHECKPOINT and the pruning its spec records."""
    import pandas as pd
    from torch import nn

    from rtk.models import load_checkpoint
    from rtk.pruning import is_masked, prunable_layers, remaining_params

    model, recipe, spec = load_checkpoint(checkpoint, registry())
    rows = []
    for name, m in prunable_layers(model).items():
        assert isinstance(m, nn.Module)
        kept = int(m.weight_mask.sum()) if is_masked(m) else int((m.weight != 0).sum())
        rows.append(
            {
                "layer": name,
                "type": type(m).__name__,
                "shape": "x".join(map(str, m.weight.shape)),
                "weights": m.weight.numel(),
                "kept": kept,
                "sparsity": 1 - kept / max(m.weight.numel(), 1),
            }
        )
    echo_table(pd.DataFrame(rows))
    click.echo(f"\narchitecture {recipe.arch}; {remaining_params(model)} non-pruned parameters")
    for t in (recipe.extra or {}).get("transforms", []):
        desc = {k: v for k, v in t.items() if k not in ("modules", "layers")}
        click.echo(f"transform {t.get('kind')}: {desc}")
