"""Built-in trainers (training objectives) and the ``train`` stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import rtk
from rtk.training import LoopConfig, StandardObjective, fit


class StandardOptions(rtk.Options):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TrainStageOptions(rtk.Options):
    model: str = Field(description="name of the model to train (declared under [models])")
    trainer: rtk.TrainerRef = Field(default_factory=lambda: rtk.TrainerRef(name="standard"))
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)


def _check_train(opts: TrainStageOptions, planning: rtk.Planning):
    return planning.check_model(opts.model, "model")


def _run_train(ctx: rtk.StageContext, opts: TrainStageOptions) -> rtk.StageResult:
    model = ctx.model(opts.model)
    objective = opts.trainer.spec.build(opts.trainer.opts)
    cfg = LoopConfig(opts.epochs, opts.batch_size, opts.lr, opts.optimizer, opts.momentum, opts.weight_decay)
    history = fit(model, objective, ctx.data, cfg, device=ctx.device, seed=ctx.seed)
    history.insert(0, "model", opts.model)
    history.insert(1, "trainer", opts.trainer.name)
    ctx.save_model(opts.model, model, "last", metadata={"epochs": opts.epochs, "trainer": opts.trainer.describe()})
    last = history.iloc[-1]
    return rtk.StageResult(
        tables={"history": history},
        summary=f"Trained `{opts.model}` with `{opts.trainer.describe()}` for {opts.epochs} epochs: "
                f"test accuracy {last['test_acc']:.3f}.",
        metrics={"test_acc": float(last["test_acc"])},
    )


@rtk.hookimpl
def rtk_trainers():
    yield rtk.TrainerSpec(name="standard", summary="cross-entropy on clean inputs", options=StandardOptions,
                          build=lambda o: StandardObjective(o.label_smoothing))


@rtk.hookimpl
def rtk_stages():
    yield rtk.StageSpec(name="train", summary="train a model with a registered trainer", options=TrainStageOptions,
                        run=_run_train, check=_check_train)
