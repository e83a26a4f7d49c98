"""The ``evaluate`` stage: clean accuracy, robust accuracy per attack and eps, the
per-example worst case over the suite (the headline), accuracy-vs-eps curves, and the
sanity checks of every evaluation. A thin adapter over :mod:`rtk.evaluation`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import rtk
from rtk.evaluation import OUTPUT_PATTERN, AttackSuiteOptions, Normalization

components = rtk.Components()


class EvaluateOptions(AttackSuiteOptions):
    models: list[str] = Field(min_length=1, description="models to evaluate (`name` or `name@tag`)")
    split: Literal["test", "train"] = Field("test", description="which split to evaluate on")
    strict: bool = Field(False, description="a failed sanity check fails the stage (otherwise it warns)")
    output: str = Field(
        "logits", pattern=OUTPUT_PATTERN, description='what the models return: "logits", "first", "index:N", "key:NAME"'
    )
    normalize: Normalization | None = Field(None, description="{ mean, std } the models expect on their inputs")
    save_adversarial: Literal["none", "checks", "all"] = Field(
        "checks", description="save adversarial examples: of the check subset (for re-scoring), all, or none"
    )
    per_example: bool = Field(
        False,
        description="add the per-example table (one row per example and attack) to the "
        "stage's tables (it is always saved under artifacts/)",
    )
    plot: bool = Field(True, description="draw the accuracy-vs-eps figure when a norm has two or more eps")
    records_from: list[str] = Field(
        default_factory=list,
        description="directories with records of other runs or shards to merge (their results are not recomputed)",
    )


def _refs_ok(opts: EvaluateOptions) -> bool:
    return all(ref.resolved for ref in opts.attacks)


def _check(opts: EvaluateOptions, planning: rtk.Planning) -> list[str]:
    from rtk.evaluation import headline_threat, make_units, threats

    problems: list[str] = []
    for i, m in enumerate(opts.models):
        problems += planning.check_model(m, f"models[{i}]")
    for i, d in enumerate(opts.records_from):
        path = planning.experiment.resolve_path(d)
        if not path.is_dir():
            problems.append(
                f"{planning.where}.records_from[{i}]: {path} is not a directory (give the artifacts "
                f"directory of an evaluate stage, or a directory holding records/part-*.jsonl)"
            )
    if not _refs_ok(opts):
        return problems  # unresolved attack names were reported already
    if opts.eps is not None:
        for i, ref in enumerate(opts.attacks):
            if "eps" in ref.options:
                problems.append(
                    f"{planning.where}.attacks[{i}].eps: set both here and in the stage's eps list; "
                    f"remove one (the eps list runs every bounded attack at each eps)"
                )
    try:
        units = make_units([(r.spec, r.opts, r.describe()) for r in opts.attacks], opts.eps)
        headline_threat(units, threats(units, opts.eps), opts.headline_eps)
    except rtk.RtkError as exc:
        problems += [f"{planning.where}.{p}" for p in getattr(exc, "problems", [str(exc)])]
    return problems


def _work(ctx: rtk.StageContext, opts: EvaluateOptions) -> tuple[Any, Any, list]:
    """What the stage evaluates: the split, the indices of its examples, the attack units."""
    from rtk.evaluation import eval_indices, make_units

    split = ctx.data.test if opts.split == "test" else ctx.data.train
    indices = eval_indices(len(split), opts.limit, ctx.experiment.seed)
    return split, indices, make_units([(r.spec, r.opts, r.describe()) for r in opts.attacks], opts.eps)


def _evaluate_settings(ctx: rtk.StageContext, opts: EvaluateOptions) -> dict[str, Any]:
    """The keywords of ``rtk.evaluation.evaluate`` the stage sets alike on every rank and in one process."""
    return {
        "batch_size": opts.batch_size,
        "device": ctx.device,
        "eps": opts.eps,
        "headline_eps": opts.headline_eps,
        "early_exit": opts.early_exit,
        "strict": False,
        "output": opts.output,
        "normalize": opts.normalize,
        "seed": ctx.seed,
    }


def _shard_records(ctx: rtk.StageContext, opts: EvaluateOptions) -> None:
    """Under torchrun: each rank attacks its batch-aligned shard (so every batch, and every
    seeded random start, is the single-process one), keeping its records in memory; rank 0
    gathers every rank's record chunks and appends them to its record store, the only one
    written. The evaluation that follows on rank 0 then finds every result recorded."""
    from rtk import distributed as rd
    from rtk.evaluation import RecordStore, evaluate

    split, indices, units = _work(ctx, opts)
    extra = [ctx.experiment.resolve_path(d) for d in opts.records_from]
    mine = indices[rd.shard_indices(len(indices), align=opts.batch_size)]
    for name in opts.models:
        model = ctx.model(name)
        store = RecordStore(None, extra=[ctx.artifact_dir, *extra])  # reads earlier records (resume), writes none
        if len(mine):
            evaluate(
                model,
                split,
                units,
                indices=mine,
                store=store,
                name=name,
                checks=False,
                save_adversarial="none",
                **_evaluate_settings(ctx, opts),
            )
        parts = rd.gather_object([c for c in store.chunks() if not c.get("adv")])
        if parts is not None:
            sink = RecordStore(ctx.artifact_dir, extra=extra)
            have = {(c["model"], c["unit"], c["index"][0] if c["index"] else -1) for c in sink.chunks()}
            for part in parts:
                for c in part:
                    key = (c["model"], c["unit"], c["index"][0] if c["index"] else -1)
                    if key not in have:
                        have.add(key)
                        sink.append(c)
            sink.close()
    rd.barrier()


@components.register(rtk.StageSpec, "evaluate", EvaluateOptions, check=_check)
def _run(ctx: rtk.StageContext, opts: EvaluateOptions, *, _gathered: bool = False) -> rtk.StageResult:
    """clean and robust accuracy under an attack suite, worst case, accuracy-vs-eps curve, sanity checks"""
    import pandas as pd

    from rtk.evaluation import RecordStore, SanityCheckError, evaluate, plot_curves

    if not _gathered and rtk.distributed.is_distributed():
        # every rank attacks its shard; rank 0 merges, checks and builds the tables; all ranks return them
        _shard_records(ctx, opts)
        return rtk.distributed.main_process_only(broadcast=True)(_run)(ctx, opts, _gathered=True)
    split, indices, units = _work(ctx, opts)
    results = []
    for name in opts.models:
        store = RecordStore(ctx.artifact_dir, extra=[ctx.experiment.resolve_path(d) for d in opts.records_from])
        res = evaluate(
            ctx.model(name),
            split,
            units,
            indices=indices,
            store=store,
            name=name,
            checks=opts.check_settings if opts.checks else False,
            save_adversarial=opts.save_adversarial,
            **_evaluate_settings(ctx, opts),
        )
        results.append(res)

    def stacked(attr: str) -> pd.DataFrame:
        frames = [getattr(r, attr).assign(model=r.name) for r in results]
        df = pd.concat(frames, ignore_index=True)
        return df[["model"] + [c for c in df.columns if c != "model"]]

    tables = {"accuracy": stacked("accuracy"), "worst_case": stacked("worst_case")}
    if opts.checks:
        tables["checks"] = stacked("checks_table")
    per_example = stacked("per_example")
    per_example.to_csv(ctx.artifact_dir / "per_example.csv", index=False)
    if opts.per_example:
        tables["per_example"] = per_example
    figures = {}
    if opts.plot:
        path = plot_curves(tables["worst_case"], tables["accuracy"], ctx.figure_path("accuracy_vs_eps"))
        if path is not None:
            figures["accuracy_vs_eps"] = path
    failed = [(r.name, c) for r in results for c in r.failed_checks]
    if opts.strict and failed:
        tables["checks"].to_csv(ctx.artifact_dir / "checks.csv", index=False)
        raise SanityCheckError(
            "sanity checks failed (strict = true): "
            + "; ".join(f"{m}: {c.name} ({c.detail})" for m, c in failed)
            + f". Details: {ctx.artifact_dir / 'checks.csv'}"
        )
    summary = "\n\n".join(r.summary() for r in results)
    summary += (
        "\n\nRows of `accuracy`: `accuracy` is each attack alone, `cumulative` the worst case over it and the "
        "attacks before it, `worst_case` the headline: an example counts as robust only if no attack of the "
        "suite breaks it within the budget."
    )
    metrics = {"checks_failed": len(failed)}
    for r in results:
        metrics[f"{r.name}.clean_accuracy"] = r.clean_accuracy
        metrics[f"{r.name}.worst_case_accuracy"] = r.headline_accuracy
        if r.checks:
            metrics[f"{r.name}.checks_overhead"] = r.checks_overhead
    return rtk.StageResult(tables=tables, figures=figures, summary=summary, metrics=metrics)


rtk_stages = components.hookimpl(rtk.StageSpec)
