"""Features from models: forward hooks on layers selected by name pattern.

- :func:`select_layers` picks modules of a model by name (fnmatch globs, or regular
  expressions written ``re:...``), by default every Conv, BatchNorm, ReLU, pooling and
  Linear layer, in the order of ``named_modules()``. DDP and DataParallel wrappers are
  unwrapped (``.module``), so names are the same with and without them.
- :class:`FeatureHooks` records each selected layer's output during a forward pass,
  already reduced (flattened, or average-pooled) and detached, so the model's later
  in-place operations cannot change it. A module called several times in one forward
  (a shared ReLU) gives one layer per call: ``relu``, ``relu#2``, ...
- :func:`iter_features` streams batches of a split through one or more models (benign
  inputs, or adversarial inputs from an attack chosen per model) and yields the features of
  every layer per batch; :func:`collect_features` concatenates them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import unwrap
from ..errors import ConfigError
from ..refs import NamePattern
from ..runtime import progress
from .kernels import SimilarityError, Tensor

log = logging.getLogger(__name__)

#: Layer types hooked when no pattern is given (the layers of Cianfarani et al. 2022).
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Linear,
)

_POOL = re.compile(r"^(flatten|avg|avg([1-9]\d*))$")  # avgN with N >= 1


def select_layers(model: nn.Module, patterns: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers to hook, in ``named_modules()`` order.

    ``patterns``: fnmatch globs (``"features.*"``, ``"*relu*"``) or regular expressions
    (``"re:layer[0-9]+\\.conv1"``) matched against whole module names. Without patterns
    (or with ``["default"]``), every module of :data:`DEFAULT_TYPES`. Raises a
    :class:`~rtk.ConfigError` listing available names when nothing matches.
    """
    model = unwrap(model)
    named = [(n, m) for n, m in model.named_modules() if n]
    if not patterns or list(patterns) == ["default"]:
        chosen = [(n, m) for n, m in named if isinstance(m, DEFAULT_TYPES)]
    else:
        parsed = [NamePattern.parse(p, "layers") for p in patterns if p != "default"]
        chosen = [
            (n, m)
            for n, m in named
            if any(p.matches(n) for p in parsed) or ("default" in patterns and isinstance(m, DEFAULT_TYPES))
        ]
    if not chosen:
        sample = ", ".join(n for n, _ in named[:30]) + (" ..." if len(named) > 30 else "")
        raise ConfigError(
            f"layers: no module of {type(model).__name__} matches {list(patterns or ['default'])}; "
            f"module names: {sample or '(none)'}"
        )
    return chosen


def check_pooling(pooling: str) -> str:
    """``pooling`` when allowed (the one validator of the notation), else a ConfigError."""
    if not _POOL.match(pooling):
        raise ConfigError(
            f"pooling: {pooling!r} is not allowed; use 'flatten', 'avg' (global average over "
            "spatial positions) or 'avgN' with N >= 1 (average-pool to N x N positions, e.g. 'avg2')"
        )
    return pooling


def reduce_activation(out: Tensor, pooling: str) -> Tensor:
    """``[b, ...]`` activation -> ``[b, d]`` features (a new tensor, detached)."""
    out = out.detach()
    if out.ndim >= 3 and pooling != "flatten":
        spatial = out.ndim - 2
        if pooling == "avg":
            return out.mean(dim=tuple(range(2, out.ndim)))
        size = int(pooling[3:])
        pool = {
            1: nn.functional.adaptive_avg_pool1d,
            2: nn.functional.adaptive_avg_pool2d,
            3: nn.functional.adaptive_avg_pool3d,
        }[spatial]
        return pool(out, size).reshape(out.shape[0], -1)
    return out.reshape(out.shape[0], -1).clone()


