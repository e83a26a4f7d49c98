"""Training: objectives (standard, PGD-AT, TRADES, MART, fast AT), the lean inner attacks,
and the shared loop with schedules, evaluation, checkpoints, exact resume and early stopping.

Quick use::

    from rtk.training import LoopConfig, PGDATObjective, train_model
    result = train_model(model, PGDATObjective(eps=0.1, steps=7), data, LoopConfig(epochs=5, lr=0.05))
    result.history   # one row per epoch: loss, clean/robust train and test accuracy, ...
"""

from __future__ import annotations

from ..lazy import LazyFace

#: submodule -> the public names it defines; importing this face imports none of them (each on
#: first use), so reading option models from it needs no torch (see rtk.lazy)
_face = LazyFace(
    __name__,
    {
        "attacks": (
            "bn_mode",
            "default_alpha",
            "perturb",
        ),
        "config": ("HISTORY_COLUMNS", "LoopConfig"),
        "loop": (
            "Callback",
            "Checkpointer",
            "LoopState",
            "TrainResult",
            "accuracy",
            "evaluate",
            "fit",
            "has_state",
            "train_model",
        ),
        "objectives": (
            "AdversarialObjective",
            "EpsSchedule",
            "FastATObjective",
            "MARTObjective",
            "Objective",
            "ObjectiveOutput",
            "PGDATObjective",
            "Progress",
            "StandardObjective",
            "TRADESObjective",
        ),
        "plots": ("plot_history",),
        "schedules": (
            "lr_factor",
            "make_optimizer",
            "make_scheduler",
        ),
    },
)
__all__ = _face.names
__getattr__ = _face.attr  # PEP 562: each name's submodule imported on its first use
__dir__ = _face.dir
