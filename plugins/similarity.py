"""Built-in similarity metrics and the ``similarity`` stage (a thin adapter over
:mod:`rtk.similarity`)."""

from __future__ import annotations

from pydantic import Field, field_validator

import rtk

components = rtk.Components()

#: The analyses a similarity stage runs by default (the request's default).
ANALYSES = tuple(rtk.SimilarityRequest().analyses)


# ----------------------------------------------------------------------------- metrics
class LinearCKAOptions(rtk.Options):
    debiased: bool = Field(False, description="use the unbiased HSIC estimator (debiased CKA; needs n >= 4)")


class RBFCKAOptions(rtk.Options):
    sigma: float = Field(0.8, gt=0, description="RBF bandwidth as a fraction of the median distance between examples")
    debiased: bool = Field(False, description="use the unbiased HSIC estimator (debiased CKA; needs n >= 4)")


class MinibatchCKAOptions(rtk.Options):
    batch_size: int = Field(256, ge=4, description="examples per minibatch (the stage streams batches of this size)")


class SVCCAOptions(rtk.Options):
    variance: float = Field(
        0.99, gt=0, le=1, description="keep the top directions explaining this fraction of variance"
    )
    dims: int | None = Field(None, ge=1, description="keep exactly this many top directions (overrides variance)")


#: The built-in metrics: name, options (their keys are the metric's keywords), metric class in :mod:`rtk.similarity`
#: (looked up when built, so that listing the metrics imports no torch), summary.
_METRICS = (
    ("linear-cka", LinearCKAOptions, "LinearCKA", "linear CKA (Kornblith et al. 2019), biased or debiased"),
    ("rbf-cka", RBFCKAOptions, "RBFCKA", "RBF-kernel CKA, bandwidth a fraction of the median distance"),
    (
        "minibatch-cka",
        MinibatchCKAOptions,
        "MinibatchCKAMetric",
        "minibatch linear CKA with unbiased HSIC (Nguyen et al. 2021), streamed",
    ),
    ("svcca", SVCCAOptions, "SVCCA", "SVCCA (Raghu et al. 2017): SVD then mean canonical correlation"),
    ("pwcca", rtk.NoOptions, "PWCCA", "projection-weighted CCA (Morcos et al. 2018)"),
    (
        "procrustes",
        rtk.NoOptions,
        "ProcrustesDistance",
        "orthogonal Procrustes distance (0 = same up to rotation/scale)",
    ),
)

components.table(rtk.SimilaritySpec, _METRICS, module="rtk.similarity")


# ----------------------------------------------------------------------------- the stage
class SimilarityStageOptions(rtk.SimilarityRequest):
    """The similarity stage: what it compares, with which metric, on which layers and inputs; how
    (analyses, examples, pooling, blocks) is the job's request, :class:`rtk.SimilarityRequest`."""

    models: list[str] = Field(
        default_factory=list,
        description="models (or model@tag) analysed on their own: heatmap, block structure, specialization",
    )
    pairs: list[list[str]] = Field(
        default_factory=list, description='pairs of models compared with each other: [["std", "robust"]]'
    )
    checkpoints: list[str] = Field(
        default_factory=list,
        description="a sequence of checkpoints of one run for overfitting by layer, "
        'the first is the reference: ["robust@best", "robust@last"]',
    )
    metric: rtk.SimilarityRef = Field(default_factory=lambda: rtk.SimilarityRef(name="linear-cka"))
    layers: list[str] | dict[str, list[str]] = Field(
        default_factory=lambda: ["default"],
        description="layer name patterns (fnmatch, or 're:REGEX'); 'default' = every Conv, BN, ReLU, pooling and "
        "Linear layer; a table gives patterns per model",
    )
    adversarial: dict[str, rtk.AttackRef] = Field(
        default_factory=dict,
        description="model (or '*') -> attack: that model's features are taken on adversarial "
        "inputs from the attack; other models see benign inputs",
    )

    @field_validator("pairs")
    @classmethod
    def _pairs_ok(cls, v: list[list[str]]) -> list[list[str]]:
        for i, p in enumerate(v):
            if len(p) != 2:
                raise ValueError(f"pairs[{i}] must name exactly two models, got {p}")
        return v

    @field_validator("checkpoints")
    @classmethod
    def _ckpts_ok(cls, v: list[str]) -> list[str]:
        if len(v) == 1:
            raise ValueError("give at least two checkpoints (the first is the reference), or none")
        return v


