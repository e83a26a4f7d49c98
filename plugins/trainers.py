"""Built-in trainers (standard, PGD-AT, TRADES, MART, fast AT) and the ``train`` and
``fine-tune`` stages. The objectives and the loop live in :mod:`rtk.training`."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

import rtk
from rtk.training import LoopConfig

components = rtk.Components()


# ---------------------------------------------------------------------------- trainer options
class StandardOptions(rtk.Options):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")


class _AdversarialOptions(rtk.Options):
    norm: rtk.NormLinfL2 = Field("Linf", description="threat model")
    eps: rtk.Eps = Field(8 / 255, gt=0, description="training radius, a float or a fraction such as '8/255'")
    alpha: rtk.Eps | None = Field(None, gt=0, description="step size at the full radius (default per trainer)")
    steps: int = Field(10, ge=1, le=1000, description="attack steps")
    attack_bn: Literal["eval", "train"] = Field(
        "eval", description="model mode during the attack: eval (BN running stats, not updated) or train"
    )
    eps_warmup: rtk.TrainingSpan = Field(
        rtk.Span(0.0), description="clean training (eps 0) before the ramp: epochs (3), or a share of the run ('10%')"
    )
    eps_ramp: rtk.TrainingSpan = Field(
        rtk.Span(0.0),
        description="eps rises linearly to its target over this: epochs (5), or a share of the run ('40%')",
    )

    @field_validator("eps")
    @classmethod
    def _eps_range(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("norm", "Linf") == "Linf" and v > 1:
            raise ValueError(
                f"eps = {v:g} is out of range for Linf on inputs in [0, 1]: allowed 0 < eps <= 1 "
                "(write fractions such as '8/255'); an L2 radius needs norm = 'L2'"
            )
        return v


class PGDATOptions(_AdversarialOptions):
    random_start: bool = Field(True, description="start each attack from a uniform random point in the eps-ball")


class TRADESOptions(_AdversarialOptions):
    beta: float = Field(6.0, ge=0, description="weight of the KL robustness term (TRADES paper, HYDRA: 6)")


class MARTOptions(_AdversarialOptions):
    beta: float = Field(6.0, ge=0, description="weight of the misclassification-aware KL term (MART code: 5-6)")


class FastATOptions(_AdversarialOptions):
    steps: int | None = Field(None, description="fast AT takes exactly one FGSM step; leave unset")
    alpha: rtk.Eps | None = Field(None, gt=0, description="FGSM step (default 1.25 * eps, Wong et al.)")

    @field_validator("steps")
    @classmethod
    def _one_step(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("fast-at takes exactly one FGSM step; for multi-step training use the trainer 'pgd-at'")
        return v

    def as_kwargs(self, **scope: Any) -> dict[str, Any]:
        return {**super().as_kwargs(**scope), "steps": 1}


# ---------------------------------------------------------------------------- stages
class TrainStageOptions(LoopConfig):
    model: str = Field(description="name of the model to train (declared under [models])")
    trainer: rtk.TrainerRef = Field(
        default_factory=lambda: rtk.TrainerRef(name="standard"),
        description="a trainer name, or a table {name = ..., options}",
    )
    amp: bool | None = Field(None, description="mixed precision on CUDA (default: the experiment's amp)")
    params: list[str] | None = Field(
        None,
        min_length=1,
        description="name patterns of the parameters to train (globs, or 're:REGEX'); the others stay frozen "
        "(default: all)",
    )
    resume: bool = Field(True, description="when the run is resumed, continue an interrupted stage from its last epoch")


class FineTuneStageOptions(TrainStageOptions):
    model: str = Field(description="the model to write (a new name, or an existing model to fine-tune in place)")
    source: str | None = Field(
        None,
        description="where to start: a model or model@tag such as 'robust@best' (default: the model's current state)",
    )
    epochs: int = Field(5, ge=1, description="number of epochs")
    lr: float = Field(0.01, gt=0, description="learning rate (fine-tuning typically uses a lower one)")


def _loop_config(opts: TrainStageOptions, ctx_amp: bool) -> LoopConfig:
    """The LoopConfig part of stage options, keeping which keys were given (for validation)."""
    fields = LoopConfig.model_fields
    data = {
        k: getattr(opts, k)
        for k in fields
        if k != "amp" and (k in opts.model_fields_set or getattr(opts, k) != fields[k].default)
    }
    data["amp"] = ctx_amp if opts.amp is None else opts.amp
    return LoopConfig(**data)


def _trainer_problems(opts: TrainStageOptions, where: str) -> list[str]:
    if not opts.trainer.resolved:  # the reference did not resolve; that problem is reported already
        return []
    topts = opts.trainer.opts
    end = sum(rtk.Span.parse(getattr(topts, k, 0.0)).epochs(opts.epochs) for k in ("eps_warmup", "eps_ramp"))
    if end > opts.epochs:
        return [
            (
                f"{where}.trainer: the eps warm-up + ramp ends at epoch {end:g}, after training ends "
                f"({opts.epochs} epochs)"
            )
        ]
    return []


def _check_train(opts: TrainStageOptions, planning: rtk.Planning):
    return planning.check_model(opts.model, "model") + _trainer_problems(opts, planning.where)


def _check_fine_tune(opts: FineTuneStageOptions, planning: rtk.Planning):
    problems = _trainer_problems(opts, planning.where)
    if rtk.ModelRef.parse(opts.model).tag is not None:
        problems.append(
            f"{planning.where}.model: {opts.model!r} names a checkpoint; give a model name "
            "(start from a checkpoint with source = 'model@tag')"
        )
    if opts.source is not None:
        problems += planning.check_model(opts.source, "source")
    else:
        problems += planning.check_model(opts.model, "model")
    planning.models.add(rtk.ModelRef.parse(opts.model).name)
    return problems


def _select_params(module, patterns: list[str] | None):
    """The parameters whose names match any pattern (``rtk.NamePattern``; others frozen), or None for all."""
    if patterns is None:
        return None
    parsed = [rtk.NamePattern.parse(pat, "params") for pat in patterns]
    chosen, names = [], []
    for name, p in module.named_parameters():
        if any(pat.matches(name) for pat in parsed):
            chosen.append(p)
        else:
            p.requires_grad_(False)
        names.append(name)
    if not chosen:
        raise rtk.ConfigError(f"params: {patterns} match no parameter; the model's parameters are: {', '.join(names)}")
    return chosen


def _describe(ref: rtk.TrainerRef) -> str:
    """``name(key=value, ...)`` with keys sorted, so a resumed run describes it identically."""
    if not ref.options:
        return ref.name
    return f"{ref.name}({', '.join(f'{k}={v}' for k, v in sorted(ref.options.items()))})"


def _train(ctx: rtk.StageContext, opts: TrainStageOptions, name: str, module) -> rtk.StageResult:
    from rtk.models import read_spec
    from rtk.training import has_state, plot_history, train_model

    objective = opts.trainer.spec.build(opts.trainer.opts)
    cfg = _loop_config(opts, ctx.amp)
    desc = _describe(opts.trainer)
    state_dir = ctx.artifact_dir / "state"
    resuming = bool(ctx.resume and opts.resume and has_state(state_dir))

    def save(tag: str, model, meta: dict[str, Any]):
        return ctx.save_model(name, model, tag, metadata={**meta, "trainer": desc}, make_current=(tag == "last"))

    flags = {pname: p.requires_grad for pname, p in module.named_parameters()}
    try:
        chosen = _select_params(module, opts.params)
        model, dist_kw, cfg = _distribute(ctx, module, cfg, opts.params is not None)
        result = train_model(
            model,
            objective,
            ctx.data,
            cfg,
            device=ctx.device,
            seed=ctx.seed,
            parameters=chosen,
            out=ctx.artifact_dir,
            checkpoint=save,
            resume=resuming,
            plot=False,
            **dist_kw,
        )
    finally:  # params froze the others for this stage only
        for pname, p in module.named_parameters():
            p.requires_grad_(flags[pname])
    if cfg.restore_best and result.best_epoch is not None and "best" in result.checkpoints:
        meta = read_spec(result.checkpoints["best"]).get("metadata", {})
        ctx.save_model(name, module, "best", metadata=meta, make_current=True)
    history = result.history.copy()
    history.insert(0, "model", name)
    history.insert(1, "trainer", desc)
    fig = plot_history(
        result.history, ctx.figure_path("robust-overfitting"), best_epoch=result.best_epoch, title=f"{name}: {desc}"
    )
    return rtk.StageResult(
        tables={"history": history},
        figures={"robust-overfitting": fig},
        summary=_summary(name, desc, result, cfg),
        metrics=_metrics(result),
    )


def _distribute(ctx: rtk.StageContext, module, cfg: LoopConfig, partial: bool):
    """Under torchrun: DDP (``rtk.distributed.wrap_model``), each rank's shard of every
    global batch (``DistributedBatchSampler``) with the loss weights of an uneven last batch,
    and per-rank seeds for attack and augmentation randomness. ``batch_size`` stays the
    *global* batch, so the optimizer sees the same steps as in one process; each rank takes
    ``batch_size / world`` of it. A single process gets the module and config unchanged."""
    from rtk import distributed as rd
    from rtk.runtime import seed_everything

    if not rd.is_distributed():
        return module, {}, cfg
    world = rd.world_size()
    if cfg.batch_size % world:
        raise rtk.ConfigError(
            f"batch_size = {cfg.batch_size} is the global batch and must be divisible by the "
            f"number of processes ({world}); choose a multiple of {world}"
        )
    local = cfg.batch_size // world
    sampler = rd.DistributedBatchSampler(len(ctx.data.train), local, seed=ctx.seed, shuffle=True)
    seed_everything(rd.rank_seed(ctx.seed))  # rank 0 keeps the single-process seed
    model = rd.wrap_model(module, ctx.device, find_unused_parameters=partial)
    kw = {"epoch_indices": sampler.epoch_indices, "batch_weights": sampler.weights}
    return model, kw, cfg.model_copy(update={"batch_size": local})


def _summary(name: str, desc: str, result, cfg: LoopConfig) -> str:
    h = result.history
    last = h.iloc[-1]
    parts = [
        f"Trained `{name}` with `{desc}` for {result.epochs_run} of {cfg.epochs} epochs"
        + (" (stopped early)" if result.stop_reason == "early-stopped" else "")
        + (f", resumed after epoch {result.resumed_from}" if result.resumed_from else "")
        + "."
    ]
    if "test_clean_acc" in h and last.notna().get("test_clean_acc", False):
        line = f"Last epoch: test accuracy {last['test_clean_acc']:.3f}"
        if last.notna().get("test_robust_acc", False):
            line += f", under PGD {last['test_robust_acc']:.3f}"
        parts.append(line + ".")
    if result.best_epoch is not None:
        parts.append(f"Best epoch {result.best_epoch} by {result.monitor} = {result.best_value:.3f}.")
    if result.checkpoints:
        parts.append("Checkpoints: " + ", ".join(f"`{t}`" for t in result.checkpoints) + ".")
    return " ".join(parts)


def _metrics(result) -> dict[str, Any]:
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    out = {
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "monitor": result.monitor,
        "stop_reason": result.stop_reason,
        "epochs_run": result.epochs_run,
    }
    for k in ("test_clean_acc", "test_robust_acc", "train_clean_acc", "train_robust_acc"):
        v = last.get(k)
        if v is not None and not math.isnan(v):
            out[k] = float(v)
    out["test_acc"] = out.get("test_clean_acc")
    return out


@components.register(rtk.StageSpec, "train", TrainStageOptions, check=_check_train)
def _run_train(ctx: rtk.StageContext, opts: TrainStageOptions) -> rtk.StageResult:
    """train a model with a registered trainer (robust-overfitting curve, checkpoints last/best/epoch-N, resume, early
    stopping)"""
    return _train(ctx, opts, opts.model, ctx.model(opts.model))


@components.register(rtk.StageSpec, "fine-tune", FineTuneStageOptions, check=_check_fine_tune)
def _run_fine_tune(ctx: rtk.StageContext, opts: FineTuneStageOptions) -> rtk.StageResult:
    """continue training from a model or checkpoint (e.g. robust@best), typically with a lower learning rate"""
    from rtk.training import has_state

    name = opts.model
    source = opts.source or name
    source_ref = rtk.ModelRef.parse(source)
    base = source_ref.name
    if ctx.resume and opts.resume and name in ctx.models and has_state(ctx.artifact_dir / "state"):
        module = ctx.model(name)  # the saved training state restores the weights
    elif source_ref.tag is not None:
        module = ctx.model(source)  # a fresh module loaded from that checkpoint
    else:
        module = ctx.model(base)
        if name != base:
            module = copy.deepcopy(module)
    if name not in ctx.models:
        ctx.add_model(name, module, ctx.entry(base).recipe, tag="start", metadata={"source": source})
    elif ctx.entry(name).module is not module:
        ctx.save_model(name, module, "start", metadata={"source": source}, make_current=True)
    return _train(ctx, opts, name, module)


#: The built-in trainers: name, options, objective class in :mod:`rtk.training` (looked up when built, so that
#: listing the trainers imports no torch), summary.
_TRAINERS = (
    ("standard", StandardOptions, "StandardObjective", "cross-entropy on clean inputs"),
    ("pgd-at", PGDATOptions, "PGDATObjective", "PGD adversarial training (Madry et al. 2018)"),
    ("trades", TRADESOptions, "TRADESObjective", "TRADES: clean CE + beta * KL to adversarial (Zhang et al. 2019)"),
    ("mart", MARTOptions, "MARTObjective", "MART: misclassification-aware adversarial training (Wang et al. 2020)"),
    ("fast-at", FastATOptions, "FastATObjective", "fast AT: FGSM with random init, step 1.25 eps (Wong et al. 2020)"),
)

components.table(rtk.TrainerSpec, _TRAINERS, module="rtk.training")

rtk_trainers = components.hookimpl(rtk.TrainerSpec)
rtk_stages = components.hookimpl(rtk.StageSpec)
