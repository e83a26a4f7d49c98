"""``rtk plugins``: every registered component, by kind, with its plugin and version;
``rtk plugins --check [NAME...]`` runs the contract checks of :mod:`rtk.testing`."""

from __future__ import annotations

import json

import click

from .common import friendly_errors, state


@click.command("plugins")
@click.option(
    "--kind", help="Only this kind (dataset, model, trainer, attack, pruner, similarity, certifier, stage, command)."
)
@click.option(
    "--check",
    "run_check",
    is_flag=True,
    help="Run the contract checks of every component (or of the plugins, distributions or components "
    "named); exit with status 1 when one fails.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("names", nargs=-1)
@friendly_errors
def command(kind: str | None, run_check: bool, as_json: bool, names: tuple[str, ...]) -> None:
    """List registered components by kind, with the plugin and distribution providing each.

    With --check, check that the components meet rtk's contracts instead; NAMES select plugins
    (example, rtk.attacks), distributions (rtk-example) or components (pgd, attack:pgd).
    """
    from rtk.records import KINDS

    st = state()
    reg = st.registry
    if kind is not None and kind not in KINDS:
        raise click.BadParameter(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}", param_hint="--kind")
    if names and not run_check:
        raise click.UsageError("NAMES select what --check checks; give --check, or list without names")
    if run_check:
        _check(reg, kind, names, as_json)
        return
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
        source = getattr(r.spec, "source", None)  # a source is written name:<what>
        label = f"{r.spec.name}:{source}" if source else r.spec.name
        click.echo(f"  {label:<22} {r.spec.summary}  [{r.plugin}; {dist}]")
    for f in failures:
        dist = f" ({f.distribution})" if f.distribution else ""
        fix = f" Fix: {f.fix}" if f.fix else ""
        click.echo(f"\nskipped plugin {f.name!r}{dist}: {f.error}.{fix}", err=True)


def _check(reg, kind: str | None, names: tuple[str, ...], as_json: bool) -> None:
    from rtk.testing import check, registrations

    chosen = [r for r in registrations(*names, registry=reg) if kind is None or r.spec.KIND == kind]
    results = []
    for r in chosen:
        res = check(r)
        results.append(res)
        if not as_json:
            status = "FAIL" if not res.passed else "ok  " if not res.notes else "note"
            click.echo(f"{status} {res}")
            for p in res.problems:
                click.echo(f"       - {p}")
            for n in res.notes:
                click.echo(f"       ({n.splitlines()[0]})")
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(json.dumps({"results": [r.to_dict() for r in results], "failed": len(failed)}, indent=2))
    else:
        click.echo(f"\n{len(results) - len(failed)} of {len(results)} components meet their contracts")
    if failed:
        raise click.exceptions.Exit(1)
