"""Unstructured pruners: least weight magnitude (LWM), random (a control), and HYDRA.

All three end in masked layers (:mod:`rtk.pruning.masks`) with exactly the requested
number of weights removed, per layer (``scope="layer"``) or over all selected layers
together (``scope="global"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import PruneJob, PruneOutcome, PruningError, check_ratio, keep_count
from .masks import apply_mask, finalize_scores, is_masked, is_prunable, scaled_score_init, to_scored, topk_mask
from .select import resolve_names

log = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def masks_from_scores(scores: dict[str, torch.Tensor], ratio: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep the largest scores: ``keep_count(n, ratio)`` per layer, or over all layers at once."""
    check_ratio(ratio)
    if scope == "layer":
        return {n: topk_mask(s, keep_count(s.numel(), ratio)) for n, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores.values()])
    keep = topk_mask(flat, keep_count(flat.numel(), ratio))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s).to(s.device)
        start += s.numel()
    return out


def _check_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    mods = resolve_names(model, layers)
    bad = [f"{n} ({type(m).__name__})" for n, m in mods.items() if not is_prunable(m)]
    if bad:
        raise PruningError(f"only Conv and Linear layers can be pruned; not: {', '.join(bad)}")
    return mods


def _current_weight(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach()
    return w * m.weight_mask if is_masked(m) else w


class _OneShot:
    """Shared by LWM and random pruning: score every weight, keep the largest."""

    name = "one-shot"
    structured = False

    def __init__(self, scope: str = "layer") -> None:
        self.scope = scope

    def validate(self, model: nn.Module, layers: Sequence[str], example_inputs: torch.Tensor) -> None:
        _check_layers(model, layers)

    def scores(self, mods: dict[str, nn.Module], job: PruneJob) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prune(self, model: nn.Module, ratio: float, job: PruneJob) -> PruneOutcome:
        mods = _check_layers(model, job.layers)
        masks = masks_from_scores(self.scores(mods, job), ratio, self.scope)
        for name, mask in masks.items():
            apply_mask(mods[name], mask)
        return PruneOutcome(model, {"method": self.name, "scope": self.scope, "ratio": ratio})


class MagnitudePruner(_OneShot):
    """Least weight magnitude: remove the weights of smallest ``|w|`` (one shot)."""

    name = "lwm"

    def scores(self, mods: dict[str, nn.Module], job: PruneJob) -> dict[str, torch.Tensor]:
        return {n: _current_weight(m).abs() for n, m in mods.items()}


class RandomPruner(_OneShot):
    """Remove weights uniformly at random (a control); seeded by ``seed``."""

    name = "random"

    def __init__(self, scope: str = "layer", seed: int | None = None) -> None:
        super().__init__(scope)
        self.seed = seed

    def scores(self, mods: dict[str, nn.Module], job: PruneJob) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(job.seed if self.seed is None else self.seed)
        out = {}
        for n, m in mods.items():
            s = torch.rand(m.weight.shape, generator=g).to(m.weight.device)
            if is_masked(m):  # already-pruned weights go first
                s = s * m.weight_mask
            out[n] = s
        return out


class HydraPruner:
    """HYDRA (Sehwag et al., NeurIPS 2020): learn which weights to keep under the objective.

    One score per weight, initialised with :func:`scaled_score_init` (so training starts from
    the LWM mask); each layer keeps its top-``k`` ``|score|`` (``k`` from the ratio) with a
    straight-through gradient; the weights are frozen while the scores train for
    ``job.scores.epochs`` epochs with ``job.objective`` (the same robust loss used for
    pre-training and fine-tuning). Normalisation layers keep training unless
    ``train_norm=False`` (HYDRA's default trains them).
    """

    name = "hydra"
    structured = False

    def __init__(self, *, init: str = "scaled", train_norm: bool = True) -> None:
        if init not in ("scaled", "magnitude"):
            raise ValueError(f"init must be 'scaled' or 'magnitude', got {init!r}")
        self.init = init
        self.train_norm = train_norm

    def validate(self, model: nn.Module, layers: Sequence[str], example_inputs: torch.Tensor) -> None:
        _check_layers(model, layers)

    def prune(self, model: nn.Module, ratio: float, job: PruneJob) -> PruneOutcome:
        check_ratio(ratio)
        if job.objective is None or job.data is None:
            raise PruningError(
                "hydra trains its scores with the training objective: give it data and an objective "
                "(the prune stage passes its trainer)"
            )
        mods = _check_layers(model, job.layers)
        initial = {}
        for name, m in mods.items():
            w = _current_weight(m)
            s = scaled_score_init(w) if self.init == "scaled" else w.abs()
            keep = keep_count(w.numel(), ratio)
            initial[name] = topk_mask(s.abs(), keep)
            to_scored(m, keep, s)
        history = self._train_scores(model, mods, job)
        overlap_num = overlap_den = 0
        for name, m in mods.items():
            finalize_scores(m)
            overlap_num += int((m.weight_mask & initial[name]).sum())
            overlap_den += int(initial[name].sum())
        info: dict[str, Any] = {
            "method": self.name,
            "scope": "layer",
            "ratio": ratio,
            "score_epochs": job.scores.epochs,
            "overlap_with_lwm": overlap_num / max(overlap_den, 1),
        }
        if history is not None and len(history):
            info["score_history"] = history
        return PruneOutcome(model, info)

    def _train_scores(self, model: nn.Module, mods: dict[str, nn.Module], job: PruneJob):
        from ..training import fit

        if job.scores.epochs <= 0:
            return None
        scores = [m.scores for m in mods.values()]
        trainable = list(scores)
        if self.train_norm:
            trainable += [p for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)]
        trainable_ids = {id(p) for p in trainable}
        saved = {}
        for p in model.parameters():
            saved[id(p)] = p.requires_grad
            p.requires_grad_(id(p) in trainable_ids)
        frozen_before = {n: m.weight.detach().clone() for n, m in mods.items()}
        cfg = job.scores.loop()
        try:
            history = fit(model, job.objective, job.data, cfg, device=job.device, seed=job.seed, parameters=trainable)
        finally:
            for p in model.parameters():
                if id(p) in saved:
                    p.requires_grad_(saved[id(p)])
        for n, m in mods.items():  # an objective that unfroze weights must not have changed them
            if not torch.equal(m.weight.detach(), frozen_before[n].to(m.weight.device)):
                log.warning("hydra: weights of %s changed during score training; restoring them", n)
                with torch.no_grad():
                    m.weight.copy_(frozen_before[n])
        return history
