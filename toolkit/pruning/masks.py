"""Masked and scored layers, implemented in-house.

A pruned ``nn.Linear`` / ``nn.ConvNd`` keeps its class's behaviour and its parameter names;
only its class is swapped for a subclass that multiplies the weight by a fixed binary mask:

- :class:`MaskedMixin` (``MaskedConv2d``, ``MaskedLinear``, ...): the mask is a persistent
  ``bool`` buffer ``weight_mask``, so every checkpoint of the model carries it (safetensors,
  no pickle). Pruned weights are also set to zero in ``weight`` itself, and they stay zero
  during fine-tuning because their gradient is masked (so tools reading ``module.weight``
  directly, such as bound propagation, see the pruned network). The masked weight is
  cached until the weight or the mask changes (once per optimizer step), so a masked
  forward pass, in inference or inside an attack, costs what a dense one does.
- :class:`ScoredMixin` (HYDRA): one importance score per weight; the mask keeps the
  ``keep`` largest ``|score|`` of the layer and the scores receive a straight-through
  gradient. The mask and the masked weight are recomputed only when the scores change
  (once per optimizer step), not on every forward pass of an attack.

:func:`dense_export` makes masks permanent and returns plain modules again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: The layer types that can be pruned (weights of Conv1d/2d/3d and Linear).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_MASKED_CLASSES: dict[type, type] = {}
_SCORED_CLASSES: dict[type, type] = {}


def is_prunable(module: nn.Module) -> bool:
    """Whether ``module`` is a Conv/Linear layer whose weights rtk can mask."""
    return isinstance(module, PRUNABLE_TYPES)


def _apply_layer(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's own operation with ``weight`` in place of ``module.weight``."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    return module._conv_forward(x, weight, module.bias)  # type: ignore[attr-defined]


def _base_class(module: nn.Module) -> type:
    cls = type(module)
    return getattr(cls, "_rtk_base", cls)


class _MaskedWeight(torch.autograd.Function):
    """The masked weight, taken from a cache; the gradient goes to the kept weights and, for
    HYDRA, straight through the top-k to the scores.

    The product ``weight * mask`` is computed once per change of the weight, mask or scores
    (once per optimizer step), not on every forward pass: the ten forward passes of a PGD
    attack reuse it, so a masked forward costs what a dense one does.
    """

    @staticmethod
    def forward(
        ctx,
        weight: torch.Tensor,
        mask: torch.Tensor,
        scores: torch.Tensor | None,  # type: ignore[override]
        product: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, mask, scores)
        return product.view_as(product)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight, mask, scores = ctx.saved_tensors
        g_weight = grad * mask if ctx.needs_input_grad[0] else None
        # HYDRA's mask keeps the largest |score|: d mask / d score := sign(score) (straight-through)
        g_scores = grad * weight * torch.sign(scores) if scores is not None and ctx.needs_input_grad[2] else None
        return g_weight, None, g_scores, None


def _cached_product(module: nn.Module, key: tuple, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    cache = module.__dict__.get("_rtk_product")
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = (key, weight * mask)
        module.__dict__["_rtk_product"] = cache
    return cache[1]


def _version(t: torch.Tensor) -> tuple:
    return (t._version, t.data_ptr(), t.dtype, t.device)


class MaskedMixin:
    """Mixed into a Conv/Linear class: ``forward`` uses ``weight * weight_mask``."""

    weight: nn.Parameter
    weight_mask: torch.Tensor
    _rtk_base: type

    def _masked_weight(self) -> torch.Tensor:
        w, m = self.weight, self.weight_mask
        product = _cached_product(self, (_version(w), _version(m)), w, m)  # type: ignore[arg-type]
        if torch.is_grad_enabled() and w.requires_grad:
            return _MaskedWeight.apply(w, m, None, product)
        return product

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (``weight * weight_mask``), differentiably: the
        protocol other in-house tools (bound propagation) read masked layers through."""
        return self._masked_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _apply_layer(self, x, self._masked_weight())  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        kept = int(self.weight_mask.sum())
        return f"{base}, sparsity={1 - kept / max(self.weight_mask.numel(), 1):.4f}"


