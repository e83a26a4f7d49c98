"""The ``evaluate`` stage: clean and robust accuracy of models under an attack suite."""

from __future__ import annotations

import pandas as pd
from pydantic import Field

import rtk
from rtk.data import subset


class EvaluateOptions(rtk.Options):
    models: list[str] = Field(min_length=1, description="models to evaluate")
    attacks: list[rtk.AttackRef] = Field(default_factory=lambda: [rtk.AttackRef(name="pgd")])
    limit: int | None = Field(None, ge=1, description="evaluate on a fixed subset of this many test examples")
    batch_size: int = Field(256, ge=1)


def _check(opts: EvaluateOptions, planning: rtk.Planning):
    problems = []
    for i, m in enumerate(opts.models):
        problems += planning.check_model(m, f"models[{i}]")
    return problems


def _run(ctx: rtk.StageContext, opts: EvaluateOptions) -> rtk.StageResult:
    from rtk.evaluation.basic import robust_accuracy

    split = subset(ctx.data.test, opts.limit, ctx.experiment.seed)
    rows = []
    for name in opts.models:
        model = ctx.model(name).eval()
        attacks = [(ref.describe(), ref.spec.build(model, ref.opts)) for ref in opts.attacks]
        accs = robust_accuracy(model, split, attacks, batch_size=opts.batch_size, device=ctx.device)
        for key, acc in accs.items():
            rows.append({"model": name, "attack": key, "accuracy": acc, "n": len(split)})
    df = pd.DataFrame(rows)
    return rtk.StageResult(tables={"accuracy": df}, summary=f"Evaluated {len(opts.models)} model(s) on {len(split)} test examples.")


@rtk.hookimpl
def rtk_stages():
    yield rtk.StageSpec(name="evaluate", summary="clean and robust accuracy under an attack suite",
                        options=EvaluateOptions, run=_run, check=_check)
