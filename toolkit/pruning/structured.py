"""Structured channel pruning through torch-pruning's dependency graph.

Whole channels (conv filters, linear units) are removed together with everything coupled
to them (the next layer's inputs, batch norm, residual additions), so the pruned model is
a smaller dense model: fewer parameters, fewer MACs, faster inference.

Importance of a channel (option ``importance``):

- ``magnitude``: L1 norm of the root layer's filter (Li et al. 2017);
- ``l1`` / ``l2``: group L1 / L2 norm over every coupled layer;
- ``lamp``: layer-adaptive magnitude (Lee et al. 2021);
- ``taylor``: first-order Taylor ``|w * dL/dw|`` under the clean cross-entropy;
- ``robust-taylor``: the same Taylor score under the adversarial loss: gradients of the
  PGD loss (or of the training objective, ``taylor_loss="objective"``), so the channels the
  robust loss depends on are kept;
- ``random``: a control.

``ratio`` is the fraction of the selected layers' weights removed, as for unstructured
pruning; the channel ratio that achieves it is found by bisection and reported. The first
layer and the classifier's outputs are never removed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.core import batches
from ..training.attacks import default_alpha, perturb
from .base import PruneJob, PruneOutcome, PruningError, check_ratio
from .masks import is_masked, is_scored
from .select import execution_order, prunable_layers, resolve_names

log = logging.getLogger(__name__)

IMPORTANCES = ("magnitude", "l1", "l2", "lamp", "taylor", "robust-taylor", "random")


def make_importance(kind: str) -> Any:
    """The torch-pruning importance estimator for ``kind`` (one of :data:`IMPORTANCES`)."""
    import torch_pruning as tp

    imp = tp.importance
    if kind == "magnitude":
        return imp.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if kind == "l1":
        return imp.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return imp.GroupMagnitudeImportance(p=2)
    if kind == "lamp":
        return imp.LAMPImportance(p=2)
    if kind in ("taylor", "robust-taylor"):
        return imp.GroupTaylorImportance()
    if kind == "random":
        return imp.RandomImportance()
    raise ValueError(f"unknown importance {kind!r}; allowed: {', '.join(IMPORTANCES)}")


# ----------------------------------------------------------------------------- locating failures
@contextlib.contextmanager
def _layer_tracker(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Track which module is running, so a failure can name the layer."""
    state: dict[str, Any] = {"stack": [], "last_done": None}
    names = {id(m): n or "<model>" for n, m in model.named_modules()}

    def pre(module: nn.Module, _inp: Any) -> None:
        state["stack"].append(names.get(id(module), type(module).__name__))

    def post(module: nn.Module, _inp: Any, _out: Any) -> None:
        if state["stack"]:
            state["stack"].pop()
        state["last_done"] = names.get(id(module), type(module).__name__)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


def _where(model: nn.Module, state: dict[str, Any]) -> str:
    mods = dict(model.named_modules())
    if state["stack"]:
        name = state["stack"][-1]
        kind = type(mods[name]).__name__ if name in mods else "?"
        after = f", after layer {state['last_done']!r}" if state.get("last_done") else ""
        return f"in layer {name!r} ({kind}){after}"
    if state.get("last_done"):
        return f"after layer {state['last_done']!r}"
    return "before any layer ran"


def _unwrapped_parameters(model: nn.Module) -> list[str]:
    """Layers whose own parameters torch-pruning cannot follow (module types it treats as
    element-wise operations), described as ``'name' (Type: name.param, ...)``."""
    import torch_pruning as tp

    out = []
    for name, m in model.named_modules():
        if tp.ops.module2type(m) != tp.ops.OPTYPE.ELEMENTWISE:
            continue
        params = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
        if params:
            out.append(f"{name or '<model>'!r} ({type(m).__name__}: {', '.join(params)})")
    return out


def _unwrapped_hint(model: nn.Module) -> str:
    found = _unwrapped_parameters(model)
    if not found:
        return ""
    return (
        f" The dependency graph cannot follow the parameters of layer {', '.join(found[:5])}: torch-pruning does "
        "not know that layer type, so it cannot tell which dimension follows the channels."
    )


