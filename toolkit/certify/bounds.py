"""Sound output bounds over an input box: IBP, CROWN and CROWN-IBP.

- **IBP** (Gowal et al. 2018): intervals pushed forward layer by layer.
- **CROWN** (Zhang et al. 2018): every output (or specification row) is bounded by a
  backward pass of linear relaxations down to the input box; the pre-activation bounds
  every ReLU relaxation needs are themselves computed by CROWN, layer by layer.
  Neurons already stable under interval bounds are left alone (their relaxation is exact)
  and, by default, CROWN bounds are intersected with interval bounds, so every bound is at
  least as tight as IBP's (``intersect_ibp=False`` gives textbook CROWN).
- **CROWN-IBP** (Zhang et al. 2020): interval bounds for the intermediate layers, one
  CROWN backward pass for the specification.

A specification ``C`` (B, S, K) asks for bounds of ``C @ logits``; with the margin
specification of :func:`margin_spec`, a positive lower bound on every row proves that no
input in the box changes the prediction. Folding ``C`` into the last linear layer makes
even IBP's margin bounds tighter than bounds on the logits.

Memory: one CROWN backward pass holds ``batch x rows x (largest layer)`` numbers; rows of
the identity specification used for intermediate layers are processed ``spec_chunk`` at
a time, so ``batch_size x 2 * spec_chunk x largest layer x 4 bytes`` bounds the memory.
Bounds are computed in floating point without outward rounding: they are sound up to
rounding error (about 1e-6 relative in float32; use ``dtype=torch.float64`` for more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RtkError
from .graph import BoundGraph, bound_graph
from .ops import Bound, Pass

METHODS = ("ibp", "crown", "crown-ibp")


def linf_box(x: torch.Tensor, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)) -> Bound:
    """The L-inf ball of radius ``eps`` around ``x`` intersected with ``clip`` (the image domain)."""
    if eps < 0:
        raise RtkError(f"eps must be non-negative, got {eps}")
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return lo, hi


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``C`` (B, K, K) with row ``j`` = ``e_y - e_j``: ``C @ logits`` is the margin of the true
    class over class ``j`` (row ``y`` is all zeros)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def concretize(A: torch.Tensor, b: Bound) -> torch.Tensor:
    """Lower bound of ``A . v`` (B, S) over ``v`` in the box ``b``; A is (B, S, *shape)."""
    lo, hi = b
    mid, rad = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    Af = A.flatten(2)
    return torch.einsum("bsn,bn->bs", Af, mid) - torch.einsum("bsn,bn->bs", Af.abs(), rad)


# ---------------------------------------------------------------------------- passes
def interval_pass(graph: BoundGraph, box: Bound, p: Pass) -> list[Bound]:
    """IBP bounds of every node."""
    bounds: list[Bound] = [box]
    for n in graph.nodes[1:]:
        bounds.append(n.op.interval(p, *(bounds[i] for i in n.inputs)))
    return bounds


def backward_bound(graph: BoundGraph, target: int, A: torch.Tensor, bounds: list[Bound], p: Pass) -> torch.Tensor:
    """Lower bound (B, S) of ``A . node[target]`` by the CROWN backward pass.

    ``bounds`` must hold bounds for every node the relaxation needs (ReLU inputs).
    """
    B, S = A.shape[:2]
    pending: dict[int, torch.Tensor] = {target: A}
    const = torch.zeros(B, S, dtype=A.dtype, device=A.device)
    for idx in range(target, -1, -1):
        a = pending.pop(idx, None)
        if a is None:
            continue
        node = graph.nodes[idx]
        if node.op.kind == "input":
            return const + concretize(a, bounds[0])
        a_ins, c = node.op.backward(p, a, *(bounds[i] for i in node.inputs))
        if c is not None:
            const = const + c
        for i, ai in zip(node.inputs, a_ins):
            pending[i] = pending[i] + ai if i in pending else ai
    return const  # the target does not depend on the input


def _refine(
    graph: BoundGraph, idx: int, current: Bound, bounds: list[Bound], p: Pass, spec_chunk: int, intersect: bool
) -> Bound:
    lo, hi = current
    B = lo.shape[0]
    lo_f, hi_f = lo.flatten(1).clone(), hi.flatten(1).clone()
    if intersect:
        # only neurons unstable under the interval bounds need the tighter bound; the rows
        # are the union over the batch, but each example keeps the CROWN bound only where
        # it is unstable itself, so results do not depend on how examples are batched
        unstable = (lo_f < 0) & (hi_f > 0)
        rows = unstable.any(0).nonzero().flatten()
    else:
        rows = torch.arange(lo_f.shape[1], device=lo.device)
    shape = graph.nodes[idx].shape
    numel = lo_f.shape[1]
    if rows.numel() == 0:
        return current
    for chunk in rows.split(spec_chunk):
        k = len(chunk)
        A = torch.zeros(B, 2 * k, numel, dtype=lo.dtype, device=lo.device)
        ar = torch.arange(k, device=lo.device)
        A[:, ar, chunk] = 1.0
        A[:, ar + k, chunk] = -1.0
        res = backward_bound(graph, idx, A.reshape(B, 2 * k, *shape), bounds, p)
        new_lo, new_hi = res[:, :k], -res[:, k:]
        if intersect:
            keep = ~unstable[:, chunk]
            new_lo = torch.where(keep, lo_f[:, chunk], torch.maximum(new_lo, lo_f[:, chunk]))
            new_hi = torch.where(keep, hi_f[:, chunk], torch.minimum(new_hi, hi_f[:, chunk]))
        lo_f[:, chunk], hi_f[:, chunk] = new_lo, new_hi
    return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)


def crown_pass(graph: BoundGraph, box: Bound, p: Pass, *, spec_chunk: int = 256, intersect: bool = True) -> list[Bound]:
    """Bounds of every node, with CROWN for the pre-activations of every ReLU."""
    bounds: list[Bound] = [box]
    for n in graph.nodes[1:]:
        b = n.op.interval(p, *(bounds[i] for i in n.inputs))
        bounds.append(b)
        if graph.refine[n.index]:
            bounds[n.index] = _refine(graph, n.index, b, bounds, p, spec_chunk, intersect)
    return bounds


def spec_lower_ibp(graph: BoundGraph, C: torch.Tensor, bounds: list[Bound], p: Pass) -> torch.Tensor:
    """Lower bound of ``C @ out`` from interval bounds, folding ``C`` into the last layer
    when it is affine (tighter than bounding the logits first)."""
    out = graph.output
    if out.op.kind in ("linear", "diag", "reshape") and len(out.inputs) == 1:
        a_in, c = out.op.backward(p, C, bounds[out.inputs[0]])
        lower = concretize(a_in[0], bounds[out.inputs[0]])
        return lower + c if c is not None else lower
    return concretize(C, bounds[out.index])


def spec_lower_crown(graph: BoundGraph, C: torch.Tensor, bounds: list[Bound], p: Pass) -> torch.Tensor:
    """Lower bound of ``C @ out`` by a CROWN backward pass over the given intermediate bounds."""
    return backward_bound(graph, graph.output.index, C, bounds, p)


# ---------------------------------------------------------------------------- high level
@dataclass(frozen=True)
class SpecBounds:
    """Lower (and optionally upper) bounds of ``C @ logits``, each (B, S)."""

    lower: torch.Tensor
    upper: torch.Tensor | None = None


def spec_bounds(
    model: nn.Module,
    box: Bound,
    C: torch.Tensor | None = None,
    *,
    method: str = "crown",
    spec_chunk: int = 256,
    intersect_ibp: bool = True,
    upper: bool = False,
    dtype: torch.dtype | None = None,
    graph: BoundGraph | None = None,
) -> SpecBounds:
    """Bounds of ``C @ model(x)`` for every ``x`` in ``box = (lo, hi)``.

    ``C=None`` bounds the logits themselves (lower and upper). ``method`` is ``ibp``,
    ``crown`` or ``crown-ibp``. Gradients flow through the result when enabled (for
    certified training); wrap in ``torch.no_grad()`` for certification.
    """
    if method not in METHODS:
        raise RtkError(f"unknown bound method {method!r}; allowed: {', '.join(METHODS)}")
    lo, hi = box
    dtype = dtype or lo.dtype
    lo, hi = lo.to(dtype), hi.to(dtype)
    graph = graph or bound_graph(model, lo)
    p = Pass(dtype, training=model.training)
    B = lo.shape[0]
    if C is None:
        K = graph.output.numel
        eye = (
            torch.eye(K, dtype=dtype, device=lo.device)
            .reshape(1, K, *graph.output.shape)
            .expand(B, *((-1,) * (1 + len(graph.output.shape))))
        )
        C, upper = eye, True
    C = C.to(dtype)
    S = C.shape[1]
    if upper:
        C = torch.cat([C, -C], 1)
    if method == "crown":
        bounds = crown_pass(graph, (lo, hi), p, spec_chunk=spec_chunk, intersect=intersect_ibp)
    else:
        bounds = interval_pass(graph, (lo, hi), p)
    low = spec_lower_ibp(graph, C, bounds, p)
    if method != "ibp":
        crown = spec_lower_crown(graph, C, bounds, p)
        low = torch.maximum(low, crown) if intersect_ibp else crown
    if upper:
        return SpecBounds(low[:, :S], -low[:, S:])
    return SpecBounds(low)


def output_bounds(model: nn.Module, box: Bound, *, method: str = "crown", **kw) -> Bound:
    """Lower and upper bounds (B, K) of every logit over ``box``."""
    res = spec_bounds(model, box, None, method=method, **kw)
    return res.lower, res.upper


def margin_lower_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    method: str = "crown",
    clip: tuple[float, float] | None = (0.0, 1.0),
    **kw,
) -> torch.Tensor:
    """Lower bounds (B, K) of ``logit_y - logit_j`` over the L-inf ball; column ``y`` is +inf.

    An example is verified when every entry of its row is positive.
    """
    box = linf_box(x, eps, clip)
    graph = kw.pop("graph", None) or bound_graph(model, x)
    K = graph.output.numel
    C = margin_spec(y, K, kw.get("dtype") or x.dtype)
    low = spec_bounds(model, box, C, method=method, graph=graph, **kw).lower
    return low.masked_fill(torch.nn.functional.one_hot(y, K).bool(), float("inf"))
