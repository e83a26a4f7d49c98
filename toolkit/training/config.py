"""The options of the shared training loop, validated before any work starts.

:class:`LoopConfig` is an :class:`rtk.Options` model: the ``train`` and ``fine-tune`` stages
extend it, ``rtk train`` turns its fields into command-line options, and Python callers
build it directly (``LoopConfig(epochs=5, lr=0.05)``). Incompatible combinations (for
example one-cycle with piecewise milestones, Adam with momentum) are refused with a message
that names the keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..options import Eps, Options

#: Columns of the per-epoch history that ``monitor`` may name without a callback adding it.
MONITORABLE = ("test_robust_acc", "test_clean_acc", "train_robust_acc", "train_clean_acc", "train_acc")

#: Fields that change the training trajectory; a resumed run must agree on all of them.
TRAJECTORY_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "nesterov", "schedule",
                     "milestones", "gamma", "lr_warmup", "pct_start", "lr_min", "grad_clip", "amp")


class LoopConfig(Options):
    """Optimiser, learning-rate schedule, evaluation, checkpoints and early stopping."""

    epochs: int = Field(10, ge=1, description="number of epochs")
    batch_size: int = Field(128, ge=1, description="training batch size")
    lr: float = Field(0.1, gt=0, description="learning rate (the peak rate for one-cycle)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (with momentum) or adam")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (coupled, as torch's SGD/Adam)")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    schedule: Literal["constant", "piecewise", "cosine", "one-cycle"] = Field(
        "constant", description="learning-rate schedule, updated every step")
    milestones: list[float] | None = Field(
        None, description="piecewise: epochs at which the rate is multiplied by gamma (default: 50% and 75% of epochs)")
    gamma: float = Field(0.1, gt=0, le=1, description="piecewise: factor applied at each milestone")
    lr_warmup: float = Field(0.0, ge=0, description="epochs of linear learning-rate warm-up (constant/piecewise/cosine)")
    pct_start: float | None = Field(
        None, gt=0, lt=1, description="one-cycle: fraction of training spent rising to the peak rate (default 0.5)")
    lr_min: float = Field(0.0, ge=0, description="cosine and one-cycle: the rate at the start/end of the cycle")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm of the trained parameters to this")
    amp: bool = Field(False, description="mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU")
    eval_every: int = Field(1, ge=0, description="evaluate every this many epochs and after the last; 0: never "
                                                 "(no best checkpoint, no early stopping)")
    eval_size: int = Field(1000, ge=0, description="size of the fixed held-out (test) subset attacked each evaluation; 0: no robust test accuracy")
    eval_train_size: int | None = Field(
        None, ge=0, description="size of the fixed training subset evaluated clean and under attack (default eval_size; 0: off)")
    eval_eps: Eps | None = Field(None, ge=0, description="radius of the evaluation PGD (default: the trainer's eps; none for standard training)")
    eval_steps: int = Field(10, ge=1, description="steps of the evaluation PGD")
    eval_alpha: Eps | None = Field(None, gt=0, description="step of the evaluation PGD (default 2.5 * eval_eps / eval_steps)")
    eval_norm: Literal["Linf", "L2"] | None = Field(None, description="norm of the evaluation PGD (default: the trainer's)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for evaluation")
    checkpoint_every: int = Field(0, ge=0, description="also keep a checkpoint tagged epoch-N every this many epochs (0: off)")
    monitor: str = Field("test_robust_acc", description="history column that picks the best epoch and drives early stopping")
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without improvement of monitor")
    min_delta: float = Field(0.0, ge=0, description="smallest increase of monitor that counts as an improvement")
    restore_best: bool = Field(False, description="after training, load the best epoch's weights into the model")

    @model_validator(mode="after")
    def _compatible(self) -> LoopConfig:
        problems: list[str] = []
        given = self.model_fields_set
        if self.milestones is not None and self.schedule != "piecewise":
            problems.append(f"milestones apply only to schedule = 'piecewise', not {self.schedule!r}; remove milestones "
                            "or use the piecewise schedule")
        if "gamma" in given and self.schedule != "piecewise":
            problems.append(f"gamma applies only to schedule = 'piecewise', not {self.schedule!r}")
        if self.pct_start is not None and self.schedule != "one-cycle":
            problems.append(f"pct_start applies only to schedule = 'one-cycle', not {self.schedule!r}")
        if self.schedule == "one-cycle" and self.lr_warmup > 0:
            problems.append("lr_warmup cannot be combined with schedule = 'one-cycle' (one-cycle has its own rise; "
                            "set pct_start instead)")
        if "lr_min" in given and self.schedule not in ("cosine", "one-cycle"):
            problems.append(f"lr_min applies only to the cosine and one-cycle schedules, not {self.schedule!r}")
        if self.lr_min >= self.lr:
            problems.append(f"lr_min ({self.lr_min}) must be below lr ({self.lr})")
        if self.lr_warmup >= self.epochs:
            problems.append(f"lr_warmup ({self.lr_warmup} epochs) must be shorter than training ({self.epochs} epochs)")
        if self.milestones is not None:
            ms = list(self.milestones)
            if any(m <= 0 or m >= self.epochs for m in ms):
                problems.append(f"milestones {ms} must lie strictly between 0 and epochs ({self.epochs})")
            if ms != sorted(set(ms)):
                problems.append(f"milestones {ms} must be strictly increasing")
        if self.optimizer == "adam" and ({"momentum", "nesterov"} & given):
            problems.append("momentum and nesterov apply only to optimizer = 'sgd' (Adam has betas)")
        if self.nesterov and self.momentum == 0:
            problems.append("nesterov needs momentum > 0")
        if self.eval_every == 0 and (self.patience is not None or self.restore_best):
            problems.append("patience and restore_best need evaluations; eval_every = 0 turns them off")
        if "monitor" in given and self.monitor == "test_robust_acc" and self.eval_size == 0:
            problems.append("monitor = 'test_robust_acc' needs eval_size > 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def train_eval_size(self) -> int:
        return self.eval_size if self.eval_train_size is None else self.eval_train_size

    def trajectory(self) -> dict:
        """The fields that determine the training trajectory (compared on resume)."""
        return {k: getattr(self, k) for k in TRAJECTORY_FIELDS}


__all__ = ["LoopConfig", "MONITORABLE", "TRAJECTORY_FIELDS"]
