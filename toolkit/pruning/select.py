"""Which layers are pruned: name patterns, with the first layer and the classifier kept
dense by default (as in Sehwag et al. 2019 and HYDRA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..refs import NamePattern
from .masks import is_prunable


@dataclass(frozen=True)
class LayerSelection:
    """How to choose layers: glob patterns over module names (``features.*``, ``*conv*``)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    keep_first: bool = True
    keep_last: bool = True
    where: str = ""  # key path prefix for messages, e.g. "stages[2]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "keep_first": self.keep_first,
            "keep_last": self.keep_last,
        }


@dataclass(frozen=True)
class SelectedLayers:
    """The outcome: the layers to prune, and which were kept dense and why."""

    names: tuple[str, ...]
    first: str | None
    last: str | None
    kept_dense: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.names), "first": self.first, "last": self.last, "kept_dense": dict(self.kept_dense)}


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv/Linear layer of ``model`` by name, in registration order."""
    return {name: m for name, m in model.named_modules() if name and is_prunable(m)}


def execution_order(model: nn.Module, example_inputs: torch.Tensor | None) -> list[str]:
    """Names of the prunable layers in the order a forward pass calls them (registration
    order when no example input is given)."""
    layers = prunable_layers(model)
    if example_inputs is None:
        return list(layers)
    order: list[str] = []
    names = {id(m): n for n, m in layers.items()}

    def hook(module: nn.Module, _inputs: Any, _output: Any) -> None:
        name = names[id(module)]
        if name not in order:
            order.append(name)

    handles = [m.register_forward_hook(hook) for m in layers.values()]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    order += [n for n in layers if n not in order]  # layers the forward pass never calls
    return order


def select_layers(
    model: nn.Module, selection: LayerSelection, example_inputs: torch.Tensor | None = None
) -> SelectedLayers:
    """Apply ``selection`` to ``model``. Raises ConfigError, naming the key and listing the
    prunable layers, when a pattern matches nothing or nothing is left to prune."""
    layers = prunable_layers(model)
    if not layers:
        raise ConfigError(f"{_key(selection.where, 'layers')}: the model has no Conv or Linear layer to prune")
    available = ", ".join(layers)
    problems = []
    parsed: dict[str, list[NamePattern]] = {}
    for key, patterns in (("layers", selection.include), ("exclude", selection.exclude)):
        parsed[key] = []
        for i, pat in enumerate(patterns):
            try:
                pattern = NamePattern.parse(pat, f"{_key(selection.where, key)}[{i}]")
            except ConfigError as exc:
                problems += exc.problems
                continue
            parsed[key].append(pattern)
            if not any(pattern.matches(n) for n in layers):
                problems.append(
                    f"{_key(selection.where, key)}[{i}]: pattern {pat!r} matches no prunable layer; "
                    f"prunable layers (Conv/Linear): {available}"
                )
    if problems:
        raise ConfigError(problems)
    order = execution_order(model, example_inputs)
    first, last = (order[0], order[-1]) if order else (None, None)
    kept: dict[str, str] = {}
    chosen = []
    for name in order:
        if not any(p.matches(name) for p in parsed["layers"]):
            continue
        if any(p.matches(name) for p in parsed["exclude"]):
            kept[name] = "excluded by pattern"
            continue
        if selection.keep_first and name == first:
            kept[name] = "first layer (keep_first)"
            continue
        if selection.keep_last and name == last:
            kept[name] = "classifier (keep_last)"
            continue
        chosen.append(name)
    if not chosen:
        raise ConfigError(
            f"{_key(selection.where, 'layers')}: no layer is left to prune ({'; '.join(f'{k}: {v}' for k, v in kept.items())}); "
            f"prunable layers: {available}. Widen include, or set keep_first/keep_last = false"
        )
    return SelectedLayers(tuple(chosen), first, last, kept)


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def resolve_names(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Look up layers by name; a missing one raises ConfigError naming it."""
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError(f"layers not in the model: {', '.join(missing)}")
    return {n: mods[n] for n in names}


__all__ = ["LayerSelection", "SelectedLayers", "execution_order", "prunable_layers", "resolve_names", "select_layers"]