class ScoredMixin:
    """Mixed into a Conv/Linear class for HYDRA: a trainable ``scores`` parameter and a
    top-``keep`` mask over ``|scores|``."""

    weight: nn.Parameter
    scores: nn.Parameter
    keep: int
    _rtk_base: type

    def current_mask(self) -> torch.Tensor:
        """The binary mask of the ``keep`` largest ``|scores|`` (cached per scores version)."""
        s = self.scores
        key = (_version(s), self.keep)
        cache = self.__dict__.get("_rtk_mask")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, topk_mask(s.abs(), self.keep))
            self.__dict__["_rtk_mask"] = cache
        return cache[1]

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``weight`` times the top-k mask, with the
        straight-through gradient to the scores."""
        w, s = self.weight, self.scores
        mask = self.current_mask()
        product = _cached_product(self, (_version(w), _version(s), self.keep), w, mask)  # type: ignore[arg-type]
        if torch.is_grad_enabled() and (w.requires_grad or s.requires_grad):
            product = _MaskedWeight.apply(w, mask, s, product)
        return product

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _apply_layer(self, x, self.effective_weight())  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, keep={self.keep}/{self.weight.numel()}"


def _derived_class(base: type, mixin: type, table: dict[type, type], prefix: str) -> type:
    cls = table.get(base)
    if cls is None:
        cls = type(f"{prefix}{base.__name__}", (mixin, base), {"_rtk_base": base, "__module__": __name__})
        table[base] = cls
    return cls


# ----------------------------------------------------------------------------- masks
def topk_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """A ``bool`` mask of ``values``' shape with exactly ``keep`` entries set: the largest."""
    flat = values.reshape(-1)
    keep = max(0, min(int(keep), flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=values.device)
    if keep:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(values)


def is_masked(module: nn.Module) -> bool:
    return isinstance(module, MaskedMixin)


def is_scored(module: nn.Module) -> bool:
    return isinstance(module, ScoredMixin)


def apply_mask(module: nn.Module, mask: torch.Tensor) -> nn.Module:
    """Make ``module`` a masked layer with ``mask`` (True = kept); zero the pruned weights.

    A layer that is already masked gets the intersection of both masks.
    """
    if not is_prunable(module):
        raise TypeError(f"only Conv/Linear layers can be masked, got {type(module).__name__}")
    if is_scored(module):
        raise TypeError("finish the scores of this layer first (finalize_scores)")
    mask = mask.to(device=module.weight.device, dtype=torch.bool)
    if mask.shape != module.weight.shape:
        raise ValueError(f"mask shape {list(mask.shape)} differs from weight shape {list(module.weight.shape)}")
    if is_masked(module):
        module.weight_mask = module.weight_mask & mask
    else:
        module.__class__ = _derived_class(type(module), MaskedMixin, _MASKED_CLASSES, "Masked")
        module.register_buffer("weight_mask", mask.clone())
    with torch.no_grad():
        module.weight.mul_(module.weight_mask)
    return module


def make_masked_placeholder(module: nn.Module) -> nn.Module:
    """Turn ``module`` into a masked layer with an all-ones mask (before loading a checkpoint)."""
    return apply_mask(module, torch.ones_like(module.weight, dtype=torch.bool))


def remove_mask(module: nn.Module, *, bake: bool = True) -> nn.Module:
    """Return ``module`` to its plain class; with ``bake`` the pruned weights stay zero."""
    if is_masked(module):
        if bake:
            with torch.no_grad():
                module.weight.mul_(module.weight_mask)
        del module._buffers["weight_mask"]
        module.__dict__.pop("_rtk_product", None)
        module.__class__ = _base_class(module)
    return module


def to_scored(module: nn.Module, keep: int, scores: torch.Tensor) -> nn.Module:
    """Give ``module`` trainable HYDRA scores and a top-``keep`` mask over them."""
    if not is_prunable(module):
        raise TypeError(f"only Conv/Linear layers can be scored, got {type(module).__name__}")
    if is_masked(module):  # an earlier mask stays in force through zero weights
        remove_mask(module, bake=True)
    module.__class__ = _derived_class(type(module), ScoredMixin, _SCORED_CLASSES, "Scored")
    module.keep = int(keep)
    module.scores = nn.Parameter(scores.detach().clone().to(module.weight.device, module.weight.dtype))
    return module


def finalize_scores(module: nn.Module) -> nn.Module:
    """Replace scores by the fixed mask they select (a masked layer again)."""
    if not is_scored(module):
        return module
    mask = module.current_mask().bool()
    del module._parameters["scores"]
    for attr in ("keep", "_rtk_mask", "_rtk_product"):
        module.__dict__.pop(attr, None)
    module.__class__ = _base_class(module)
    return apply_mask(module, mask)


def scaled_score_init(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's score initialisation: proportional to the weight, scaled like a Kaiming-uniform
    init, ``sqrt(6 / fan_in) * w / max|w|``; the initial top-k of ``|score|`` is therefore
    the least-weight-magnitude mask."""
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    peak = weight.abs().max()
    if peak == 0:
        return torch.zeros_like(weight)
    return math.sqrt(6.0 / max(fan_in, 1)) * weight / peak


# ----------------------------------------------------------------------------- model-wide
def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if is_masked(m):
            yield name, m


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: bool mask}`` of every masked layer."""
    return {name: m.weight_mask for name, m in masked_layers(model)}


def dense_export(model: nn.Module) -> nn.Module:
    """Make every mask permanent (pruned weights are zero) and return plain modules, in place.

    The result has exactly the parameter names and classes of the unpruned architecture,
    so any tool (torch-pruning's counters, bound propagation, ``load_state_dict`` into a
    freshly built model) can use it.
    """
    for _, m in list(model.named_modules()):
        if is_scored(m):
            finalize_scores(m)
        if is_masked(m):
            remove_mask(m, bake=True)
    return model


__all__ = [
    "PRUNABLE_TYPES",
    "MaskedMixin",
    "ScoredMixin",
    "apply_mask",
    "dense_export",
    "finalize_scores",
    "is_masked",
    "is_prunable",
    "is_scored",
    "make_masked_placeholder",
    "masked_layers",
    "masks_of",
    "remove_mask",
    "scaled_score_init",
    "to_scored",
    "topk_mask",
]
