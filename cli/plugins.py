"""``rtk plugins``: every registered component, by kind, with its plugin and version."""

from __future__ import annotations

import json

import click

from .common import friendly_errors, state


@click.command("plugins")
@click.option(
    "--kind", help="Only this kind (dataset, model, trainer, attack, pruner, similarity, certifier, stage, command)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def command(kind: str | None, as_json: bool) -> None:
    """List registered components by kind, with the plugin and distribution providing each."""
    from rtk.records import KINDS

    st = state()
    reg = st.registry
    if kind is not None and kind not in KINDS:
        raise click.BadParameter(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}", param_hint="--kind")
    regs = reg.registrations(kind)
    failures = getattr(st.pm, "failures", [])
    if as_json:
        click.echo(
            json.dumps(
                {
                    "components": [r.to_dict() for r in regs],
                    "failures": [
                        {"plugin": f.name, "distribution": f.distribution, "error": f.error, "fix": f.fix}
                        for f in failures
                    ],
                },
                indent=2,
            )
        )
        return
    current = None
    for r in regs:
        if r.spec.KIND != current:
            current = r.spec.KIND
            click.echo(f"\n{current}s:")
        dist = f"{r.distribution} {r.version}" if r.distribution else "(not installed)"
        click.echo(f"  {r.spec.name:<22} {r.spec.summary}  [{r.plugin}; {dist}]")
    for f in failures:
        dist = f" ({f.distribution})" if f.distribution else ""
        fix = f" Fix: {f.fix}" if f.fix else ""
        click.echo(f"\nskipped plugin {f.name!r}{dist}: {f.error}.{fix}", err=True)