# ----------------------------------------------------------------------------- gradients
def accumulate_gradients(
    model: nn.Module,
    job: PruneJob,
    *,
    loss: str,
    batches_: int,
    batch_size: int,
    eps: float,
    alpha: float | None,
    steps: int,
) -> int:
    """Fill ``p.grad`` with the gradient of the mean loss over ``batches_`` training batches.

    ``loss``: ``clean`` (cross-entropy), ``pgd`` (cross-entropy on PGD examples) or
    ``objective`` (the training objective's loss). Returns the number of examples used.
    """
    if job.data is None:
        raise PruningError("Taylor importance needs training data (the prune stage passes it)")
    if loss == "objective" and job.objective is None:
        raise PruningError("taylor_loss='objective' needs a training objective (the prune stage passes its trainer)")
    device = torch.device(job.device)
    was = model.training
    model.to(device).eval()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(job.seed)
    seen = 0
    step = alpha if alpha is not None else default_alpha(eps, steps)
    for i, (x, y) in enumerate(batches(job.data.train, batch_size, shuffle=True, generator=gen, device=device)):
        if i >= batches_:
            break
        if loss == "objective":
            out = job.objective(model, x, y, progress=1.0)
            value = out.loss
        else:
            if loss == "pgd":  # the training attack: L-inf PGD from a random start on the mean cross-entropy
                x = perturb(model, x, y, eps=eps, alpha=step, steps=steps, loss_fn=F.cross_entropy, generator=gen)
            value = F.cross_entropy(model(x), y)
        (value / batches_).backward()
        seen += len(y)
    model.train(was)
    return seen


