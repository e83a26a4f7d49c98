"""``rtk zoo``: the RobustBench model zoo (``list``, ``compare``). Needs ``pip install 'rtk[zoo]'``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import (
    SEED,
    component_option,
    echo_table,
    friendly_errors,
    given,
    key_value_option,
    key_values,
    parse_component,
    progress_bars,
    registry,
    request_flags,
)


@click.group("zoo")
def command() -> None:
    """RobustBench zoo models as baselines: list them, compare them with your models."""


@command.command("list")
@click.option("--dataset", help="cifar10, cifar100 or imagenet.")
@click.option("--threat", help="Linf, L2, corruptions or corruptions_3d.")
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where weights live, to show which are present (default $RTK_MODEL_DIR, else ./models).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (everything robustbench ships per entry)."
)
@friendly_errors
def list_command(dataset: str | None, threat: str | None, model_dir: Path | None, as_json: bool) -> None:
    """List zoo entries: name, architecture, size, reported accuracy, and whether the weights are here."""
    import pandas as pd

    from rtk.zoo import LEADERBOARD_NOTE, entries, file_status, resolve_model_dir, robustbench_version

    found = entries(dataset, threat)
    root = resolve_model_dir(model_dir)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "robustbench": robustbench_version(),
                    "model_dir": str(root),
                    "note": LEADERBOARD_NOTE,
                    "entries": [{**e.to_dict(), "status": file_status(e, root)} for e in found],
                },
                indent=2,
            )
        )
        return
    rows = []
    for e in found:
        rep = e.reported
        rows.append(
            {
                "id": str(e.id),
                "architecture": e.architecture,
                "params": f"{e.params / 1e6:.1f}M" if e.params else "?",
                "clean": f"{rep.clean_acc:.2%}" if rep and rep.clean_acc is not None else "-",
                "robust": f"{rep.robust_acc:.2%}" if rep and rep.robust_acc is not None else "-",
                "eps": (rep.eps or "-") if rep else "-",
                "weights": file_status(e, root) if e.supported else "unsupported",
            }
        )
    if not rows:
        click.echo("(no entries)")
        return
    click.echo(pd.DataFrame(rows).to_string(index=False))
    click.echo(f"\n{len(rows)} entries (robustbench {robustbench_version()}); weights looked up in {root}.")
    click.echo(
        f"clean / robust: accuracies reported in robustbench's README (AutoAttack for Linf/L2); {LEADERBOARD_NOTE}."
    )


def _user_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME=CHECKPOINT`` or ``CHECKPOINT`` (an rtk checkpoint: NAME.safetensors + NAME.json)."""
    from rtk.models import read_spec

    name, sep, path = spec.partition("=")
    if not sep:
        path, p = spec, Path(spec)
        stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
        name = stem.parent.name if stem.parent.parent.name == "checkpoints" else stem.name
    ckpt = Path(path).with_suffix("") if Path(path).suffix in (".json", ".safetensors") else Path(path)
    spec_json = read_spec(ckpt)
    return name, {"arch": spec_json["arch"], **spec_json.get("options", {}), "checkpoint": str(ckpt.resolve())}


#: The zoo stage's options that are flags of ``rtk zoo compare``, generated from the options (the
#: attack-suite request and the stage's own); ``--limit`` keeps a quick default of its own.
_FLAGS = ("limit", "batch_size", "model_dir", "allow_unsafe_pickle", "download", "checks")
_CKA_FLAGS = ("enabled", "limit")


def _request_options(fn):
    from rtk.plugins.zoo import CKAOptions, ZooStageOptions

    fn = request_flags(CKAOptions, _CKA_FLAGS, flags={"enabled": "cka", "limit": "cka_limit"}, prefix="cka_")(fn)
    return request_flags(ZooStageOptions, _FLAGS, defaults={"limit": 200})(fn)


@command.command("compare")
@click.option(
    "--zoo", "zoo_ids", multiple=True, metavar="ID", help="A zoo entry <dataset>/<threat>/<name> (repeatable)."
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="[NAME=]CHECKPOINT",
    help="One of your models: an rtk checkpoint (NAME.safetensors + NAME.json) (repeatable).",
)
@click.option("--dataset", help="A registered dataset (default: the zoo entries' dataset, e.g. cifar10).")
@key_value_option("--data", "data_opts", help="A dataset option, e.g. root=/data/cifar10.")
@component_option(
    "--attack",
    "attacks",
    help="An attack of the suite, e.g. pgd:eps=8/255,steps=10 (repeatable; default autoattack).",
)
@_request_options
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default runs/zoo-compare-<time>)."
)
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@friendly_errors
def compare_command(
    zoo_ids: tuple[str, ...],
    models: tuple[str, ...],
    dataset: str | None,
    data_opts: tuple[str, ...],
    attacks: tuple[str, ...],
    device: str,
    seed: int,
    out: Path | None,
    runs_root: Path,
    **kw: Any,
) -> None:
    """Evaluate zoo models and your models on the same test subset with the same attacks, in one table."""
    import rtk
    from rtk.plugins.zoo import CKAOptions, ZooStageOptions
    from rtk.zoo import ZooId

    if not zoo_ids and not models:
        raise click.UsageError("give at least one --zoo ID or --model CHECKPOINT")
    if dataset is None:
        if not zoo_ids:
            raise click.UsageError("give --dataset (no --zoo entry to take it from)")
        dataset = ZooId.parse(zoo_ids[0]).dataset
    declared = dict(_user_model(m) for m in models)
    stage: dict[str, Any] = {
        "kind": "zoo",
        "id": "zoo",
        "models": list(declared),
        "zoo": list(zoo_ids),
        **given(kw, ZooStageOptions, _FLAGS),
        "cka": given(kw, CKAOptions, _CKA_FLAGS, prefix="cka_"),
    }
    if attacks:
        stage["attacks"] = [parse_component(a, "--attack") for a in attacks]
    experiment = {
        "name": "zoo-compare",
        "seed": seed,
        "device": device,
        "dataset": {"name": dataset, **key_values(data_opts, "--data")},
        "models": declared,
        "stages": [stage],
    }
    exp = rtk.experiment_from_dict(experiment, source="rtk zoo compare", base_dir=Path.cwd(), registry=registry())
    planned = rtk.plan(exp, registry())
    with progress_bars():
        result = rtk.execute(planned, out=out, runs_root=runs_root)
    wide = result.table("zoo/comparison")
    click.echo("== comparison (accuracy on the same examples; reported_* = RobustBench's own numbers)")
    echo_table(wide.drop(columns=[c for c in ("zoo_id", "failed_checks") if c in wide.columns]))
    if "zoo/cka" in result.tables:
        from rtk.zoo.compare import cka_summary

        click.echo("\n== CKA (zoo layer x your layer; diagonal = layers at the same relative depth)")
        echo_table(cka_summary(result.tables["zoo/cka"]))
    summary = result.stages["zoo"].summary
    if summary:
        click.echo(f"\n{summary}")
    click.echo(f"\nrun directory: {result.path}\nreport: {result.report}")
