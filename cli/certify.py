"""``rtk certify``: verified accuracy of a checkpoint under registered certifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import SEED, checkpoint_data, echo_table, friendly_errors, parse_component, progress_bars, registry


def parse_certifier(text: str) -> dict[str, Any]:
    """``name`` or ``name:key=value,key=value`` -> ``{"name": ..., **options}``; values are
    read as TOML scalars (numbers, booleans) and otherwise kept as strings ("8/255")."""
    ref = parse_component(text, "--certifier")
    return {"name": ref} if isinstance(ref, str) else ref


@click.command("certify")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-c",
    "--certifier",
    "certifiers",
    multiple=True,
    help="Certifier name, optionally with options: 'crown', 'smoothing:sigma=0.5,n=2000'. Repeatable "
    "(default: ibp and crown).",
)
@click.option(
    "--eps",
    "eps",
    multiple=True,
    help="Radius (L-inf for bound certifiers, L2 for smoothing), a number or "
    "a fraction such as 8/255. Repeatable (default 2/255).",
)
@click.option("--dataset", help="Dataset name (default: the one the checkpoint was trained on).")
@click.option(
    "--limit", type=int, default=200, show_default=True, help="Certify a fixed subset of this many test examples."
)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Examples handed to a certifier at once.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the test subset.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write one row per example and eps (CSV).")
@friendly_errors
def command(
    checkpoint: Path,
    certifiers: tuple[str, ...],
    eps: tuple[str, ...],
    dataset: str | None,
    limit: int,
    batch_size: int,
    device: str,
    seed: int,
    out: Path | None,
) -> None:
    """Certify CHECKPOINT (NAME.safetensors + NAME.json) on test data: verified accuracy per certifier and eps."""
    from pydantic import TypeAdapter, ValidationError

    import rtk
    from rtk.certify import certify_split, summarize
    from rtk.data.sources import load_dataset
    from rtk.models import load_checkpoint, read_spec
    from rtk.models.checkpoint import check_data_matches
    from rtk.models.sources import refuse_code_from_checkpoint
    from rtk.runtime import resolve_device

    if limit < 1 or batch_size < 1:
        raise click.BadParameter("--limit and --batch-size must be positive")
    try:
        radii = [TypeAdapter(rtk.Eps).validate_python(e) for e in (eps or ("2/255",))]
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--eps") from None
    reg = registry()
    refs = [rtk.CertifierRef.model_validate(parse_certifier(c)) for c in (certifiers or ("ibp", "crown"))]
    for i, ref in enumerate(refs):
        ref.resolve(reg, where=f"--certifier[{i}]")
    dev = resolve_device(device)
    refuse_code_from_checkpoint(read_spec(checkpoint), str(checkpoint))
    model, recipe, spec = load_checkpoint(checkpoint, reg, device=dev)
    table = {"name": dataset} if dataset else checkpoint_data(spec, str(checkpoint))
    dname = table["name"]
    data = load_dataset(table, reg, where="dataset")
    check_data_matches(recipe.info, data.info, f"checkpoint {checkpoint}")
    frames, summaries = [], []
    with progress_bars():
        for ref in refs:
            cert = ref.spec.build(ref.opts)
            rows = certify_split(
                cert, model.eval(), data.test, eps=radii, limit=limit, seed=seed, batch_size=batch_size, device=dev
            )
            rows.insert(0, "certifier", ref.describe())
            frames.append(rows)
            s = summarize(rows)
            s.insert(0, "certifier", ref.describe())
            s.insert(1, "norm", cert.norm)
            summaries.append(s)
    import pandas as pd

    table = pd.concat(summaries, ignore_index=True)
    click.echo(f"{checkpoint} ({recipe.arch}) on {dname}, {int(table['n'].max())} test examples:")
    echo_table(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(frames, ignore_index=True).to_csv(out, index=False)
        click.echo(f"per-example results: {out}")
