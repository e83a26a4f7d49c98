"""Training: objectives (standard, PGD-AT, TRADES, MART, fast AT), the lean inner attacks,
and the shared loop with schedules, evaluation, checkpoints, exact resume and early stopping.

Quick use::

    from rtk.training import LoopConfig, PGDATObjective, train_model
    result = train_model(model, PGDATObjective(eps=0.1, steps=7), data, LoopConfig(epochs=5, lr=0.05))
    result.history   # one row per epoch: loss, clean/robust train and test accuracy, ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .attacks import bn_mode, default_alpha, perturb
    from .config import HISTORY_COLUMNS, LoopConfig
    from .loop import Callback, Checkpointer, LoopState, TrainResult, accuracy, evaluate, fit, has_state, train_model
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
