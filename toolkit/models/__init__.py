"""Models: architectures, the Normalize layer, and checkpoint I/O."""

from .checkpoint import ModelRecipe, load_checkpoint, load_state_strict, read_spec, save_checkpoint
from .layers import Normalize

__all__ = ["ModelRecipe", "Normalize", "load_checkpoint", "load_state_strict", "read_spec", "save_checkpoint"]
