"""Training: objectives (standard, PGD-AT, TRADES, MART, fast AT), the lean inner attacks,
and the shared loop with schedules, evaluation, checkpoints, exact resume and early stopping.

Quick use::

    from rtk.training import LoopConfig, PGDATObjective, train_model
    result = train_model(model, PGDATObjective(eps=0.1, steps=7), data, LoopConfig(epochs=5, lr=0.05))
    result.history   # one row per epoch: loss, clean/robust train and test accuracy, ...
"""

from .attacks import bn_mode, default_alpha, perturb
from .config import LoopConfig
from .loop import (
    Callback,
    Checkpointer,
    LoopState,
    TrainResult,
    accuracy,
    evaluate,
    fit,
    has_state,
    train_model,
)
from .objectives import (
    AdversarialObjective,
    EpsSchedule,
    FastATObjective,
    MARTObjective,
    Objective,
    ObjectiveOutput,
    PGDATObjective,
    Progress,
    StandardObjective,
    TRADESObjective,
)
from .plots import plot_history
from .schedules import lr_factor, make_optimizer, make_scheduler

__all__ = [
    "AdversarialObjective",
    "Callback",
    "Checkpointer",
    "EpsSchedule",
    "FastATObjective",
    "LoopConfig",
    "LoopState",
    "MARTObjective",
    "Objective",
    "ObjectiveOutput",
    "PGDATObjective",
    "Progress",
    "StandardObjective",
    "TRADESObjective",
    "TrainResult",
    "accuracy",
    "bn_mode",
    "default_alpha",
    "evaluate",
    "fit",
    "has_state",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "perturb",
    "plot_history",
    "train_model",
]
