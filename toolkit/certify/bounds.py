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
    return _back_substitute(graph, {target: A}, torch.zeros(B, S, dtype=A.dtype, device=A.device), target, bounds, p)


def _back_substitute(
    graph: BoundGraph, pending: dict[int, torch.Tensor], const: torch.Tensor, start: int, bounds: list[Bound], p: Pass
) -> torch.Tensor:
    """The backward pass from the linear functions ``pending`` (node -> A) of nodes ``<= start``."""
    for idx in range(start, -1, -1):
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


#: Largest table (neurons x inputs, summed over the node's inputs) of a node's first backward step that
#: :func:`_refine` computes once for all examples instead of once per example and row.
TABLE_LIMIT = 1 << 24
#: Elements of one chunk of CROWN rows (batch x rows x largest layer): about 256 MB in float32.
CHUNK_ELEMENTS = 1 << 26


def _first_step(graph: BoundGraph, idx: int, bounds: list[Bound], p: Pass, dtype: torch.dtype, device: torch.device):
    """The target node's own backward step for every one of its neurons at once (an identity
    specification with batch size 1), when the node is affine and the table is small: row ``j``
    of each table is the linear function of that input that equals neuron ``j``."""
    node = graph.nodes[idx]
    numel = node.numel
    if node.op.kind not in ("linear", "diag", "reshape", "add"):
        return None
    if numel * sum(graph.nodes[i].numel for i in node.inputs) > TABLE_LIMIT:
        return None
    eye = torch.eye(numel, dtype=dtype, device=device).reshape(1, numel, *node.shape)
    a_ins, c = node.op.backward(p, eye, *(bounds[i] for i in node.inputs))
    if any(a.shape[0] != 1 for a in a_ins) or (c is not None and c.shape[0] != 1):
        return None  # the step depends on the example (a dropout mask in training mode)
    return [a[0] for a in a_ins], (c[0] if c is not None else None)


def _refine(
    graph: BoundGraph, idx: int, current: Bound, bounds: list[Bound], p: Pass, spec_chunk: int, intersect: bool
) -> Bound:
    """CROWN bounds of node ``idx``'s neurons.

    Each example bounds only its own neurons that are unstable under the interval bounds
    (all of them without ``intersect``), packed into rows of its own, so examples do not pay
    for each other's unstable neurons and results do not depend on how examples are batched.
    The first backward step (the node's own affine map) is computed once for all neurons and
    gathered per example when its table is small.
    """
    lo, hi = current
    B = lo.shape[0]
    lo_f, hi_f = lo.flatten(1).clone(), hi.flatten(1).clone()
    numel = lo_f.shape[1]
    todo = (lo_f < 0) & (hi_f > 0) if intersect else torch.ones_like(lo_f, dtype=torch.bool)
    counts = todo.sum(1)
    R = int(counts.max()) if B else 0
    if R == 0:
        return current
    # per example, the neurons to bound first (a stable sort keeps them in index order), padded with others
    order = torch.argsort((~todo).to(torch.int8), dim=1, stable=True)[:, :R]
    valid = torch.arange(R, device=lo.device)[None, :] < counts[:, None]
    node = graph.nodes[idx]
    table = _first_step(graph, idx, bounds, p, lo.dtype, lo.device)
    widest = max(n.numel for n in graph.nodes[: idx + 1])
    k_max = max(1, min(spec_chunk, CHUNK_ELEMENTS // max(1, B * 2 * widest)))
    ar = torch.arange(B, device=lo.device)[:, None]
    for start in range(0, R, k_max):
        rows = order[:, start : start + k_max]  # (B, k)
        k = rows.shape[1]
        if table is not None:
            a_ins, c = table
            pending: dict[int, torch.Tensor] = {}
            for i, t in zip(node.inputs, a_ins):
                g = t[rows]  # (B, k, *shape_i)
                pending[i] = pending[i] + torch.cat([g, -g], 1) if i in pending else torch.cat([g, -g], 1)
            if c is not None:
                cg = c[rows]
                const = torch.cat([cg, -cg], 1)
            else:
                const = torch.zeros(B, 2 * k, dtype=lo.dtype, device=lo.device)
            res = _back_substitute(graph, pending, const, idx - 1, bounds, p)
        else:
            A = torch.zeros(B, 2 * k, numel, dtype=lo.dtype, device=lo.device)
            rk = torch.arange(k, device=lo.device)[None, :]
            A[ar, rk, rows] = 1.0
            A[ar, rk + k, rows] = -1.0
            res = backward_bound(graph, idx, A.reshape(B, 2 * k, *node.shape), bounds, p)
        new_lo, new_hi = res[:, :k], -res[:, k:]
        old_lo, old_hi = lo_f.gather(1, rows), hi_f.gather(1, rows)
        keep = ~valid[:, start : start + k]
        if intersect:
            new_lo, new_hi = torch.maximum(new_lo, old_lo), torch.minimum(new_hi, old_hi)
        new_lo = torch.where(keep, old_lo, new_lo)
        new_hi = torch.where(keep, old_hi, new_hi)
        lo_f = lo_f.scatter(1, rows, new_lo)
        hi_f = hi_f.scatter(1, rows, new_hi)
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