# ----------------------------------------------------------------------------- the pruner
@dataclass(eq=False, kw_only=True)
class ChannelPruner:
    """Structured channel pruning (see the module docstring)."""

    name = "channel"
    structured = True

    importance: str = "l2"
    global_pruning: bool = False
    round_to: int | None = None
    max_channel_ratio: float = 0.95
    tolerance: float = 0.005
    max_iterations: int = 14
    taylor_loss: str | None = None  # default: pgd for robust-taylor, else clean
    batches: int = 4
    batch_size: int = 128
    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 10

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ValueError(f"unknown importance {self.importance!r}; allowed: {', '.join(IMPORTANCES)}")
        self.taylor_loss = self.taylor_loss or ("pgd" if self.importance == "robust-taylor" else "clean")

    @property
    def label(self) -> str:
        return f"channel-{self.importance}"

    # -- checks -------------------------------------------------------------------------
    def _ignored(self, model: nn.Module, layers: Sequence[str], example_inputs: torch.Tensor) -> list[str]:
        """Every prunable layer not selected, and always the output layer (its outputs are the classes)."""
        chosen = set(layers)
        order = execution_order(model, example_inputs)
        ignored = [n for n in prunable_layers(model) if n not in chosen]
        if order and order[-1] not in ignored:
            ignored.append(order[-1])
        return ignored

    def validate(self, model: nn.Module, layers: Sequence[str], example_inputs: torch.Tensor) -> None:
        """Trace the dependency graph and try a 50% channel pruning of a copy, forward and
        backward; any failure becomes a PruningError naming the layer."""
        resolve_names(model, layers)
        bad = [n for n, m in model.named_modules() if is_masked(m) or is_scored(m)]
        if bad:
            raise PruningError(
                f"structured pruning needs a dense model, but layers {', '.join(bad[:5])} carry masks; "
                "make them permanent first (rtk.pruning.dense_export)"
            )
        trial = self._prune_copy(model, 0.5, layers, example_inputs, importance_kind="l2")
        self._check_runs(trial, model, example_inputs)

    def _check_runs(self, pruned: nn.Module, dense: nn.Module, example_inputs: torch.Tensor) -> None:
        was, was_dense = pruned.training, dense.training
        pruned.eval()
        dense.eval()
        try:
            with _layer_tracker(pruned) as state:
                try:
                    out = pruned(example_inputs)
                    out.float().sum().backward()
                except Exception as exc:  # noqa: BLE001 - turned into a message naming the layer
                    hint = _unwrapped_hint(dense)
                    raise PruningError(
                        f"after channel pruning, the model fails {_where(pruned, state)}: {type(exc).__name__}: "
                        f"{exc}.{hint} Keep that part dense (options layers/exclude), or use an unstructured pruner "
                        "(lwm, hydra)"
                    ) from None
            with torch.no_grad():
                ref = dense(example_inputs)
        finally:
            pruned.zero_grad(set_to_none=True)
            pruned.train(was)
            dense.train(was_dense)
        if out.shape != ref.shape:
            raise PruningError(f"channel pruning changed the output shape from {list(ref.shape)} to {list(out.shape)}")

    # -- pruning ------------------------------------------------------------------------
    def _prune_copy(
        self,
        model: nn.Module,
        channel_ratio: float,
        layers: Sequence[str],
        example_inputs: torch.Tensor,
        importance_kind: str | None = None,
    ) -> nn.Module:
        import torch_pruning as tp

        trial = copy.deepcopy(model)
        for p, q in zip(model.parameters(), trial.parameters()):
            if p.grad is not None:
                q.grad = p.grad.detach().clone()
        mods = dict(trial.named_modules())
        ignored = [mods[n] for n in self._ignored(trial, layers, example_inputs)]
        importance = make_importance(importance_kind or self.importance)
        was = trial.training
        with _layer_tracker(trial) as state, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pruner = tp.pruner.BasePruner(
                    trial,
                    (example_inputs,),
                    importance=importance,
                    global_pruning=self.global_pruning,
                    pruning_ratio=channel_ratio,
                    ignored_layers=ignored,
                    round_to=self.round_to,
                )
                pruner.step()
            except Exception as exc:  # noqa: BLE001 - torch-pruning's failure, explained
                where = f" ({_where(trial, state)})" if state["stack"] else ""
                raise PruningError(
                    f"torch-pruning's dependency graph cannot handle this model{where}: {type(exc).__name__}: {exc}."
                    f"{_unwrapped_hint(model)} Keep that part dense (options layers/exclude) or use an unstructured "
                    "pruner (lwm, hydra)"
                ) from None
        for w in caught:
            log.debug("torch-pruning: %s", w.message)
        trial.train(was)
        return trial

    @staticmethod
    def _removed_fraction(dense_sizes: dict[str, int], pruned: nn.Module) -> float:
        mods = dict(pruned.named_modules())
        after = sum(mods[n].weight.numel() for n in dense_sizes)
        return 1.0 - after / max(sum(dense_sizes.values()), 1)

    def prune(self, model: nn.Module, ratio: float, job: PruneJob) -> PruneOutcome:
        check_ratio(ratio)
        layers = list(job.layers)
        mods = resolve_names(model, layers)
        sizes = {n: m.weight.numel() for n, m in mods.items()}
        x = job.example_inputs
        if self.importance in ("taylor", "robust-taylor"):
            accumulate_gradients(
                model,
                job,
                loss=self.taylor_loss,
                batches_=self.batches,
                batch_size=self.batch_size,
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
            )
        best: tuple[float, float, nn.Module] | None = None
        trials = 0

        def trial(c: float) -> float:
            nonlocal best, trials
            cand = self._prune_copy(model, c, layers, x)
            trials += 1
            frac = self._removed_fraction(sizes, cand)
            if best is None or abs(frac - ratio) < abs(best[1] - ratio):
                best = (c, frac, cand)
            return frac

        try:
            # a coarse scan up to the first channel ratio that removes enough (torch-pruning's
            # safety limits make the removed fraction fall again near 1), then bisection
            grid = [c for c in (0.2, 0.4, 0.6, 0.8) if c < self.max_channel_ratio] + [self.max_channel_ratio]
            lo, hi = 0.0, None
            for c in grid:
                frac = trial(c)
                if abs(frac - ratio) <= self.tolerance:
                    break
                if frac > ratio:
                    hi = c
                    break
                lo = c
            if hi is not None:
                for _ in range(self.max_iterations):
                    mid = (lo + hi) / 2
                    frac = trial(mid)
                    if abs(frac - ratio) <= self.tolerance:
                        break
                    lo, hi = (mid, hi) if frac < ratio else (lo, mid)
        finally:
            model.zero_grad(set_to_none=True)
        assert best is not None
        channel_ratio, frac, pruned = best
        pruned.zero_grad(set_to_none=True)
        self._check_runs(pruned, model, x)
        pruned.zero_grad(set_to_none=True)
        reached = abs(frac - ratio) <= max(self.tolerance, 0.02)
        if not reached:
            log.warning(
                "channel pruning removed %.3f of the selected weights, not the requested %.3f "
                "(channel ratio %.3f); residual couplings limit it",
                frac,
                ratio,
                channel_ratio,
            )
        untouched = [n for n in layers if dict(pruned.named_modules())[n].weight.numel() == sizes[n]]
        return PruneOutcome(
            pruned,
            {
                "method": self.label,
                "ratio": ratio,
                "channel_ratio": round(channel_ratio, 4),
                "removed_fraction": frac,
                "reached": reached,
                "trials": trials,
                "global_pruning": self.global_pruning,
                "layers_unchanged": untouched,
            },
        )


def count_macs_and_params(model: nn.Module, example_inputs: torch.Tensor, layer_wise: bool = False) -> Any:
    """torch-pruning's counter: ``(MACs, parameters)`` as ints (MACs per example when
    ``example_inputs`` has batch size 1); with ``layer_wise`` also the per-module dicts."""
    import torch_pruning as tp

    was = model.training
    try:
        out = tp.utils.count_ops_and_params(model, (example_inputs,), layer_wise=layer_wise)
    finally:
        model.train(was)
    return (int(out[0]), int(out[1]), *out[2:])


Importance = Callable[[Any], torch.Tensor]

__all__ = [
    "IMPORTANCES",
    "ChannelPruner",
    "accumulate_gradients",
    "count_macs_and_params",
    "make_importance",
]