def _check(opts: SimilarityStageOptions, planning: rtk.Planning) -> list[str]:
    problems: list[str] = []
    for i, m in enumerate(opts.models):
        problems += planning.check_model(m, f"models[{i}]")
    for i, p in enumerate(opts.pairs):
        for j, m in enumerate(p):
            problems += planning.check_model(m, f"pairs[{i}][{j}]")
    for i, m in enumerate(opts.checkpoints):
        problems += planning.check_model(m, f"checkpoints[{i}]")
    for k in opts.adversarial:
        if k != "*":
            problems += planning.check_model(k, f"adversarial.{k}")
    if isinstance(opts.layers, dict):
        for k in opts.layers:
            if k != "*":
                problems += planning.check_model(k, f"layers.{k}")
    if (
        opts.passes > 1
        and opts.metric.resolved
        and not hasattr(opts.metric.spec.build(opts.metric.opts), "accumulator")
    ):
        problems.append(
            f"{planning.where}.passes: {opts.passes} passes apply only to a minibatch metric (minibatch-cka), "
            f"whose value depends on how examples fall into minibatches; metric {opts.metric.name!r} uses all "
            "examples at once: remove passes"
        )
    if not (opts.models or opts.pairs or opts.checkpoints):
        problems.append(f"{planning.where}: nothing to compare; give models, pairs or checkpoints")
    return problems


@components.register(rtk.StageSpec, "similarity", SimilarityStageOptions, check=_check)
def _run(ctx: rtk.StageContext, opts: SimilarityStageOptions) -> rtk.StageResult:
    """layer-by-layer representation similarity: heatmaps, block structure, diagonals, overfitting by layer,
    specialization"""
    from rtk.similarity import SimilarityJob, run_similarity

    metric = opts.metric.spec.build(opts.metric.opts)

    def attack_for(ref: str):
        aref = (
            opts.adversarial.get(ref) or opts.adversarial.get(rtk.ModelRef.parse(ref).name) or opts.adversarial.get("*")
        )
        return aref

    def layers_for(ref: str):
        if isinstance(opts.layers, dict):
            return (
                opts.layers.get(ref)
                or opts.layers.get(rtk.ModelRef.parse(ref).name)
                or opts.layers.get("*")
                or ["default"]
            )
        return opts.layers

    job = SimilarityJob(
        metric=metric,
        metric_name=opts.metric.describe(),
        models=list(opts.models),
        pairs=[tuple(p) for p in opts.pairs],
        checkpoints=list(opts.checkpoints),
        **opts.as_kwargs(of=rtk.SimilarityRequest),  # the job's settings are the request's keys
    )
    out = run_similarity(
        job,
        load_model=ctx.model,
        layers_for=layers_for,
        attack_for=lambda ref, model: (
            None
            if attack_for(ref) is None
            else (attack_for(ref).describe(), attack_for(ref).spec.build(model, attack_for(ref).opts))
        ),
        data=ctx.data,
        device=ctx.device,
        seed=ctx.experiment.seed,
        figure_path=ctx.figure_path,
    )
    return rtk.StageResult(tables=out.tables, figures=out.figures, summary=out.summary, metrics=out.metrics)


rtk_similarity_metrics = components.hookimpl(rtk.SimilaritySpec)
rtk_stages = components.hookimpl(rtk.StageSpec)


__all__ = ["SimilarityStageOptions", "ANALYSES"]
