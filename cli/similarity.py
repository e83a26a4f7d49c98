"""``rtk similarity``: compare the representations of checkpoints layer by layer."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import click

from .common import (
    checkpoint_data,
    echo_table,
    friendly_errors,
    given,
    key_value_option,
    key_values,
    progress_bars,
    registry,
    request_flags,
)


def _model_name(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.") or "model"
    if not base[0].isalnum():
        base = "m" + base
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _checkpoint_of(ref: str, run: Path | None) -> tuple[Path, str]:
    """(checkpoint stem path, display label) for a path or, with --run, a model reference."""
    from rtk.models.checkpoint import read_spec

    if run is None:
        p = Path(ref)
        stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
        read_spec(stem)  # a clear CheckpointError when missing
        generic = stem.name in ("last", "best", "current") or stem.name.startswith("epoch-")
        return stem, f"{stem.parent.name}@{stem.name}" if generic and stem.parent.name else stem.name
    from rtk.refs import ModelRef

    mref = ModelRef.parse(ref)
    base, tag = mref.name, mref.tag or "last"
    stem = run / "checkpoints" / base / tag
    if not stem.with_suffix(".json").exists():
        avail = (
            sorted(p.stem for p in (run / "checkpoints" / base).glob("*.json"))
            if (run / "checkpoints" / base).exists()
            else []
        )
        models = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").exists() else []
        from rtk.errors import CheckpointError

        raise CheckpointError(
            f"{run}: no checkpoint {ref!r}; models with checkpoints: {', '.join(models) or '(none)'}"
            + (f"; tags of {base!r}: {', '.join(avail)}" if avail else "")
        )
    return stem, ref


#: The fields of the similarity request (rtk.SimilarityRequest) that are flags, generated from it.
_FLAGS = ("split", "limit", "batch_size", "passes", "pooling")


def _request_options(fn):
    import rtk

    return request_flags(rtk.SimilarityRequest, _FLAGS)(fn)


@click.command("similarity")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Take models from an earlier run directory: CHECKPOINTS are then model names or name@tag "
    "(for example robust@best).",
)
@click.option(
    "--metric",
    default="linear-cka",
    show_default=True,
    help="A registered similarity metric (rtk plugins --kind similarity).",
)
@key_value_option(
    "-o",
    "--metric-option",
    "metric_options",
    help="An option of the metric, e.g. -o debiased=true (repeatable).",
)
@click.option(
    "--layers",
    multiple=True,
    metavar="PATTERN",
    help="Layer name pattern (fnmatch, or re:REGEX); repeatable. Default: Conv, BN, ReLU, pooling, Linear.",
)
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    metavar="MODEL=ATTACK",
    help="Take MODEL's features on adversarial inputs from ATTACK (MODEL as listed, or '*'); repeatable.",
)
@click.option(
    "--overfitting",
    is_flag=True,
    help="The checkpoints are a sequence of one run (e.g. robust@best robust@last): compare each with the first, "
    "layer by layer.",
)
@click.option("--dataset", help="Dataset to read features on (default: the one the first checkpoint was trained on).")
@_request_options
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory (default runs/similarity-<time>)."
)
@friendly_errors
def command(
    checkpoints: tuple[str, ...],
    run_dir: Path | None,
    metric: str,
    metric_options: tuple[str, ...],
    layers: tuple[str, ...],
    attacks: tuple[str, ...],
    overfitting: bool,
    dataset: str | None,
    device: str,
    out: Path | None,
    **kw: Any,
) -> None:
    """Compare CHECKPOINTS (NAME.safetensors + NAME.json, or models of --run) layer by layer:
    heatmaps and block-structure scores of each, the similarity of corresponding layers of
    two, or overfitting by layer along a sequence (--overfitting)."""
    import rtk
    from rtk.models.checkpoint import checkpoint_declaration, read_spec
    from rtk.models.sources import refuse_code_from_checkpoint

    taken: set[str] = set()
    models: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for ref in checkpoints:
        stem, label = _checkpoint_of(ref, run_dir)
        spec = read_spec(stem)
        refuse_code_from_checkpoint(spec, str(stem))
        name = _model_name(label, taken)
        models[name] = checkpoint_declaration(stem, spec)
        labels[label] = name
    names = list(models)
    first = read_spec(_checkpoint_of(checkpoints[0], run_dir)[0])
    ds_table = {"name": dataset} if dataset else checkpoint_data(first, str(checkpoints[0]))
    adversarial = {}
    for key, value in key_values(attacks, "--attack").items():
        target = key if key == "*" else labels.get(key, key)
        if target != "*" and target not in models:
            raise click.BadParameter(f"unknown model {key!r}; models: {', '.join(labels)}", param_hint="--attack")
        adversarial[target] = value
    stage: dict[str, Any] = {
        "kind": "similarity",
        "id": "similarity",
        "metric": {"name": metric, **key_values(metric_options, "--metric-option")},
        **given(kw, rtk.SimilarityRequest, _FLAGS),
    }
    if layers:
        stage["layers"] = list(layers)
    if adversarial:
        stage["adversarial"] = adversarial
    if overfitting:
        if len(names) < 2:
            raise click.UsageError("--overfitting needs at least two checkpoints")
        stage["checkpoints"] = names
        stage["analyses"] = ["overfitting"]
    else:
        stage["models"] = names
        if len(names) >= 2:
            stage["pairs"] = [[names[0], other] for other in names[1:]]
    experiment = {"name": "similarity", "device": device, "dataset": ds_table, "models": models, "stages": [stage]}
    if out is None:
        out = Path("runs") / f"similarity-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    with progress_bars():
        exp = rtk.experiment_from_dict(experiment, source="rtk similarity", base_dir=Path.cwd())
        result = rtk.execute(rtk.plan(exp, registry()), out=out)
    res = result.stages["similarity"]
    for key in ("block_structure", "blocks", "diagonal", "overfitting"):
        df = res.tables.get(key)
        if df is not None and len(df):
            click.echo(f"\n== {key}")
            cols = [c for c in df.columns if c not in ("metric", "relative_depth", "threshold", "min_size")]
            echo_table(df[cols])
    click.echo(f"\n{res.summary.splitlines()[0]}")
    for fname, fpath in res.figures.items():
        click.echo(f"figure {fname}: {fpath}")
    click.echo(f"run directory: {result.path}\nreport: {result.report}")
