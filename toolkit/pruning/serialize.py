"""Saving and loading pruned models without pickle.

A pruned model is saved with :func:`rtk.models.save_checkpoint` like any other: safetensors
weights plus a JSON spec. The spec's ``extra.transforms`` list records the pruning, and
:func:`rtk.models.load_checkpoint` replays it on the freshly built architecture before the
weights are loaded:

- ``pruning.masks``: which layers carry masks (the masks themselves are the ``bool``
  tensors ``<layer>.weight_mask`` in the safetensors file), plus method and ratio;
- ``pruning.shapes``: for structured pruning, the new shape of every pruned module
  (attributes such as ``out_channels`` and the shapes of its tensors).

Reloading gives the same module classes, shapes and outputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.checkpoint import ModelRecipe
from .masks import make_masked_placeholder, masks_of

MASKS = "pruning.masks"
SHAPES = "pruning.shapes"

#: Module attributes that change with the number of channels.
SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_channels",
    "num_groups",
    "num_parameters",
    "embedding_dim",
    "num_embeddings",
)


#: The most elements a resized tensor may have (2**30: 4 GiB of float32).
MAX_ELEMENTS = 2**30


def _size_ok(v: Any) -> bool:
    if isinstance(v, list):
        return len(v) <= 8 and all(_size_ok(x) for x in v)
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31


# ----------------------------------------------------------------------------- structured shapes
def _module_shape(m: nn.Module) -> dict[str, Any]:
    attrs = {}
    for a in SHAPE_ATTRS:
        if hasattr(m, a):
            v = getattr(m, a)
            if isinstance(v, (int, tuple, list)):
                attrs[a] = list(v) if isinstance(v, (tuple, list)) else int(v)
    tensors = {k: list(v.shape) for k, v in list(m._parameters.items()) + list(m._buffers.items()) if v is not None}
    return {"type": type(m).__name__, "attrs": attrs, "tensors": tensors}


def shape_changes(dense: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """The ``pruning.shapes`` entry: every module whose own tensors changed shape."""
    before = dict(dense.named_modules())
    changed = {}
    for name, m in pruned.named_modules():
        old = before.get(name)
        if old is None:
            raise CheckpointError(f"structured pruning added module {name!r}; only resizing is recorded")
        now = _module_shape(m)
        if now != _module_shape(old):
            changed[name] = now
    return {"kind": SHAPES, "modules": changed}


def apply_shapes(model: nn.Module, entry: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Resize the modules listed in a ``pruning.shapes`` entry (values are loaded afterwards)."""
    mods = dict(model.named_modules())
    for name, rec in entry.get("modules", {}).items():
        m = mods.get(name)
        if m is None:
            raise CheckpointError(f"pruning.shapes names module {name!r}, which the architecture does not have")
        if type(m).__name__ != rec.get("type"):
            raise CheckpointError(
                f"pruning.shapes: module {name!r} is a {type(m).__name__}, the checkpoint recorded a {rec.get('type')}"
            )
        for a, v in rec.get("attrs", {}).items():
            if a not in SHAPE_ATTRS or not hasattr(m, a) or not _size_ok(v):
                raise CheckpointError(
                    f"pruning.shapes: module {name!r} attribute {a!r} = {v!r} is not allowed; only "
                    f"{', '.join(SHAPE_ATTRS)} that the module has, as sizes in [0, 2**31)"
                )
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
        for k, shape in rec.get("tensors", {}).items():
            if not (isinstance(shape, list) and len(shape) <= 8 and all(_size_ok(d) for d in shape)):
                raise CheckpointError(f"pruning.shapes: module {name!r} tensor {k!r}: invalid shape {shape!r}")
            if math.prod(shape) > MAX_ELEMENTS:
                raise CheckpointError(
                    f"pruning.shapes: module {name!r} tensor {k!r} of shape {shape} has more than {MAX_ELEMENTS} "
                    "elements; refused"
                )
            if k in m._parameters and m._parameters[k] is not None:
                old = m._parameters[k]
                m._parameters[k] = nn.Parameter(
                    torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
                )
            elif k in m._buffers and m._buffers[k] is not None:
                old = m._buffers[k]
                m._buffers[k] = torch.empty(shape, dtype=old.dtype, device=old.device)
            else:
                raise CheckpointError(f"pruning.shapes: module {name!r} has no tensor {k!r}")
    return model


# ----------------------------------------------------------------------------- masks
def masks_entry(model: nn.Module, **info: Any) -> dict[str, Any] | None:
    """The ``pruning.masks`` entry for the masked layers of ``model`` (None if there are none)."""
    masks = masks_of(model)
    if not masks:
        return None
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {"kind": MASKS, "layers": sorted(masks), "sparsity": 1 - kept / max(total, 1), **info}


def apply_masks_entry(
    model: nn.Module, entry: dict[str, Any], extra: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Turn the listed layers into masked layers; their masks load with the weights."""
    mods = dict(model.named_modules())
    for name in entry.get("layers", []):
        if name not in mods:
            raise CheckpointError(f"pruning.masks names layer {name!r}, which the architecture does not have")
        make_masked_placeholder(mods[name])
    return model


# ----------------------------------------------------------------------------- recipes
def transforms_of(recipe: ModelRecipe) -> list[dict[str, Any]]:
    return list((recipe.extra or {}).get("transforms", []))


def pruned_recipe(recipe: ModelRecipe, model: nn.Module, *, dense: nn.Module | None = None, **info: Any) -> ModelRecipe:
    """The recipe of a pruned ``model``: the base recipe plus the transforms that rebuild it.

    Give ``dense`` (the model before structured pruning) to record new shapes. Earlier mask
    entries are replaced by the current masks; earlier shape entries are kept.
    """
    transforms = [t for t in transforms_of(recipe) if t.get("kind") != MASKS]
    if dense is not None:
        change = shape_changes(dense, model)
        if change["modules"]:
            change.update(info)
            transforms.append(change)
    entry = masks_entry(model, **info)
    if entry is not None:
        transforms.append(entry)
    extra = {k: v for k, v in (recipe.extra or {}).items() if k != "transforms"}
    if transforms:
        extra["transforms"] = transforms
    return dataclasses.replace(recipe, extra=extra)


def exported_recipe(recipe: ModelRecipe) -> ModelRecipe:
    """The recipe after :func:`rtk.pruning.dense_export`: masks are gone, shapes stay."""
    transforms = [t for t in transforms_of(recipe) if t.get("kind") != MASKS]
    extra = {k: v for k, v in (recipe.extra or {}).items() if k != "transforms"}
    if transforms:
        extra["transforms"] = transforms
    return dataclasses.replace(recipe, extra=extra)


def _register() -> None:
    from ..models import checkpoint

    register = getattr(checkpoint, "register_load_transform", None)
    if register is not None:
        register(MASKS, apply_masks_entry)
        register(SHAPES, apply_shapes)


_register()

__all__ = [
    "MASKS",
    "SHAPES",
    "apply_masks_entry",
    "apply_shapes",
    "exported_recipe",
    "masks_entry",
    "pruned_recipe",
    "shape_changes",
    "transforms_of",
]
