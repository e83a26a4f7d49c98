"""Training: objectives and the shared loop."""

from .loop import LoopConfig, accuracy, fit
from .objectives import Objective, ObjectiveOutput, StandardObjective

__all__ = ["LoopConfig", "Objective", "ObjectiveOutput", "StandardObjective", "accuracy", "fit"]
