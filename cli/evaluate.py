"""``rtk evaluate``: evaluate a checkpoint, or a model of an earlier run or experiment, under
an attack suite, and print clean accuracy, accuracy per attack and eps, the worst case and
the sanity checks.

It builds a one-stage experiment (an ``evaluate`` stage) and runs it through the runner, so
the run directory, per-example records, report and ``--resume`` behave as in ``rtk run``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from .common import (
    checkpoint_data,
    echo_table,
    execute_or_describe,
    friendly_errors,
    given,
    parse_component,
    registry,
    request_flags,
    run_directory_options,
)


def parse_attack(text: str) -> dict[str, Any] | str:
    """``pgd``, ``pgd:eps=8/255,steps=20`` or an inline TOML table ``{ name = "pgd", steps = 20 }``."""
    return parse_component(text, "--attack")


def parse_eps(items: tuple[str, ...]) -> list[str] | dict[str, list[str]] | None:
    """``2/255,8/255`` (one list) or ``Linf:2/255,8/255`` / ``L2:0.5,1`` (per norm, repeatable)."""
    from rtk import NORMS

    if not items:
        return None
    per_norm: dict[str, list[str]] = {}
    plain: list[str] = []
    for item in items:
        norm, sep, rest = item.partition(":")
        if sep and norm in NORMS:
            per_norm.setdefault(norm, []).extend(v.strip() for v in rest.split(",") if v.strip())
        else:
            plain.extend(v.strip() for v in item.split(",") if v.strip())
    if per_norm and plain:
        raise click.BadParameter("give either plain eps lists or NORM:eps lists, not both", param_hint="--eps")
    return per_norm or plain


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=flag) from None


def resolve_source(source: Path, model: str | None, tag: str, dataset: str | None) -> tuple[str, dict, dict]:
    """``(model name, model declaration, dataset declaration)`` for a checkpoint, a run
    directory or an experiment file."""
    import rtk
    from rtk.models.checkpoint import checkpoint_declaration, read_spec
    from rtk.models.sources import refuse_code_from_checkpoint

    if source.is_dir():
        from rtk.rundir import RunDir, saved_checkpoints

        rundir = RunDir(source)
        rundir.check_links()
        state = rundir.read_json("state.json")
        if not isinstance(state, dict):
            raise rtk.ConfigError(
                f"{source} is a directory but not a run directory (no state.json); give a checkpoint "
                f"(NAME of NAME.safetensors + NAME.json), a run directory or an experiment file"
            )
        cfg = rundir.read_json("config.json", {})
        cfg = cfg if isinstance(cfg, dict) else {}
        declared = cfg.get("models") if isinstance(cfg.get("models"), dict) else {}
        saved = state.get("models") if isinstance(state.get("models"), dict) else {}
        models = {**{m: {} for m in declared}, **saved}
        if model is None:
            if len(models) != 1:
                raise rtk.ConfigError(
                    f"{source} holds models {', '.join(sorted(models)) or '(none)'}; choose one with --model"
                )
            model = next(iter(models))
        if model not in models:
            raise rtk.ConfigError(f"{source} has no model {model!r}; models: {', '.join(sorted(models)) or '(none)'}")
        ckpts: dict[str, Path] = saved_checkpoints(rundir, model, models[model]) if model in saved else {}
        decl_ckpt = (declared.get(model) or {}).get("checkpoint") if isinstance(declared.get(model), dict) else None
        if "current" not in ckpts and isinstance(decl_ckpt, str):
            # a model the run loaded from a checkpoint and never changed
            base = Path(cfg["base_dir"]) if isinstance(cfg.get("base_dir"), str) else source
            path = Path(decl_ckpt)
            ckpts["current"] = path if path.is_absolute() else base / path
        if tag not in ckpts:
            raise rtk.ConfigError(
                f"model {model!r} of {source} has no checkpoint tagged {tag!r}; "
                f"tags: {', '.join(sorted(ckpts)) or '(none)'}"
            )
        ckpt = Path(ckpts[tag])
        ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
        ds_opts = ds.get("options") if isinstance(ds.get("options"), dict) else {}
        ds_decl = {"name": dataset or ds.get("name"), **(ds_opts if not dataset else {})}
    elif source.suffix == ".toml":
        exp = rtk.load_experiment(source)
        if model is None:
            if len(exp.models) != 1:
                raise rtk.ConfigError(
                    f"{source} declares models {', '.join(sorted(exp.models))}; choose one with --model"
                )
            model = next(iter(exp.models))
        if model not in exp.models:
            raise rtk.ConfigError(f"{source} declares no model {model!r}; models: {', '.join(sorted(exp.models))}")
        decl = exp.models[model]
        if not decl.checkpoint:
            raise rtk.ConfigError(
                f"model {model!r} of {source} has no checkpoint; give the run directory that trained "
                f"it (rtk evaluate runs/NAME --model {model}) or a checkpoint file"
            )
        ckpt = exp.resolve_path(decl.checkpoint)
        ds_decl = {"name": dataset or exp.dataset.name, **(exp.dataset.options if not dataset else {})}
    else:
        ckpt = source
        if not (source.exists() or source.with_suffix(".json").exists() or Path(str(source) + ".json").exists()):
            raise rtk.ConfigError(f"{source}: no such checkpoint, run directory or experiment file")
        ds_decl = {"name": dataset}
    spec = read_spec(ckpt)
    stem = ckpt.with_suffix("") if ckpt.suffix in (".json", ".safetensors") else ckpt
    if source.suffix != ".toml":
        refuse_code_from_checkpoint(spec, str(stem))
    if ds_decl.get("name") is None:
        ds_decl = checkpoint_data(spec, str(stem))
    name = model or "model"
    decl = checkpoint_declaration(stem, spec)
    return name, decl, ds_decl


def _stage_options(kw: dict[str, Any], model: str) -> dict[str, Any]:
    st: dict[str, Any] = {"kind": "evaluate", "id": "evaluate", "models": [model]}
    if kw["attack"]:
        st["attacks"] = [parse_attack(a) for a in kw["attack"]]
    eps = parse_eps(kw["eps"])
    if eps is not None:
        st["eps"] = eps
    from rtk.plugins.evaluation import EvaluateOptions

    st.update(given(kw, EvaluateOptions, _FLAGS))
    if kw.get("records_from"):
        st["records_from"] = [str(p) for p in kw["records_from"]]
    mean, std = _floats(kw.get("mean"), "--mean"), _floats(kw.get("std"), "--std")
    if (mean is None) != (std is None):
        raise click.UsageError("give --mean and --std together")
    if mean is not None:
        st["normalize"] = {"mean": mean, "std": std}
    return st


#: The fields of the evaluate stage's options (the attack-suite request and the stage's own) that are
#: flags, generated from the options: their names, defaults and help come from there.
_FLAGS = (
    "headline_eps",
    "limit",
    "batch_size",
    "split",
    "early_exit",
    "strict",
    "checks",
    "output",
    "save_adversarial",
    "per_example",
)


def _request_options(fn):
    from rtk.plugins.evaluation import EvaluateOptions

    return request_flags(EvaluateOptions, _FLAGS)(fn)


def _echo_checks(df) -> None:
    for row in df.itertuples(index=False):
        mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip"}[row.status]
        click.echo(f"  {mark}  {row.model:<10} {row.check:<22} {row.detail}")
        if row.status == "fail" and row.advice:
            click.echo(f"        {'':<10} {'':<22} -> {row.advice}")


def _failed(exc: Exception) -> str:
    hint = "" if "strict" in str(exc) else "\nFinished examples are kept; continue with --resume DIR."
    return f"{exc}{hint}"


@click.command("evaluate")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--model", help="Which model of a run directory or experiment file (needed when it has several).")
@click.option("--tag", default="current", show_default=True, help="Checkpoint tag of the model in a run directory.")
@click.option("--dataset", help="A registered dataset (default: the one the model was trained on).")
@click.option(
    "-a",
    "--attack",
    multiple=True,
    metavar="SPEC",
    help="An attack, in suite order (repeatable): NAME, NAME:KEY=VALUE,... or a TOML table. Default: autoattack.",
)
@click.option(
    "--eps",
    multiple=True,
    metavar="LIST",
    help="Run every bounded attack at each eps: 2/255,4/255,8/255 or per norm Linf:... / L2:... (repeatable).",
)
@_request_options
@click.option("--mean", help="Per-channel mean the model expects on its inputs (with --std).")
@click.option("--std", help="Per-channel std the model expects on its inputs (with --mean).")
@click.option(
    "--records-from",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Merge records of another run or shard (its artifacts/evaluate directory; repeatable).",
)
@run_directory_options(
    out="runs/evaluate-<time>",
    resume="Continue an interrupted evaluation (its run directory); finished examples are not recomputed.",
    skips="evaluate",
)
@friendly_errors
def command(source: Path | None, **kw: Any) -> None:
    """Evaluate SOURCE (a checkpoint, a run directory or an experiment file) under an attack suite.

    \b
    Examples:
      rtk evaluate runs/pgd/checkpoints/net/last -a pgd:steps=20 -a square --eps 2/255,4/255,8/255
      rtk evaluate runs/pgd --model net --strict
      rtk evaluate model -a "apgd-ce:norm=L2,eps=0.5" --limit 1000 --early-exit
    """
    import rtk
    from rtk.execution import resumed_experiment

    if kw["resume"] is not None:
        if source is not None:
            raise click.UsageError("give either SOURCE or --resume DIR, not both")
        exp = resumed_experiment(kw["resume"])
        model = exp.stages[0].options.get("models", ["model"])[0] if exp.stages else "model"
    else:
        if source is None:
            raise click.UsageError("give SOURCE: a checkpoint, a run directory or an experiment file")
        model, decl, ds_decl = resolve_source(source, kw["model"], kw["tag"], kw["dataset"])
        data = {
            "name": "evaluate",
            "seed": kw["seed"],
            "device": kw["device"],
            "dataset": ds_decl,
            "models": {model: decl},
            "stages": [_stage_options(kw, model)],
        }
        exp = rtk.experiment_from_dict(data, source="<rtk evaluate>", base_dir=Path.cwd())
    planned = rtk.plan(exp, registry())
    result = execute_or_describe(
        planned,
        dry_run=kw["dry_run"],
        skipped="nothing was evaluated",
        failed=_failed,
        out=kw["out"],
        resume=kw["resume"],
        runs_root=kw["runs_root"],
    )
    if result is None:
        return
    stage = next(iter(result.stages.values()))
    acc = stage.tables["accuracy"]
    n = int(acc["n"].iloc[0]) if len(acc) else 0
    click.echo(f"== accuracy ({n} examples; `accuracy`: the attack alone, `cumulative`: with the attacks before it)")
    echo_table(acc.drop(columns=["norm"]))
    click.echo("\n== worst case over the suite (an example is robust only if no attack breaks it)")
    echo_table(stage.tables["worst_case"].drop(columns=["norm"]))
    if "checks" in stage.tables:
        click.echo("\n== sanity checks")
        _echo_checks(stage.tables["checks"])
    click.echo("")
    for line in stage.summary.split("\n\n")[:-1]:
        click.echo(re.sub(r"\*\*|`", "", line))
    click.echo(f"\nrun directory: {result.path}\nreport: {result.report}")