class FeatureHooks:
    """Context manager recording the outputs of ``layers`` (from :func:`select_layers`).

    After a forward pass, ``take()`` returns ``{layer name: [b, d] tensor}`` in hook order
    and clears the record. Set ``active = False`` to ignore forwards (an attack's own
    passes).
    """

    def __init__(
        self, layers: Sequence[tuple[str, nn.Module]], pooling: str = "flatten", dtype: torch.dtype = torch.float32
    ) -> None:
        self.layers = list(layers)
        self.pooling = check_pooling(pooling)
        self.dtype = dtype
        self.active = True
        self._handles: list[Any] = []
        self._record: list[tuple[str, Tensor]] = []

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.active:
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                return
            self._record.append((name, reduce_activation(out, self.pooling).to(self.dtype)))

        return hook

    def __enter__(self) -> FeatureHooks:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._record = []

    def take(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for name, feat in self._record:
            counts[name] = counts.get(name, 0) + 1
            key = name if counts[name] == 1 else f"{name}#{counts[name]}"
            out[key] = feat
        self._record = []
        return out


@dataclass(frozen=True)
class ModelInput:
    """One model to read features from: the module, its layer patterns, and an optional
    attack ``attack(x, y) -> x_adv`` making its inputs adversarial."""

    name: str
    model: nn.Module
    layers: Sequence[str] | None = None
    attack: Callable[[Tensor, Tensor], Tensor] | None = None


def iter_features(
    models: Sequence[ModelInput],
    split: Any,
    *,
    batch_size: int = 256,
    limit: int | None = None,
    pooling: str = "flatten",
    device: torch.device | str = "cpu",
    store: torch.device | str = "cpu",
    seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[list[dict[str, Tensor]], Tensor]]:
    """Yield ``([features of model 0, features of model 1, ...], labels)`` for each batch of
    the first ``limit`` examples of ``split`` (a deterministic subset; the same examples in
    the same order for every model). Features are ``{layer: [b, d]}`` on ``store``.
    ``shard=(rank, world)`` yields only the batches ``rank, rank + world, ...`` (a process's
    share under torchrun; the batches themselves are those of one process)."""
    from ..data.core import batches, subset

    split = subset(split, limit, seed)
    dev = torch.device(device)
    hooks = []
    for mi in models:
        mod = unwrap(mi.model)
        mod.eval()
        hk = FeatureHooks(select_layers(mod, mi.layers), pooling)
        hk.active = False
        hooks.append(hk)
    try:
        for h in hooks:
            h.__enter__()
        n = len(split)
        total = (n + batch_size - 1) // batch_size
        for b, (x, y) in enumerate(progress(batches(split, batch_size, device=dev), total=total, desc="features")):
            if shard is not None and b % shard[1] != shard[0]:
                continue
            feats = []
            for mi, h in zip(models, hooks):
                mod = unwrap(mi.model)
                xin = x
                if mi.attack is not None:
                    with torch.enable_grad():
                        xin = mi.attack(x, y).detach()
                h.active = True  # only this model's hooks record (two inputs may share one module)
                try:
                    with torch.no_grad():
                        mod(xin)
                finally:
                    h.active = False
                got = h.take()
                feats.append({k: v.to(store) for k, v in got.items()})
            yield feats, y.to(store)
    finally:
        for h in hooks:
            h.__exit__(None, None, None)


def collect_features(models: Sequence[ModelInput], split: Any, **kwargs: Any) -> tuple[list[dict[str, Tensor]], Tensor]:
    """All features of every model at once: ``([{layer: [n, d]}, ...], labels [n])``."""
    parts: list[list[dict[str, Tensor]]] = []
    labels = []
    for feats, y in iter_features(models, split, **kwargs):
        parts.append(feats)
        labels.append(y)
    if not parts:
        raise SimilarityError("no examples to read features from (empty split or limit)")
    out = []
    for m in range(len(models)):
        names = list(parts[0][m])
        out.append({k: torch.cat([p[m][k] for p in parts]) for k in names})
    return out, torch.cat(labels)


__all__ = [
    "DEFAULT_TYPES",
    "unwrap",
    "select_layers",
    "check_pooling",
    "reduce_activation",
    "FeatureHooks",
    "ModelInput",
    "iter_features",
    "collect_features",
]
