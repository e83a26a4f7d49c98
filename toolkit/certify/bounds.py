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

CROWN's intermediate bounds take one of two routes with the same result (up to float
rounding), whichever :func:`use_directions` expects to be cheaper:

- **forward directions** (:class:`_Directions`): every node is carried as an affine function
  of the input and of the outputs of the unstable ReLUs below it (stable ReLUs folded in), so
  bounding a neuron needs only small matrices, one per unstable ReLU below it. Pays each layer
  once per column (1 + input size + unstable neurons so far): the route for small inputs
  under wide layers (8x8 digits: 12x faster on cnn-large than the backward route).
- **backward**: each neuron's bound is a backward pass through every layer below it; the
  route for wide inputs (CIFAR-sized images) and a few neurons to refine.

Memory: one chunk of rows or one sub-batch of examples holds at most :data:`CHUNK_ELEMENTS`
numbers (times a few temporaries); rows of the identity specification used for intermediate
layers are also processed at most ``spec_chunk`` at a time.
Bounds are computed in floating point without outward rounding: they are sound up to
rounding error (about 1e-6 relative in float32; use ``dtype=torch.float64`` for more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RtkError
from .graph import BoundGraph, GraphNode, bound_graph
from .ops import Bound, ConvOp, IdentityOp, Pass, ReLUOp, ScaleShiftOp, neuron_rows

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
    Af, mid = neuron_rows(A, (hi + lo) / 2)
    rad = neuron_rows(A, (hi - lo) / 2)[1]
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


#: Whether CROWN's backward pass for a convolution's neurons is carried in windows of their receptive
#: fields (:func:`_window_bound`) where that is at most ``WINDOW_SHARE`` of the work of whole maps; tests switch
#: it off (or force it) to compare the two routes.
WINDOWS = True
WINDOW_SHARE = 0.5
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


# ---------------------------------------------------------------------------- convolution windows
def _window_chain(graph: BoundGraph, idx: int) -> list[GraphNode] | None:
    """The nodes from convolution ``idx`` down to the input, when each has one input and is a
    convolution (ungrouped, numeric zero padding), a ReLU, an elementwise scale-shift with no
    batch dimension or an identity: the chain along which the backward pass of one of the
    convolution's neurons stays inside that neuron's receptive field."""
    chain = []
    node = graph.nodes[idx]
    if not isinstance(node.op, ConvOp):
        return None
    while node.op.kind != "input":
        op = node.op
        if len(node.inputs) != 1 or len(node.shape) != 3:
            return None
        if isinstance(op, ConvOp):
            if op.groups != 1 or not all(isinstance(v, int) for v in op.padding):
                return None
        elif not isinstance(op, (ReLUOp, ScaleShiftOp, IdentityOp)):
            return None
        chain.append(node)
        node = graph.nodes[node.inputs[0]]
    chain.append(node)
    return chain if len(node.shape) == 3 else None


def _window_cost(chain: list[GraphNode]) -> tuple[int, int]:
    """Multiply-adds of one row's transposed convolutions over windows, and over whole maps."""
    hw: tuple[int, int] | None = None  # window (h, w) on the current node's map
    window = dense = 0
    for node, below in zip(chain, chain[1:]):
        op = node.op
        if not isinstance(op, ConvOp):
            continue
        kh, kw = (op.fixed_weight if op.fixed_weight is not None else op.module.weight).shape[-2:]
        per_tap = node.shape[0] * below.shape[0] * kh * kw
        if hw is None:  # the unit step is written, not computed
            hw = (op.dilation[0] * (kh - 1) + 1, op.dilation[1] * (kw - 1) + 1)
            continue
        window += per_tap * hw[0] * hw[1]
        dense += per_tap * node.shape[1] * node.shape[2]
        hw = (
            (hw[0] - 1) * op.stride[0] + op.dilation[0] * (kh - 1) + 1,
            (hw[1] - 1) * op.stride[1] + op.dilation[1] * (kw - 1) + 1,
        )
    return window, dense


def _gather_windows(maps: torch.Tensor, ex: torch.Tensor, oh: torch.Tensor, ow: torch.Tensor, size) -> torch.Tensor:
    """``maps`` (B or 1, C, H, W) read in windows: row ``n`` gets the ``size`` window of example
    ``ex[n]``'s map at offset (``oh[n]``, ``ow[n]``), zero where the window leaves the map;
    (N, C, h, w), channels_last in memory."""
    H, W = maps.shape[-2:]
    h, w = size
    top, left = max(0, -int(oh.min())), max(0, -int(ow.min()))
    bottom, right = max(0, int(oh.max()) + h - H), max(0, int(ow.max()) + w - W)
    padded = torch.nn.functional.pad(maps, (left, right, top, bottom))
    rows = oh[:, None] + top + torch.arange(h, device=maps.device)[None, :]
    cols = ow[:, None] + left + torch.arange(w, device=maps.device)[None, :]
    return padded[ex[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _window_bound(chain: list[GraphNode], rows: torch.Tensor, bounds: list[Bound], p: Pass) -> torch.Tensor:
    """Lower bounds (B, 2k) of the convolution ``chain[0]``'s neurons ``rows`` (B, k) and of their
    negations, by the CROWN backward pass carried in windows: each row's linear function is
    nonzero only on its neuron's receptive field, so it is held as a window of each map with an
    offset, and each transposed convolution runs over the window alone. The same bounds as the
    dense backward pass (up to float rounding); taps that fall outside a map read zeros there."""
    B, k = rows.shape
    dev = rows.device
    top = chain[0]
    conv = top.op
    assert isinstance(conv, ConvOp), "_window_chain starts at a convolution"
    w, bias = conv._params(p)
    c_out, h_out, w_out = top.shape
    flat = torch.cat([rows, rows], 1).reshape(-1)  # (B * 2k): lower bounds, then negated rows
    ex = torch.arange(B, device=dev).repeat_interleave(2 * k)
    sign = torch.ones(B, 2 * k, dtype=w.dtype, device=dev)
    sign[:, k:] = -1
    sign = sign.reshape(-1)
    channel, i, j = flat // (h_out * w_out), (flat // w_out) % h_out, flat % w_out
    kh, kw = w.shape[-2:]
    taps = w[channel] * sign[:, None, None, None]
    if conv.dilation != (1, 1):  # a dilated filter written into its full extent
        full = torch.zeros(
            len(flat),
            w.shape[1],
            conv.dilation[0] * (kh - 1) + 1,
            conv.dilation[1] * (kw - 1) + 1,
            dtype=w.dtype,
            device=dev,
        )
        full[:, :, :: conv.dilation[0], :: conv.dilation[1]] = taps
        taps = full
    A = taps.contiguous(memory_format=torch.channels_last)
    oh, ow = i * conv.stride[0] - conv.padding[0], j * conv.stride[1] - conv.padding[1]
    const = bias[channel] * sign if bias is not None else torch.zeros(len(flat), dtype=w.dtype, device=dev)
    one = torch.zeros(len(flat), dtype=torch.long, device=dev)  # rows reading a map without a batch dimension
    for node in chain[1:]:
        op = node.op
        size = A.shape[-2:]
        if op.kind == "input":
            lo, hi = bounds[node.index]
            mid = _gather_windows((hi + lo) / 2, ex, oh, ow, size)
            rad = _gather_windows((hi - lo) / 2, ex, oh, ow, size)
            const = const + (A * mid).sum((1, 2, 3)) - (A.abs() * rad).sum((1, 2, 3))
            break
        if isinstance(op, ReLUOp):
            low, up, up_bias = (
                _gather_windows(t, ex, oh, ow, size) for t in ReLUOp.relaxation(*bounds[node.inputs[0]])
            )
            neg = A.clamp(max=0)
            const = const + (neg * up_bias).sum((1, 2, 3))
            A = A * low
            A.addcmul_(neg, up - low)
        elif isinstance(op, ScaleShiftOp):
            scale, shift = op.params(p)
            full_shape = (1, *node.shape)
            if shift is not None:
                t = _gather_windows(torch.as_tensor(shift, dtype=w.dtype).expand(full_shape), one, oh, ow, size)
                const = const + (A * t).sum((1, 2, 3))
            if scale is not None:
                A = A * _gather_windows(torch.as_tensor(scale, dtype=w.dtype).expand(full_shape), one, oh, ow, size)
        elif isinstance(op, ConvOp):
            cw, cb = op._params(p)
            # only the window's positions inside this convolution's output map are neurons
            A = A * _gather_windows(torch.ones((1, 1, *node.shape[1:]), dtype=w.dtype, device=dev), one, oh, ow, size)
            if cb is not None:
                const = const + (A.sum((2, 3)) * cb).sum(1)
            A = torch.nn.functional.conv_transpose2d(
                A, cw.contiguous(memory_format=torch.channels_last), None, op.stride, 0, 0, 1, op.dilation
            )
            oh, ow = oh * op.stride[0] - op.padding[0], ow * op.stride[1] - op.padding[1]
        # IdentityOp: nothing to do
    return const.reshape(B, 2 * k)


def _refine(
    graph: BoundGraph,
    idx: int,
    current: Bound,
    bounds: list[Bound],
    p: Pass,
    spec_chunk: int,
    intersect: bool,
    directions: _Directions | None = None,
) -> Bound:
    """CROWN bounds of node ``idx``'s neurons.

    Each example bounds only its own neurons that are unstable under the interval bounds
    (all of them without ``intersect``), packed into rows of its own, so examples do not pay
    for each other's unstable neurons and results do not depend on how examples are batched.

    With ``directions`` (the forward-direction pass) the node is already an affine function of
    the input and of the unstable ReLU outputs below it, and each row's backward pass runs over
    those small matrices only. Without, the first backward step (the node's own affine map) is
    computed once for all neurons and gathered per example when its table is small, and each row
    goes backward through every layer below.
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
    if directions is not None:
        width = directions.nodes[idx].shape[1]
        k_max = max(1, min(spec_chunk, CHUNK_ELEMENTS // max(1, B * 2 * width)))

        def solve(rows: torch.Tensor) -> torch.Tensor:
            return directions.bound_rows(idx, rows, bounds[0])

    else:
        table = _first_step(graph, idx, bounds, p, lo.dtype, lo.device)
        unit_rows = getattr(node.op, "unit_rows", None) if table is None else None
        chain = _window_chain(graph, idx) if table is None and not p.training and WINDOWS else None
        if chain is not None:
            window, dense = _window_cost(chain)
            if window > WINDOW_SHARE * dense:
                chain = None
        widest = max(n.numel for n in graph.nodes[: idx + 1])
        k_max = max(1, min(spec_chunk, CHUNK_ELEMENTS // max(1, B * 2 * widest)))
        ar = torch.arange(B, device=lo.device)[:, None]

        def solve(rows: torch.Tensor) -> torch.Tensor:
            k = rows.shape[1]
            if chain is not None:
                return _window_bound(chain, rows, bounds, p)
            # the node's own backward step for the rows and their negations (upper bounds):
            # ([(B, 2k, *shape_i)], (B, 2k) or None)
            step = None
            if table is not None:
                step = (
                    [torch.cat([t[rows], -t[rows]], 1) for t in table[0]],
                    torch.cat([table[1][rows], -table[1][rows]], 1) if table[1] is not None else None,
                )
            elif unit_rows is not None:
                step = unit_rows(p, torch.cat([rows, rows], 1))
                if step is not None:
                    for t in (*step[0], step[1]):
                        if t is not None:
                            t[:, k:].neg_()
            if step is not None:
                pending: dict[int, torch.Tensor] = {}
                for i, g in zip(node.inputs, step[0]):
                    pending[i] = pending[i] + g if i in pending else g
                const = step[1] if step[1] is not None else torch.zeros(B, 2 * k, dtype=lo.dtype, device=lo.device)
                return _back_substitute(graph, pending, const, idx - 1, bounds, p)
            A = torch.zeros(B, 2 * k, numel, dtype=lo.dtype, device=lo.device)
            rk = torch.arange(k, device=lo.device)[None, :]
            A[ar, rk, rows] = 1.0
            A[ar, rk + k, rows] = -1.0
            return backward_bound(graph, idx, A.reshape(B, 2 * k, *node.shape), bounds, p)

    for start in range(0, R, k_max):
        rows = order[:, start : start + k_max]  # (B, k)
        k = rows.shape[1]
        res = solve(rows)
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


# ---------------------------------------------------------------------------- forward directions
@dataclass
class _Unstable:
    """The unstable neurons of one ReLU (per example, padded to the batch's largest count ``U``):
    the affine function of their pre-activations (``pre`` (B, W, U) over the ``W`` columns that
    existed below the ReLU) and their relaxation; padding has all zeros, so it adds nothing."""

    pre: torch.Tensor
    low: torch.Tensor
    up: torch.Tensor
    up_bias: torch.Tensor


class _Directions:
    """Every node as an affine function of the input and of the outputs of the unstable ReLUs
    below it, with the stable ReLUs folded in (their relaxation is exact: slope 0 or 1).

    ``nodes[i]`` is (B, W_i, *shape_i): column 0 the constant, columns 1..n0 the input's
    coordinates, then one column per unstable neuron of each ReLU met so far (in graph order).
    A CROWN row ``a . node[L]`` then needs no pass through the layers: its coefficient on
    each unstable ReLU's outputs is read off these columns, relaxed (upper chord or lower slope,
    by sign, as :meth:`ReLUOp.backward` does), and substituted by that ReLU's pre-activation
    columns, from the highest ReLU down; what remains is a function of the input, concretized
    over the box. This is the same bound as the backward pass through the graph (the same
    products, associated differently); it pays ``W_i`` columns per layer once instead of
    ``2 x (unstable neurons of every refined layer above)`` rows per layer.
    """

    def __init__(self, graph: BoundGraph, box: Bound, p: Pass) -> None:
        lo = box[0]
        B, n0 = lo.shape[0], graph.nodes[0].numel
        self.graph, self.p = graph, p
        eye = torch.eye(1 + n0, dtype=lo.dtype, device=lo.device)[:, 1:]  # column 0: the constant
        self.nodes: dict[int, torch.Tensor] = {
            0: eye.reshape(1, 1 + n0, *graph.nodes[0].shape).expand(B, *((-1,) * lo.dim()))
        }
        self.width = 1 + n0
        self.relus: list[_Unstable] = []
        self._by_neuron: tuple[int, torch.Tensor | None] = (-1, None)
        last_use = [0] * len(graph.nodes)
        for n in graph.nodes:
            for i in n.inputs:
                last_use[i] = n.index
        self.last_use = last_use

    def _padded(self, i: int) -> torch.Tensor:
        T = self.nodes[i]
        if T.shape[1] == self.width:
            return T
        pad = T.new_zeros(T.shape[0], self.width - T.shape[1], *T.shape[2:])
        return torch.cat([T, pad], 1)

    def add(self, idx: int, bounds: list[Bound]) -> None:
        """Node ``idx``'s columns from its inputs' (and, for a ReLU, its input's final bounds)."""
        node = self.graph.nodes[idx]
        ins = [self._padded(i) for i in node.inputs]
        if node.op.kind == "relu":
            (T,) = ins
            lo, hi = bounds[node.inputs[0]]
            low, up, up_bias = ReLUOp.relaxation(lo, hi)
            unstable = ((lo < 0) & (hi > 0)).flatten(1)
            slope = low.flatten(1).masked_fill(unstable, 0.0)  # stable: exact; unstable: own columns
            counts = unstable.sum(1)
            U = int(counts.max()) if len(counts) else 0
            B, W = T.shape[:2]
            grad = torch.is_grad_enabled() and (T.requires_grad or slope.requires_grad)
            if U and not grad:  # written in place into one tensor with room for the new columns
                out = T.new_empty(B, W + U, *T.shape[2:])
                torch.mul(T.flatten(2), slope[:, None, :], out=out[:, :W].flatten(2))
            else:
                out = T * slope.reshape(B, 1, *T.shape[2:])
            if U:
                order = torch.argsort((~unstable).to(torch.int8), dim=1, stable=True)[:, :U]
                valid = (torch.arange(U, device=T.device)[None, :] < counts[:, None]).to(T.dtype)
                Tf = T.flatten(2)
                pre = Tf.gather(2, order[:, None, :].expand(B, Tf.shape[1], U)) * valid[:, None, :]

                def pick(t: torch.Tensor) -> torch.Tensor:
                    return t.flatten(1).gather(1, order) * valid

                self.relus.append(_Unstable(pre, pick(low), pick(up), pick(up_bias)))
                if grad:
                    fresh = T.new_zeros(B, U, Tf.shape[2]).scatter(2, order[:, :, None], valid[:, :, None])
                    out = torch.cat([out, fresh.reshape(B, U, *T.shape[2:])], 1)
                else:
                    fresh = out.flatten(2)[:, W:]
                    fresh.zero_()
                    fresh.scatter_(2, order[:, :, None], valid[:, :, None])
                self.width += U
        else:
            out = node.op.push(self.p, *ins)
            c = node.op.offset(self.p)
            if c is not None:
                if any(out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in ins):
                    out = out.clone()  # the op passed its input through
                out[:, 0] += c
        self.nodes[idx] = out
        for i in node.inputs:
            if self.last_use[i] <= idx:
                self.nodes.pop(i, None)

    def bound_rows(self, idx: int, rows: torch.Tensor, box: Bound) -> torch.Tensor:
        """Lower bounds (B, 2k) of ``+node[idx][rows]`` then ``-node[idx][rows]`` (rows: (B, k) indices)."""
        if self._by_neuron[0] != idx:  # (B, neurons, W): each row's columns contiguous, for the gathers
            self._by_neuron = (idx, self.nodes[idx].flatten(2).transpose(1, 2).contiguous())
        T = self._by_neuron[1]
        B, W, k = T.shape[0], T.shape[2], rows.shape[1]
        index = rows[:, :, None].expand(B, k, W)
        grad = torch.is_grad_enabled() and T.requires_grad
        if grad:
            g = T.gather(1, index)
            c = torch.cat([g, -g], 1)
        else:
            c = T.new_empty(B, 2 * k, W)
            torch.gather(T, 1, index, out=c[:, :k])
            torch.neg(c[:, :k], out=c[:, k:])
        const = torch.zeros(c.shape[:2], dtype=c.dtype, device=c.device)
        for r in reversed(self.relus):
            width, U = r.pre.shape[1], r.pre.shape[2]
            if width >= c.shape[2]:
                continue  # created after this node
            mu = c[:, :, width : width + U]
            neg = mu.clamp(max=0)
            const = const + neg.matmul(r.up_bias.unsqueeze(2)).squeeze(2)
            nu = torch.addcmul(mu * r.low.unsqueeze(1), neg, (r.up - r.low).unsqueeze(1))
            if grad:
                c = torch.baddbmm(c[:, :, :width], nu, r.pre.transpose(1, 2))
            else:
                c = c[:, :, :width].baddbmm_(nu, r.pre.transpose(1, 2))
        n0 = self.graph.nodes[0].numel
        return const + c[:, :, 0] + concretize(c[:, :, 1 : 1 + n0], box)


def _macs(node: GraphNode, graph: BoundGraph) -> int:
    """Multiply-adds of one direction (or one backward row) through ``node``."""
    op = node.op
    if isinstance(op, ConvOp):
        w = op.fixed_weight if op.fixed_weight is not None else op.module.weight
        return node.numel * int(w[0].numel())
    if node.op.kind == "linear":
        return node.numel * sum(graph.nodes[i].numel for i in node.inputs)
    return node.numel


def use_directions(graph: BoundGraph, box: Bound, p: Pass, intersect: bool) -> int:
    """How many examples one forward-direction pass takes at a time; 0 when the backward pass
    through the graph is expected to be cheaper (a wide input and few neurons to refine) or one
    example's columns would not fit in :data:`CHUNK_ELEMENTS`.

    Both costs are estimated from interval bounds (an upper bound on the neurons CROWN leaves
    unstable): the forward pass pays each layer once per column (constant, input coordinates,
    unstable ReLU outputs below it); the backward pass pays every layer below a refined node
    twice per neuron refined.
    """
    refined = [i for i, r in enumerate(graph.refine) if r]
    if not refined:
        return 0
    last = refined[-1]
    ibp = interval_pass(graph, box, p) if intersect else None
    width = 1 + graph.nodes[0].numel
    forward = backward = 0
    below = 0  # macs of one row from the current node down to the input
    mem = 0
    for n in graph.nodes[1 : last + 1]:
        m = _macs(n, graph)
        if graph.refine[n.index]:
            if ibp is None:
                rows = n.numel
            else:
                lo, hi = ibp[n.index]
                rows = int(((lo < 0) & (hi > 0)).flatten(1).sum(1).max())
            backward += 2 * rows * below
            forward += 2 * rows * width  # gathering the rows (the relaxations cost about as much again)
        if n.op.kind == "relu":
            if ibp is None:
                width += n.numel
            else:
                lo, hi = ibp[n.inputs[0]]
                width += int(((lo < 0) & (hi > 0)).flatten(1).sum(1).max())
        forward += width * m
        below += m
        mem = max(mem, width * n.numel)
    if forward >= backward or mem > CHUNK_ELEMENTS:
        return 0
    return max(1, CHUNK_ELEMENTS // mem)


def crown_pass(
    graph: BoundGraph,
    box: Bound,
    p: Pass,
    *,
    spec_chunk: int = 256,
    intersect: bool = True,
    strategy: str = "auto",
) -> list[Bound]:
    """Bounds of every node, with CROWN for the pre-activations of every ReLU.

    ``strategy``: ``backward`` (every row goes backward through the graph), ``forward`` (the
    forward-direction pass of :class:`_Directions`, the same bounds) or ``auto`` (the one
    :func:`use_directions` expects to be cheaper).
    """
    if strategy not in ("auto", "forward", "backward"):
        raise RtkError(f"unknown CROWN strategy {strategy!r}; allowed: auto, forward, backward")
    B = box[0].shape[0]
    chunk = 0
    if strategy != "backward" and B:
        chunk = use_directions(graph, box, p, intersect)
        if strategy == "forward":
            chunk = max(chunk, 1)
        if p.training and chunk:
            chunk = B  # batch statistics and dropout masks belong to the whole batch
    if not chunk:
        return _crown_pass(graph, box, p, spec_chunk, intersect, False)
    parts = [
        _crown_pass(graph, (box[0][s : s + chunk], box[1][s : s + chunk]), p, spec_chunk, intersect, True)
        for s in range(0, B, chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    return [(torch.cat([q[i][0] for q in parts]), torch.cat([q[i][1] for q in parts])) for i in range(len(parts[0]))]


def _crown_pass(graph: BoundGraph, box: Bound, p: Pass, spec_chunk: int, intersect: bool, forward: bool) -> list[Bound]:
    refined = [i for i, r in enumerate(graph.refine) if r]
    last = refined[-1] if refined else 0
    dirs = _Directions(graph, box, p) if forward and refined else None
    bounds: list[Bound] = [box]
    for n in graph.nodes[1:]:
        b = n.op.interval(p, *(bounds[i] for i in n.inputs))
        bounds.append(b)
        if dirs is not None and n.index <= last:
            dirs.add(n.index, bounds)
        if graph.refine[n.index]:
            bounds[n.index] = _refine(graph, n.index, b, bounds, p, spec_chunk, intersect, dirs)
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
