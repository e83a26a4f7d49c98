"""Built-in pruners (lwm, random, hydra, channel) and the ``prune`` stage.

The algorithms live in :mod:`rtk.pruning`; this module declares their options and the stage
that runs the robust pruning pipeline (pre-train -> prune -> fine-tune with one objective).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

import rtk

components = rtk.Components()


# ----------------------------------------------------------------------------- pruner options
class ScopeOptions(rtk.Options):
    scope: Literal["layer", "global"] = Field(
        "layer", description="layer: remove the ratio from every layer; global: from all selected layers together"
    )


class RandomOptions(ScopeOptions):
    seed: int | None = Field(None, description="seed of the random choice (default: the stage's seed)")


class HydraOptions(rtk.Options):
    init: Literal["scaled", "magnitude"] = Field(
        "scaled", description="score initialisation: HYDRA's sqrt(6/fan_in) * w / max|w|, or |w|"
    )
    train_norm: bool = Field(True, description="let batch-norm affine parameters train with the scores (as HYDRA does)")


class ChannelOptions(rtk.Options):
    importance: Literal["magnitude", "l1", "l2", "lamp", "taylor", "robust-taylor", "random"] = Field(
        "l2",
        description="channel importance: magnitude (L1 of the filter), group l1/l2, lamp, taylor (clean loss), "
        "robust-taylor (adversarial loss), random",
    )
    global_pruning: bool = Field(False, description="rank channels across layers instead of per layer")
    round_to: int | None = Field(None, ge=1, description="keep channel counts multiples of this")
    max_channel_ratio: float = Field(0.95, gt=0, lt=1, description="largest fraction of channels removed per layer")
    taylor_loss: Literal["clean", "pgd", "objective"] | None = Field(
        None,
        description="loss whose gradients drive Taylor importance (default: clean for taylor, pgd for "
        "robust-taylor; objective: the stage's trainer)",
    )
    batches: int = Field(4, ge=1, description="training batches whose gradients are accumulated (Taylor)")
    batch_size: int = Field(128, ge=1)
    eps: rtk.Eps = Field(8 / 255, gt=0, le=1, description="L-inf radius of the PGD loss (robust-taylor)")
    alpha: rtk.Eps | None = Field(None, gt=0, le=1, description="PGD step (default 2.5 * eps / steps)")
    steps: int = Field(10, ge=1, description="PGD steps (robust-taylor)")


@components.register(rtk.PrunerSpec, "lwm", ScopeOptions)
def _lwm(o: ScopeOptions):
    """least weight magnitude, one shot (layerwise or global)"""
    from rtk.pruning import MagnitudePruner

    return MagnitudePruner(o.scope)


@components.register(rtk.PrunerSpec, "random", RandomOptions)
def _random(o: RandomOptions):
    """random unstructured pruning (a control)"""
    from rtk.pruning import RandomPruner

    return RandomPruner(o.scope, o.seed)


@components.register(rtk.PrunerSpec, "hydra", HydraOptions)
def _hydra(o: HydraOptions):
    """HYDRA: scores trained under the objective pick the weights to keep"""
    from rtk.pruning import HydraPruner

    return HydraPruner(init=o.init, train_norm=o.train_norm)


@components.register(rtk.PrunerSpec, "channel", ChannelOptions, structured=True)
def _channel(o: ChannelOptions):
    """structured channel pruning via torch-pruning's dependency graph (magnitude, group l1/l2, lamp, taylor,
    robust-taylor)"""
    from rtk.pruning import ChannelPruner

    return ChannelPruner(**o.model_dump())  # each option is the pruner's keyword argument of that name


# ----------------------------------------------------------------------------- the prune stage
class PruneStageOptions(rtk.PruneRequest):
    """The prune stage: the job's request (:class:`rtk.PruneRequest`: schedule, layers) and what it
    prunes, with which methods and objective, to which targets, and how it evaluates."""

    model: str = Field(description="the dense model to compress (declared under [models] or made by an earlier stage)")
    pruners: list[rtk.PrunerRef] = Field(
        default_factory=lambda: [rtk.PrunerRef(name="hydra"), rtk.PrunerRef(name="lwm")],
        min_length=1,
        description="pruning methods, each a name or a table with options",
    )
    compression: list[float] | None = Field(
        None,
        min_length=1,
        description="compression targets, e.g. [2, 5, 10, 20, 100] (10 = 10x fewer weights in the "
        "pruned layers); default [10]",
    )
    ratios: list[float] | None = Field(
        None, min_length=1, description="or: fractions of the selected weights removed, each strictly between 0 and 1"
    )
    trainer: rtk.TrainerRef = Field(
        default_factory=lambda: rtk.TrainerRef(name="standard"),
        description="the objective of pre-training, score training and fine-tuning",
    )
    attacks: list[rtk.AttackRef] = Field(
        default_factory=lambda: [rtk.AttackRef(name="pgd")],
        description="attack suite of the empirical robust accuracy (worst case)",
    )
    certifiers: list[rtk.CertifierRef] = Field(
        default_factory=list, description="certifiers of the verified robust accuracy (e.g. ibp, crown)"
    )
    eval_limit: int | None = Field(1000, ge=1, description="evaluate on a fixed subset of this many test examples")
    eval_batch_size: int = Field(256, ge=1)
    export: Literal["masked", "dense"] = Field(
        "masked", description="save pruned models with their masks, or as plain dense modules (dense export)"
    )
    timing: bool = Field(True, description="measure inference time and memory of structured pruning against dense")

    @field_validator("compression")
    @classmethod
    def _compression_above_one(cls, value: list[float] | None) -> list[float] | None:
        for c in value or []:
            if not c > 1:
                raise ValueError(
                    f"compression {c:g} is below or equal to 1; a compression is dense / remaining weights, "
                    "e.g. 10 for 10x fewer weights (allowed: > 1)"
                )
        return value

    @field_validator("ratios")
    @classmethod
    def _ratios_in_unit_interval(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is not None and info.data.get("compression") is not None:
            raise ValueError("give either compression or ratios, not both")
        for r in value or []:
            if not 0 < r < 1:
                raise ValueError(f"ratio {r:g} is outside (0, 1); a ratio is the fraction of the weights removed")
        return value

    def targets(self) -> list[Any]:
        from rtk.pruning import Target

        if self.ratios is not None:
            return [Target.from_ratio(r) for r in self.ratios]
        return [Target.from_compression(c) for c in (self.compression or [10.0])]


def _label(ref: rtk.PrunerRef) -> str:
    pruner = ref.spec.build(ref.opts)
    return str(getattr(pruner, "label", ref.name))


def _methods(opts: PruneStageOptions) -> list[Any]:
    from rtk.pruning import Method

    return [Method(_label(ref), ref.spec.build(ref.opts), ref.describe()) for ref in opts.pruners]


def _check(opts: PruneStageOptions, planning: rtk.Planning) -> list[str]:
    problems = planning.check_model(opts.model, "model")
    labels: dict[str, int] = {}
    for i, ref in enumerate(opts.pruners):
        if not ref.resolved:  # the reference did not resolve; that problem is reported already
            continue
        label = _label(ref)
        if label in labels:
            problems.append(
                f"{planning.where}.pruners[{i}]: method {label!r} also appears at pruners[{labels[label]}]; "
                "the pruned models would share names"
            )
        labels[label] = i
    from rtk.pruning import make_loop_config, pruned_name

    try:
        make_loop_config(
            epochs=1,
            batch_size=opts.batch_size,
            lr=opts.lr,
            optimizer=opts.optimizer,
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            options=opts.loop,
            where=f"{planning.where}.loop",
        )
    except rtk.ConfigError as exc:
        problems.extend(exc.problems)
    base = rtk.ModelRef.parse(opts.model).name
    for label in labels:
        for target in opts.targets():
            name = pruned_name(base, label, target)
            if name in planning.models:
                problems.append(
                    f"{planning.where}: the pruned model {name!r} would replace a model of that name "
                    "made earlier (by another prune stage or declared under [models]); prune a "
                    "differently named copy or change the method or compression"
                )
            planning.models.add(name)
    return problems


def _certifier_fn(ref: rtk.CertifierRef, opts: PruneStageOptions, device: Any):
    certifier = ref.spec.build(ref.opts)

    def certify(model, split) -> float:
        from rtk.certify import verified_accuracy

        return verified_accuracy(certifier, model, split, batch_size=opts.eval_batch_size, device=device)

    return ref.describe(), certify


@components.register(rtk.StageSpec, "prune", PruneStageOptions, check=_check)
def _run(ctx: rtk.StageContext, opts: PruneStageOptions) -> rtk.StageResult:
    """pre-train -> prune -> fine-tune with one objective; the compression table (params, MACs, sparsity,
    clean/robust/verified accuracy)"""
    import copy

    from rtk.data import subset
    from rtk.pruning import (
        Evaluator,
        LayerSelection,
        compress,
        dense_export,
        plot_accuracy_vs_compression,
        pruned_recipe,
    )

    base = rtk.ModelRef.parse(opts.model).name
    model = ctx.model(opts.model).to(ctx.device)  # "name@tag" loads that checkpoint as a fresh module
    entry = ctx.entry(base)
    dense_before = copy.deepcopy(model).cpu()
    objective = opts.trainer.spec.build(opts.trainer.opts)
    schedule = opts.schedule()
    split = subset(ctx.data.test, opts.eval_limit, ctx.experiment.seed)
    evaluator = Evaluator(
        split,
        attacks=[(ref.describe(), lambda m, ref=ref: ref.spec.build(m, ref.opts)) for ref in opts.attacks],
        certifiers=[_certifier_fn(ref, opts, ctx.device) for ref in opts.certifiers],
        batch_size=opts.eval_batch_size,
        device=ctx.device,
    )
    selection = LayerSelection(
        tuple(opts.layers), tuple(opts.exclude), opts.keep_first, opts.keep_last, where=f"stages[{ctx.stage.index}]"
    )
    methods = _methods(opts)

    def on_pretrained(m):
        ctx.save_model(
            base, m, "pretrained", metadata={"trainer": opts.trainer.describe(), "epochs": opts.pretrain_epochs}
        )

    def on_pruned(name, m, info):
        meta = {
            "pruning": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
            "trainer": opts.trainer.describe(),
        }
        structured = bool(info.get("structured"))
        if opts.export == "dense":
            dense_export(m)
        recipe = pruned_recipe(
            entry.recipe,
            m,
            dense=dense_before if structured else None,
            method=info.get("method"),
            ratio=info.get("ratio"),
            trainer=opts.trainer.describe(),
        )
        ctx.add_model(name, m, recipe, metadata=meta)

    result = compress(
        model,
        methods,
        opts.targets(),
        data=ctx.data,
        objective=objective,
        selection=selection,
        schedule=schedule,
        evaluate=evaluator,
        model_name=base,
        device=ctx.device,
        seed=ctx.seed,
        timing=opts.timing,
        on_pretrained=on_pretrained if opts.pretrain_epochs else None,
        on_pruned=on_pruned,
    )
    table = result.table
    fig = plot_accuracy_vs_compression(
        table, ctx.figure_path("accuracy_vs_compression"), title=f"{base}: {opts.trainer.describe()}"
    )
    return rtk.StageResult(
        tables={"compression": table, "accuracy": result.attacks},
        figures={"accuracy_vs_compression": fig},
        summary=_summary(table, opts),
        metrics=_metrics(table),
    )


def _summary(table, opts: PruneStageOptions) -> str:
    dense = table[table["method"] == "dense"].iloc[0]
    robust = "robust_acc" in table
    phases = (
        (["pre-training"] if opts.pretrain_epochs else [])
        + (["HYDRA's score training"] if any(r.name == "hydra" for r in opts.pruners) and opts.score_epochs else [])
        + (["fine-tuning"] if opts.finetune_epochs else [])
    )
    used = f" {', '.join(phases).capitalize()}: all with `{opts.trainer.describe()}`." if phases else ""
    lines = [
        f"Pruned `{opts.model}` with {', '.join(r.describe() for r in opts.pruners)}.{used} "
        f"Dense: clean {dense['clean_acc']:.3f}" + (f", robust {dense['robust_acc']:.3f}" if robust else "") + "."
    ]
    for _, row in table[table["method"] != "dense"].iterrows():
        part = f"- `{row['model']}`: sparsity {row['sparsity']:.3f}, clean {row['clean_frac']:.0%} of dense"
        if robust:
            part += f", robust {row['robust_frac']:.0%} of dense"
        if "verified_frac" in row and row.get("verified_frac") == row.get("verified_frac"):
            part += f", verified {row['verified_frac']:.0%} of dense"
        lines.append(part + ".")
    if "verified_acc" not in table:
        lines.append("Verified robust accuracy was not computed (add `certifiers = [...]`, e.g. ibp or crown).")
    return "\n".join(lines)


def _metrics(table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, row in table[table["method"] != "dense"].iterrows():
        for col in ("clean_frac", "robust_frac", "verified_frac"):
            if col in row and row[col] == row[col]:
                out[f"{row['model']}:{col}"] = float(row[col])
    return out


rtk_pruners = components.hookimpl(rtk.PrunerSpec)
rtk_stages = components.hookimpl(rtk.StageSpec)
