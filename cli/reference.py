"""``rtk reference``: print (or write) the reference of every experiment-file key."""

from __future__ import annotations

from pathlib import Path

import click

from .common import friendly_errors, registry


@click.command("reference")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of printing.")
@friendly_errors
def command(out: Path | None) -> None:
    """The reference of every experiment-file key, from the registered plugins (markdown)."""
    from rtk.reference import experiment_reference

    text = experiment_reference(registry())
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}")
