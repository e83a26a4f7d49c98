"""The options of the shared training loop, validated before any work starts.

:class:`LoopConfig` is an :class:`rtk.Options` model: the ``train`` and ``fine-tune`` stages
extend it, ``rtk train`` turns its fields into command-line options, and Python callers
build it directly (``LoopConfig(epochs=5, lr=0.05)``). Incompatible combinations (for
example one-cycle with piecewise milestones, Adam with momentum) are refused with a message
that names the keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..options import Eps, NormLinfL2, Options

#: The columns of a training history (``TrainResult.history``, history.csv), in order.
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "eps",
    "train_loss",
    "train_acc",
    "train_clean_acc",
    "train_robust_acc",
    "test_clean_acc",
    "test_robust_acc",
    "train_time_s",
    "eval_time_s",
)
#: Columns of the per-epoch history that ``monitor`` may name without a callback adding it.
MONITORABLE = ("test_robust_acc", "test_clean_acc", "train_robust_acc", "train_clean_acc", "train_acc")

#: Fields that change the training trajectory; a resumed run must agree on all of them.
TRAJECTORY_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "nesterov",
    "schedule",
    "milestones",
    "gamma",
    "lr_warmup",
    "pct_start",
    "lr_min",
    "grad_clip",
    "amp",
)


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
        "constant", description="learning-rate schedule, updated every step"
    )
    milestones: list[float] | None = Field(
        None, description="piecewise: epochs at which the rate is multiplied by gamma (default: 50% and 75% of epochs)"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="piecewise: factor applied at each milestone")
    lr_warmup: float = Field(
        0.0, ge=0, description="epochs of linear learning-rate warm-up (constant/piecewise/cosine)"
    )
    pct_start: float | None = Field(
        None, gt=0, lt=1, description="one-cycle: fraction of training spent rising to the peak rate (default 0.5)"
    )
    lr_min: float = Field(0.0, ge=0, description="cosine and one-cycle: the rate at the start/end of the cycle")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm of the trained parameters to this")
    amp: bool = Field(
        False, description="mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU"
    )
    augment: list[Literal["crop", "flip"]] = Field(
        default_factory=list,
        description="augment every training batch on the device: 'crop' (pad by crop_padding, crop back to the "
        "image size at a random offset), 'flip' (horizontal flip with probability 1/2); the CIFAR recipe of "
        "paper 1's code and HYDRA is ['crop', 'flip']; evaluation and similarity inputs are never augmented",
    )
    crop_padding: int = Field(4, ge=1, description="crop: pixels of padding on every side (the CIFAR recipe: 4)")
    crop_padding_mode: Literal["zero", "reflect"] = Field(
        "zero", description="crop: fill the padding with zeros (torchvision's RandomCrop, the papers' code) or reflect"
    )
    eval_every: int = Field(
        1,
        ge=0,
        description="evaluate every this many epochs and after the last; 0: never "
        "(no best checkpoint, no early stopping)",
    )
    eval_size: int = Field(
        1000,
        ge=0,
        description="size of the fixed held-out (test) subset attacked each evaluation; 0: no robust test accuracy",
    )
    eval_train_size: int | None = Field(
        None,
        ge=0,
        description="size of the fixed training subset evaluated clean and under attack (default eval_size; 0: off)",
    )
    eval_eps: Eps | None = Field(
        None, ge=0, description="radius of the evaluation PGD (default: the trainer's eps; none for standard training)"
    )
    eval_steps: int = Field(10, ge=1, description="steps of the evaluation PGD")
    eval_alpha: Eps | None = Field(
        None, gt=0, description="step of the evaluation PGD (default 2.5 * eval_eps / eval_steps)"
    )
    eval_norm: NormLinfL2 | None = Field(None, description="norm of the evaluation PGD (default: the trainer's)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for evaluation")
    checkpoint_every: int = Field(
        0, ge=0, description="also keep a checkpoint tagged epoch-N every this many epochs (0: off)"
    )
    monitor: str = Field(
        "test_robust_acc",
        description="history column that picks the best epoch and drives early stopping "
        "(when not set: test_robust_acc for a trainer with an eps and a robust evaluation, else test_clean_acc)",
    )
    patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations without improvement of monitor"
    )
    min_delta: float = Field(0.0, ge=0, description="smallest increase of monitor that counts as an improvement")
    restore_best: bool = Field(False, description="after training, load the best epoch's weights into the model")

    # Cross-key rules. Field validators run only for keys that were given, and see the keys
    # declared before them in ``info.data``, so each message is reported under its own key.
    @field_validator("momentum", "nesterov")
    @classmethod
    def _sgd_only(cls, v: Any, info: ValidationInfo) -> Any:
        if info.data.get("optimizer") == "adam":
            raise ValueError("momentum and nesterov apply only to optimizer = 'sgd' (Adam has betas)")
        if info.field_name == "nesterov" and v and info.data.get("momentum", 0.9) == 0:
            raise ValueError("nesterov needs momentum > 0")
        return v

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[str]) -> list[str]:
        twice = sorted({a for a in v if v.count(a) > 1})
        if twice:
            raise ValueError(f"{', '.join(repr(a) for a in twice)} listed more than once")
        return v

    @field_validator("crop_padding", "crop_padding_mode")
    @classmethod
    def _crop_only(cls, v: Any, info: ValidationInfo) -> Any:
        if "crop" not in info.data.get("augment", []):
            raise ValueError(f"{info.field_name} applies only with 'crop' in augment (augment = ['crop', 'flip'])")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        schedule, epochs = info.data.get("schedule", "constant"), info.data.get("epochs")
        if v is None:
            return v
        if schedule != "piecewise":
            raise ValueError(
                f"milestones apply only to schedule = 'piecewise', not {schedule!r}; remove milestones "
                "or use the piecewise schedule"
            )
        if epochs is not None and any(m <= 0 or m >= epochs for m in v):
            raise ValueError(f"milestones {v} must lie strictly between 0 and epochs ({epochs})")
        if list(v) != sorted(set(v)):
            raise ValueError(f"milestones {v} must be strictly increasing")
        return v

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("schedule", "constant") != "piecewise":
            raise ValueError(f"gamma applies only to schedule = 'piecewise', not {info.data.get('schedule')!r}")
        return v

    @field_validator("lr_warmup")
    @classmethod
    def _lr_warmup(cls, v: float, info: ValidationInfo) -> float:
        if v > 0 and info.data.get("schedule") == "one-cycle":
            raise ValueError(
                "lr_warmup cannot be combined with schedule = 'one-cycle' (one-cycle has its own rise; "
                "set pct_start instead)"
            )
        epochs = info.data.get("epochs")
        if epochs is not None and v >= epochs:
            raise ValueError(f"lr_warmup ({v} epochs) must be shorter than training ({epochs} epochs)")
        return v

    @field_validator("pct_start")
    @classmethod
    def _pct_start(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("schedule") != "one-cycle":
            raise ValueError(f"pct_start applies only to schedule = 'one-cycle', not {info.data.get('schedule')!r}")
        return v

    @field_validator("lr_min")
    @classmethod
    def _lr_min(cls, v: float, info: ValidationInfo) -> float:
        schedule, lr = info.data.get("schedule"), info.data.get("lr")
        if schedule not in ("cosine", "one-cycle"):
            raise ValueError(f"lr_min applies only to the cosine and one-cycle schedules, not {schedule!r}")
        if lr is not None and v >= lr:
            raise ValueError(f"lr_min ({v}) must be below lr ({lr})")
        return v

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str, info: ValidationInfo) -> str:
        if v in ("test_robust_acc",) and info.data.get("eval_size") == 0:
            raise ValueError(f"monitor = {v!r} needs eval_size > 0")
        return v

    @field_validator("patience", "restore_best")
    @classmethod
    def _needs_eval(cls, v: Any, info: ValidationInfo) -> Any:
        if v and info.data.get("eval_every") == 0:
            raise ValueError(f"{info.field_name} needs evaluations; eval_every = 0 turns them off")
        return v

    @property
    def train_eval_size(self) -> int:
        return self.eval_size if self.eval_train_size is None else self.eval_train_size

    def trajectory(self) -> dict:
        """The fields that determine the training trajectory (compared on resume)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in TRAJECTORY_FIELDS}
        if self.augment:  # only when on, so a state saved before augmentation existed still resumes
            out["augment"] = list(self.augment)
            if "crop" in self.augment:
                out.update(crop_padding=self.crop_padding, crop_padding_mode=self.crop_padding_mode)
        return out


__all__ = ["HISTORY_COLUMNS", "MONITORABLE", "TRAJECTORY_FIELDS", "LoopConfig"]
