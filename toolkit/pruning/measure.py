"""Measuring pruned models: parameters, MACs, sparsity, inference time and memory."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .masks import dense_export, is_masked


@dataclass(frozen=True)
class SizeReport:
    """Sizes of one model. ``params`` counts the remaining (non-masked) parameters; ``macs``
    are torch-pruning's count per example of the dense-equivalent network and ``macs_sparse``
    discounts the masked weights; ``sparsity`` is measured over the pruned layers against
    their dense sizes."""

    params: int
    params_dense: int
    macs: int
    macs_sparse: int
    layer_weights: int
    layer_weights_dense: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.layer_weights / max(self.layer_weights_dense, 1)

    @property
    def compression(self) -> float:
        return self.params_dense / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.sparsity, "compression": self.compression}


def remaining_params(model: nn.Module) -> int:
    """Parameters that still carry a weight (masked entries are not counted)."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if is_masked(m):
            total -= int((~m.weight_mask).sum())
    return total


def layer_weight_counts(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """Remaining weights of each named layer (masked entries excluded)."""
    mods = dict(model.named_modules())
    out = {}
    for n in layers:
        m = mods[n]
        out[n] = int(m.weight_mask.sum()) if is_masked(m) else m.weight.numel()
    return out


def layer_sparsity(model: nn.Module, layers: Sequence[str], dense_sizes: Mapping[str, int]) -> dict[str, float]:
    """Measured sparsity of each layer against its dense size."""
    counts = layer_weight_counts(model, layers)
    return {n: 1.0 - counts[n] / max(dense_sizes[n], 1) for n in layers}


def macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """``(dense-equivalent MACs, MACs of the remaining weights)`` per example."""
    from .structured import count_macs_and_params

    masked = {n: float(m.weight_mask.float().mean()) for n, m in model.named_modules() if is_masked(m)}
    plain = dense_export(copy.deepcopy(model))
    total, _params, per_layer, _ = count_macs_and_params(plain, example[:1], layer_wise=True)
    mods = dict(plain.named_modules())
    sparse = float(total)
    for name, density in masked.items():
        sparse -= float(per_layer.get(mods[name]) or 0) * (1.0 - density)
    return int(total), int(round(sparse))


def size_report(
    model: nn.Module,
    example: torch.Tensor,
    layers: Sequence[str],
    *,
    params_dense: int,
    layer_sizes_dense: Mapping[str, int],
) -> SizeReport:
    dense_macs, sparse_macs = macs(model, example)
    counts = layer_weight_counts(model, layers)
    return SizeReport(
        remaining_params(model),
        int(params_dense),
        dense_macs,
        sparse_macs,
        sum(counts.values()),
        int(sum(layer_sizes_dense[n] for n in layers)),
    )


# ----------------------------------------------------------------------------- speed and memory
def model_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@torch.no_grad()
def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output in one inference pass on ``x`` (the activation
    memory an inference pass allocates, measured with forward hooks)."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


@torch.no_grad()
def inference_times(
    models: Mapping[str, nn.Module], x: torch.Tensor, *, repeats: int = 15, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per forward pass on ``x`` of each model, measured interleaved (one pass
    of each model per round) so machine load affects all of them alike."""
    states = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    samples: dict[str, list[float]] = {k: [] for k in models}
    try:
        for r in range(warmup + repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    samples[k].append(dt)
    finally:
        for k, m in models.items():
            m.train(states[k])
    return {k: statistics.median(v) for k, v in samples.items()}
