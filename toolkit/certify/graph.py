"""A model as a graph of bound-propagation operations.

:func:`bound_graph` traces a model with ``torch.fx`` and turns every node into an
:class:`Op` that knows three things:

- ``forward``: the exact computation on a point (used to check the graph against the model);
- ``interval``: interval bound propagation (IBP) from input intervals to an output interval;
- ``backward``: the backward linear relaxation step of CROWN, mapping a linear function of
  the op's output ``A @ out`` to a linear function of its inputs plus a constant.

Supported: ``nn.Linear``, ``nn.Conv2d`` (zero padding), ``nn.ReLU`` (and ``F.relu``),
``nn.BatchNorm1d/2d`` (eval mode; batch statistics of the interval centres in training
mode), ``nn.Flatten``/``view``/``reshape``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d`` (output
sizes dividing the input), :class:`rtk.models.Normalize`, ``nn.Identity``, ``nn.Dropout``,
additions of two branches (residual connections), and additions, subtractions,
multiplications and divisions by constants. Anything else raises
:class:`UnsupportedLayerError` naming the layer, never a silently wrong bound.

Parameters are read from the live modules at every call (never copied), so the same
graph serves certification and certified training, and pruning masks applied with
``torch.nn.utils.prune`` or ``torch.nn.utils.parametrize`` are honoured.
"""

from __future__ import annotations

import logging
import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RtkError
from ..models.layers import Normalize

log = logging.getLogger(__name__)

Bound = tuple[torch.Tensor, torch.Tensor]

SUPPORTED = (
    "Linear, Conv2d (zero padding), ReLU / F.relu, BatchNorm1d, BatchNorm2d (eval mode), Flatten / view / reshape, "
    "AvgPool2d, AdaptiveAvgPool2d (output size dividing the input), rtk.models.Normalize, Identity, Dropout, "
    "residual additions of two branches (x + y, x - y), and +, -, *, / by constants"
)


class UnsupportedLayerError(RtkError):
    """A layer or operation the bound propagation does not support."""

    def __init__(self, where: str, what: str, detail: str = "") -> None:
        self.where = where
        self.what = what
        extra = f" ({detail})" if detail else ""
        super().__init__(f"certification: layer {where!r} ({what}) is not supported{extra}. "
                         f"Supported layers: {SUPPORTED}.")


class Pass:
    """State of one bound computation: the dtype, whether the model trains (batch-norm
    statistics, dropout masks), and what ops cache between their interval and backward steps."""

    def __init__(self, dtype: torch.dtype = torch.float32, training: bool = False) -> None:
        self.dtype = dtype
        self.training = training
        self.cache: dict[Any, Any] = {}


# ---------------------------------------------------------------------------- helpers
def _mid_rad(b: Bound) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = b
    return (hi + lo) / 2, (hi - lo) / 2


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension after the first two (batch, specification)."""
    return t.flatten(2).sum(-1)


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight a Linear/Conv2d layer's forward pass really uses, differentiably.

    - a layer that defines ``effective_weight()`` (the protocol for custom masked layers);
    - ``torch.nn.utils.prune``: ``weight_orig * weight_mask`` (``weight`` itself is refreshed
      only by a forward pre-hook);
    - rtk's masked layers (:mod:`rtk.pruning`): ``weight * weight_mask``, so pruned weights get
      no gradient; rtk's scored (HYDRA) layers: ``weight`` times the top-k mask of ``|scores|``,
      with the straight-through gradient to the scores that their forward pass uses;
    - otherwise ``weight`` (``torch.nn.utils.parametrize`` computes it on access).
    """
    fn = getattr(module, "effective_weight", None)
    if callable(fn):
        return fn()
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    w = module.weight
    if getattr(type(module), "_rtk_base", None) is not None:
        scores = getattr(module, "scores", None)
        if isinstance(scores, torch.Tensor) and callable(getattr(module, "current_mask", None)):
            mag = scores.abs()
            return w * (module.current_mask().to(w.dtype) + (mag - mag.detach()))
        mask = getattr(module, "weight_mask", None)
        if isinstance(mask, torch.Tensor):
            return w * mask.to(w.dtype)
    return w


def _bias(module: nn.Module) -> torch.Tensor | None:
    if hasattr(module, "bias_orig") and hasattr(module, "bias_mask"):
        return module.bias_orig * module.bias_mask
    return module.bias


#: Largest convolution (inputs x outputs) that CROWN's backward pass turns into a dense matrix.
DENSE_LIMIT = 1 << 22


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _rows(A: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Merge batch and specification dimensions of ``A`` (B, S, *shape) for batched ops."""
    return A.reshape(A.shape[0] * A.shape[1], *A.shape[2:2 + n_dims])


# ---------------------------------------------------------------------------- ops
class Op:
    """One node's computation. ``kind`` is input, linear (mixes features), diag
    (elementwise affine), reshape, relu or add."""

    kind = "op"

    def forward(self, p: Pass, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, p: Pass, *bs: Bound) -> Bound:
        raise NotImplementedError

    def backward(self, p: Pass, A: torch.Tensor, *bs: Bound) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Given ``A`` (B, S, *out_shape), return per input ``A_i`` (B, S, *in_shape) and a
        bias (B, S) such that ``A . out >= sum_i A_i . in_i + bias`` for inputs inside
        ``bs`` (for linear ops this is an equality)."""
        raise NotImplementedError


class InputOp(Op):
    kind = "input"

    def forward(self, p, x):
        return x


class IdentityOp(Op):
    kind = "reshape"

    def forward(self, p, x):
        return x

    def interval(self, p, b):
        return b

    def backward(self, p, A, b):
        return [A], None


class ReshapeOp(Op):
    kind = "reshape"

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, p, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, p, b):
        lo, hi = b
        return lo.reshape(lo.shape[0], *self.out_shape), hi.reshape(hi.shape[0], *self.out_shape)

    def backward(self, p, A, b):
        return [A.reshape(A.shape[0], A.shape[1], *self.in_shape)], None


class LinearOp(Op):
    kind = "linear"

    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def _params(self, p: Pass):
        w = _weight(self.module).to(p.dtype)
        b = _bias(self.module)
        return w, (b.to(p.dtype) if b is not None else None)

    def forward(self, p, x):
        w, b = self._params(p)
        return F.linear(x, w, b)

    def interval(self, p, b):
        w, bias = self._params(p)
        mid, rad = _mid_rad(b)
        c, r = F.linear(mid, w, bias), F.linear(rad, w.abs())
        return c - r, c + r

    def backward(self, p, A, b):
        w, bias = self._params(p)
        return [A.matmul(w)], (A.matmul(bias) if bias is not None else None)


class ConvOp(Op):
    kind = "linear"

    def __init__(self, module: nn.Conv2d | None, in_shape: Sequence[int], out_shape: Sequence[int], *,
                 stride=None, padding=None, dilation=None, groups=None, fixed_weight: torch.Tensor | None = None) -> None:
        self.module = module
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        m = module
        self.stride = tuple(stride if stride is not None else m.stride)
        self.padding = tuple(padding if padding is not None else m.padding)
        self.dilation = tuple(dilation if dilation is not None else m.dilation)
        self.groups = groups if groups is not None else m.groups
        self.fixed_weight = fixed_weight
        k = (fixed_weight if fixed_weight is not None else m.weight).shape[-2:]
        # output padding making conv_transpose2d return exactly the input's spatial size
        self.output_padding = tuple(
            self.in_shape[1 + i] - ((self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                                    + self.dilation[i] * (k[i] - 1) + 1)
            for i in range(2))

    def _params(self, p: Pass):
        if self.fixed_weight is not None:
            return self.fixed_weight.to(p.dtype), None
        w = _weight(self.module).to(p.dtype)
        b = _bias(self.module)
        return w, (b.to(p.dtype) if b is not None else None)

    def _conv(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, p, x):
        w, b = self._params(p)
        return self._conv(x, w, b)

    def interval(self, p, b):
        w, bias = self._params(p)
        mid, rad = _mid_rad(b)
        c, r = self._conv(mid, w, bias), self._conv(rad, w.abs(), None)
        return c - r, c + r

    def _dense(self, p: Pass, w: torch.Tensor) -> torch.Tensor | None:
        """The convolution as an (out, in) matrix when that is small and not much more work:
        a matmul beats conv_transpose2d on many rows of tiny feature maps."""
        n_in, n_out = _numel(self.in_shape), _numel(self.out_shape)
        per_row_conv = w.shape[1] * w.shape[2] * w.shape[3]
        if n_in * n_out > DENSE_LIMIT or n_in > 32 * per_row_conv:
            return None
        key = ("dense", id(self))
        if key not in p.cache:
            eye = torch.eye(n_in, dtype=w.dtype, device=w.device).reshape(n_in, *self.in_shape)
            p.cache[key] = self._conv(eye, w, None).reshape(n_in, n_out).t()
        return p.cache[key]

    def backward(self, p, A, b):
        w, bias = self._params(p)
        B, S = A.shape[:2]
        dense = self._dense(p, w)
        if dense is not None:
            a_in = A.reshape(B, S, -1).matmul(dense)
        else:
            # channels_last makes the CPU kernel about 1.3-2x faster, conversions included
            cl = torch.channels_last
            a_in = F.conv_transpose2d(_rows(A, 3).contiguous(memory_format=cl), w.contiguous(memory_format=cl), None,
                                      self.stride, self.padding, self.output_padding, self.groups,
                                      self.dilation).contiguous()
        a_in = a_in.reshape(B, S, *self.in_shape)
        const = (A.sum((-2, -1)) * bias).sum(-1) if bias is not None else None
        return [a_in], const


class ScaleShiftOp(Op):
    """``x * scale + shift`` with ``scale``/``shift`` broadcastable to one example's shape."""

    kind = "diag"

    def __init__(self, scale: Callable[[Pass], torch.Tensor | None], shift: Callable[[Pass], torch.Tensor | None]) -> None:
        self.scale_fn, self.shift_fn = scale, shift

    def params(self, p: Pass, b: Bound | None = None, x: torch.Tensor | None = None):
        return self.scale_fn(p), self.shift_fn(p)

    def forward(self, p, x):
        s, t = self.params(p, x=x)
        out = x * s if s is not None else x
        return out + t if t is not None else out

    def interval(self, p, b):
        s, t = self.params(p, b=b)
        if s is None:
            lo, hi = b
        else:
            mid, rad = _mid_rad(b)
            mid, rad = mid * s, rad * s.abs()
            lo, hi = mid - rad, mid + rad
        if t is not None:
            lo, hi = lo + t, hi + t
        return lo, hi

    def backward(self, p, A, b):
        s, t = self.params(p)
        const = _flat_sum(A * t) if t is not None else None
        return [A * s if s is not None else A], const


class BatchNormOp(ScaleShiftOp):
    """Batch norm as a per-channel affine map: running statistics in eval mode; in training
    mode the batch statistics of the interval centres (of the point batch in ``forward``),
    which is exact for the affine map the layer applies to that batch."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, n_dims: int, where: str) -> None:
        self.module, self.n_dims, self.where = module, n_dims, where

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (self.n_dims - 1)))

    def params(self, p, b=None, x=None):
        m = self.module
        if m.running_mean is None and not p.training:
            raise UnsupportedLayerError(self.where, type(m).__name__, "track_running_stats=False: in eval mode it "
                                        "normalizes with batch statistics, so no example has a certificate of its own")
        if p.training and m.training:
            key = ("bn", id(self))
            if x is None and b is None:
                if key not in p.cache:
                    raise RtkError(f"certification: batch norm {self.where!r} in training mode needs an interval pass first")
                mean, var = p.cache[key]
            else:
                ref = x if x is not None else (b[0] + b[1]) / 2
                dims = [0] + list(range(2, ref.dim()))
                mean, var = ref.mean(dims), ref.var(dims, unbiased=False)
                p.cache[key] = (mean, var)
        else:
            mean, var = m.running_mean.to(p.dtype), m.running_var.to(p.dtype)
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.to(p.dtype)
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias.to(p.dtype)
        return self._view(scale), self._view(shift)


class DropoutOp(ScaleShiftOp):
    """Identity in eval mode; in training mode one random mask per pass, shared by its
    interval and backward steps (so the bound holds for that draw of the mask)."""

    def __init__(self, module: nn.Dropout) -> None:
        self.module = module

    def params(self, p, b=None, x=None):
        if not (p.training and self.module.training) or self.module.p == 0:
            return None, None
        key = ("dropout", id(self))
        if key not in p.cache:
            ref = x if x is not None else b[0]
            keep = 1 - self.module.p
            p.cache[key] = torch.bernoulli(torch.full_like(ref, keep)) / keep
        mask = p.cache[key]
        return mask.unsqueeze(1) if b is None and x is None else mask, None

    def backward(self, p, A, b):
        mask, _ = self.params(p)
        return [A * mask if mask is not None else A], None

    def interval(self, p, b):
        mask, _ = self.params(p, b=b)
        if mask is None:
            return b
        return b[0] * mask, b[1] * mask

    def forward(self, p, x):
        mask, _ = self.params(p, x=x)
        return x * mask if mask is not None else x


class ReLUOp(Op):
    """ReLU with the CROWN relaxation: the chord above, slope 0 or 1 below (whichever
    leaves the smaller area, "CROWN-Ada"), exact for stable neurons."""

    kind = "relu"

    def forward(self, p, x):
        return torch.relu(x)

    def interval(self, p, b):
        return torch.relu(b[0]), torch.relu(b[1])

    @staticmethod
    def relaxation(lo: torch.Tensor, hi: torch.Tensor):
        active = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        up_slope = torch.where(unstable, hi / denom, active.to(hi.dtype))
        up_bias = torch.where(unstable, -lo * up_slope, torch.zeros_like(hi))
        low_slope = torch.where(unstable, (hi > -lo).to(hi.dtype), active.to(hi.dtype))
        return low_slope, up_slope, up_bias

    def backward(self, p, A, b):
        low_slope, up_slope, up_bias = self.relaxation(*b)
        neg = A.clamp(max=0)
        a_in = torch.addcmul(A * low_slope.unsqueeze(1), neg, (up_slope - low_slope).unsqueeze(1))
        const = torch.einsum("bsn,bn->bs", neg.flatten(2), up_bias.flatten(1))
        return [a_in], const


class AddOp(Op):
    """``sum_i sign_i * x_i`` over two or more branches (residual connections)."""

    kind = "add"

    def __init__(self, signs: Sequence[float]) -> None:
        self.signs = tuple(float(s) for s in signs)

    def forward(self, p, *xs):
        return sum(s * x for s, x in zip(self.signs, xs))

    def interval(self, p, *bs):
        lo = sum(s * (b[0] if s > 0 else b[1]) for s, b in zip(self.signs, bs))
        hi = sum(s * (b[1] if s > 0 else b[0]) for s, b in zip(self.signs, bs))
        return lo, hi

    def backward(self, p, A, *bs):
        return [A if s == 1.0 else A * s for s in self.signs], None


# ---------------------------------------------------------------------------- graph
@dataclass
class GraphNode:
    index: int
    name: str
    op: Op
    inputs: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class BoundGraph:
    """Nodes in topological order; node 0 is the input, the last node the output.

    ``refine[i]`` says whether CROWN should tighten node i's bounds: it feeds a ReLU and
    its interval bound is not already exact (an affine map of the input with at most one
    feature-mixing layer is bounded exactly by IBP).
    """

    nodes: list[GraphNode]
    refine: list[bool] = field(default_factory=list)

    @property
    def output(self) -> GraphNode:
        return self.nodes[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    def forward(self, x: torch.Tensor, p: Pass | None = None) -> torch.Tensor:
        """Evaluate the graph on a point (checks the graph reproduces the model)."""
        p = p or Pass(x.dtype)
        vals: list[torch.Tensor | None] = [None] * len(self.nodes)
        vals[0] = x
        for n in self.nodes[1:]:
            vals[n.index] = n.op.forward(p, *(vals[i] for i in n.inputs))
        return vals[-1]

    def describe(self) -> str:
        lines = []
        for n in self.nodes:
            ins = ",".join(str(i) for i in n.inputs)
            lines.append(f"{n.index:3d} {n.name:<24} {type(n.op).__name__:<14} in=[{ins}] shape={list(n.shape)}"
                         f"{' refine' if self.refine and self.refine[n.index] else ''}")
        return "\n".join(lines)


def _mark_refinement(nodes: list[GraphNode]) -> list[bool]:
    relu_after: set[int] = set()
    below_relu = [False] * len(nodes)
    mixes = [0] * len(nodes)
    for n in nodes[1:]:
        if n.op.kind == "relu":
            relu_after.update(n.inputs)
        below_relu[n.index] = any(below_relu[i] or nodes[i].op.kind == "relu" for i in n.inputs)
        inherited = max(mixes[i] for i in n.inputs)
        if n.op.kind == "linear":
            inherited += 1
        elif n.op.kind == "add":
            inherited = 2
        mixes[n.index] = inherited
    return [i in relu_after and (below_relu[i] or mixes[i] >= 2) for i in range(len(nodes))]


# ---------------------------------------------------------------------------- tracing
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous", "view_as", "reshape_as"}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}


class _Tracer(torch.fx.Tracer):
    LEAVES = (Normalize, nn.Linear, nn.Conv2d, nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.AvgPool2d,
              nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.LEAVES):
            return True
        return super().is_leaf_module(m, qualname)


def _owner(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            return f"{path}.{node.name}"
    return node.name


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check_hooks(model: nn.Module) -> None:
    from torch.nn.modules import module as _mm
    from torch.nn.utils.prune import BasePruningMethod

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(_mm, attr, None):
            raise RtkError("certification: global module forward hooks are registered; they change what the model "
                           "computes in ways bound propagation cannot see. Remove them before certifying.")
    for name, m in model.named_modules():
        where = name or "<model>"
        if m._forward_hooks:
            raise UnsupportedLayerError(where, type(m).__name__, "it has forward hooks; remove them before certifying")
        for h in m._forward_pre_hooks.values():
            if not isinstance(h, BasePruningMethod):
                raise UnsupportedLayerError(where, type(m).__name__,
                                            "it has forward pre-hooks other than torch.nn.utils.prune masks")


def _exact(m: nn.Module, cls: type[nn.Module]) -> bool:
    """``m`` computes what ``cls`` computes: its forward is ``cls``'s, or it is a weight-masking
    subclass (rtk's masked and scored layers, or a layer with ``effective_weight()``) whose
    forward is ``cls``'s operation with the weight of :func:`_weight`."""
    if not isinstance(m, cls):
        return False
    if type(m).forward is cls.forward:
        return True
    if cls in (nn.Linear, nn.Conv2d):
        return getattr(type(m), "_rtk_base", None) is cls or callable(getattr(m, "effective_weight", None))
    return False


class _Builder:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.nodes: list[GraphNode] = []
        self.index: dict[torch.fx.Node, int] = {}
        self.consts: dict[torch.fx.Node, Callable[[], Any]] = {}
        self.aux: set[torch.fx.Node] = set()

    # -- values
    def shape_of(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        from torch.fx.passes.shape_prop import TensorMetadata

        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None

    def const(self, arg: Any, where: str, what: str) -> Callable[[], Any]:
        """A lazily evaluated constant (live parameters and buffers, python numbers)."""
        if isinstance(arg, torch.fx.Node):
            if arg in self.consts:
                return self.consts[arg]
            raise UnsupportedLayerError(where, what, f"operand {arg.name!r} is neither a constant nor a supported tensor")
        if isinstance(arg, (int, float)):
            return lambda v=arg: v
        if isinstance(arg, torch.Tensor):
            return lambda v=arg: v
        raise UnsupportedLayerError(where, what, f"unsupported operand {arg!r}")

    def add(self, name: str, op: Op, inputs: Sequence[int], fx_node: torch.fx.Node) -> None:
        shape = self.shape_of(fx_node)
        if shape is None or len(shape) < 1 or shape[0] != self.batch:
            raise UnsupportedLayerError(name, type(op).__name__, "its output does not keep the batch dimension first")
        idx = len(self.nodes)
        self.nodes.append(GraphNode(idx, name, op, tuple(inputs), shape[1:]))
        self.index[fx_node] = idx

    # -- elementwise constants
    def _const_tensor(self, fn: Callable[[], Any], shape: tuple[int, ...], where: str, what: str) -> Callable[[Pass], Any]:
        def get(p: Pass):
            v = fn()
            if not isinstance(v, torch.Tensor):
                return torch.as_tensor(float(v), dtype=p.dtype)
            v = v.to(p.dtype)
            if v.dim() > len(shape):
                if v.dim() != len(shape) + 1 or v.shape[0] != 1:
                    raise UnsupportedLayerError(where, what, "a constant with a batch dimension")
                v = v[0]
            return v
        return get

    def affine_const(self, fx_node, where: str, what: str, bound_arg, scale=None, shift=None) -> None:
        i = self.index[bound_arg]
        out_shape = self.shape_of(fx_node)
        if out_shape is None or out_shape[1:] != self.nodes[i].shape:
            raise UnsupportedLayerError(where, what, "broadcasting that changes the tensor's shape")
        shape = self.nodes[i].shape
        sf = self._const_tensor(scale, shape, where, what) if scale is not None else (lambda p: None)
        tf = self._const_tensor(shift, shape, where, what) if shift is not None else (lambda p: None)
        self.add(where, ScaleShiftOp(sf, tf), [i], fx_node)

    # -- dispatch
    def build(self, graph: torch.fx.Graph, batch: int) -> BoundGraph:
        self.batch = batch
        out_node = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if self.nodes:
                    raise UnsupportedLayerError(node.name, "second input", "models must take exactly one input tensor")
                self.add("input", InputOp(), [], node)
            elif node.op == "get_attr":
                self.consts[node] = lambda t=node.target: _fetch_attr(self.model, t)
            elif node.op == "call_module":
                self.module_node(node)
            elif node.op in ("call_function", "call_method"):
                self.function_node(node)
            elif node.op == "output":
                out_node = node.args[0]
        if not isinstance(out_node, torch.fx.Node) or out_node not in self.index:
            raise UnsupportedLayerError("output", "model output", "the model must return one tensor of logits computed from its input")
        if self.index[out_node] != len(self.nodes) - 1:
            # keep only what the output depends on, in order (nodes after it are dead code)
            raise UnsupportedLayerError(_owner(out_node), "output", "the output must be the last computed tensor")
        nodes = self.nodes
        return BoundGraph(nodes, _mark_refinement(nodes))

    def tensor_args(self, node) -> list[torch.fx.Node]:
        return [a for a in node.args if isinstance(a, torch.fx.Node) and a in self.index]

    def module_node(self, node: torch.fx.Node) -> None:
        target = str(node.target)
        m = self.model.get_submodule(target)
        what = type(m).__name__
        ins = self.tensor_args(node)
        if len(ins) != 1 or node.kwargs:
            raise UnsupportedLayerError(target, what, "modules must take exactly one tensor")
        i = self.index[ins[0]]
        in_shape = self.nodes[i].shape
        out_shape = self.shape_of(node)
        out_shape = out_shape[1:] if out_shape is not None else None
        if _exact(m, nn.Linear):
            if len(in_shape) != 1:
                raise UnsupportedLayerError(target, what, f"inputs of shape {list(in_shape)}; flatten to one dimension first")
            op: Op = LinearOp(m)
        elif _exact(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise UnsupportedLayerError(target, what, f"padding_mode={m.padding_mode!r}; only 'zeros'")
            if isinstance(m.padding, str):
                if m.padding != "valid":
                    raise UnsupportedLayerError(target, what, f"padding={m.padding!r}; use explicit integer padding")
                op = ConvOp(m, in_shape, out_shape, padding=(0, 0))
            else:
                op = ConvOp(m, in_shape, out_shape)
        elif _exact(m, nn.ReLU):
            op = ReLUOp()
        elif _exact(m, nn.BatchNorm2d) or _exact(m, nn.BatchNorm1d):
            op = BatchNormOp(m, len(in_shape), target)
        elif _exact(m, Normalize):
            op = ScaleShiftOp(lambda p, m=m: (1 / m.std[0]).to(p.dtype), lambda p, m=m: (-m.mean[0] / m.std[0]).to(p.dtype))
        elif _exact(m, nn.Flatten) or _exact(m, nn.Unflatten):
            op = ReshapeOp(in_shape, out_shape)
        elif _exact(m, nn.Identity):
            op = IdentityOp()
        elif _exact(m, nn.Dropout):
            op = DropoutOp(m)
        elif _exact(m, nn.AvgPool2d):
            op = self.avg_pool(target, what, in_shape, out_shape, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                               m.count_include_pad, m.divisor_override)
        elif _exact(m, nn.AdaptiveAvgPool2d):
            op = self.adaptive_pool(target, what, in_shape, out_shape)
        else:
            detail = "its forward method is overridden" if isinstance(m, _Tracer.LEAVES) else ""
            raise UnsupportedLayerError(target, what, detail)
        self.add(target, op, [i], node)

    def avg_pool(self, where, what, in_shape, out_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                 divisor_override) -> Op:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        kernel = pair(kernel)
        stride = pair(stride if stride not in (None, []) else kernel)
        padding = pair(padding)
        if len(in_shape) != 3:
            raise UnsupportedLayerError(where, what, f"inputs of shape {list(in_shape)}; expected [C, H, W]")
        if ceil_mode:
            raise UnsupportedLayerError(where, what, "ceil_mode=True")
        if any(padding) and not count_include_pad and divisor_override is None:
            raise UnsupportedLayerError(where, what, "count_include_pad=False with padding")
        c = in_shape[0]
        div = divisor_override or kernel[0] * kernel[1]
        weight = torch.full((c, 1, *kernel), 1.0 / div)
        return ConvOp(None, in_shape, out_shape, stride=stride, padding=padding, dilation=(1, 1), groups=c,
                      fixed_weight=weight)

    def adaptive_pool(self, where, what, in_shape, out_shape) -> Op:
        if len(in_shape) != 3 or in_shape[1] % out_shape[1] or in_shape[2] % out_shape[2]:
            raise UnsupportedLayerError(where, what, f"output size {list(out_shape[1:])} does not divide the input "
                                                      f"size {list(in_shape[1:])}")
        k = (in_shape[1] // out_shape[1], in_shape[2] // out_shape[2])
        return self.avg_pool(where, what, in_shape, out_shape, k, k, 0, False, True, None)

    def function_node(self, node: torch.fx.Node) -> None:
        target = node.target
        where = _owner(node)
        what = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        what = f"{'method' if node.op == 'call_method' else 'function'} {what}"
        ins = self.tensor_args(node)
        if not ins:
            # shape arithmetic (x.size(0)) or constant expressions: evaluate lazily, never bound
            if self.shape_of(node) is None:
                self.aux.add(node)
                return
            args = node.args
            if any(isinstance(a, torch.fx.Node) and a not in self.consts for a in args):
                self.aux.add(node)
                return
            fn = target if node.op == "call_function" else None

            def value(node=node, fn=fn):
                vals = [self.consts[a]() if isinstance(a, torch.fx.Node) else a for a in node.args]
                kw = {k: (self.consts[v]() if isinstance(v, torch.fx.Node) else v) for k, v in node.kwargs.items()}
                if fn is not None:
                    return fn(*vals, **kw)
                return getattr(vals[0], node.target)(*vals[1:], **kw)

            self.consts[node] = value
            return
        shape = self.shape_of(node)
        if shape is None:
            # a non-tensor value such as x.size(0): never bounded; an op that uses it as an
            # operand fails in const(), and reshapes take their shapes from shape propagation
            self.aux.add(node)
            return
        ids = [self.index[a] for a in ins]
        is_method = node.op == "call_method"
        if target in _RELU_FUNCTIONS or (is_method and target in ("relu", "relu_")):
            self.add(where, ReLUOp(), ids[:1], node)
        elif target in _RESHAPE_FUNCTIONS or (is_method and target in _RESHAPE_METHODS):
            self.add(where, ReshapeOp(self.nodes[ids[0]].shape, shape[1:]), ids[:1], node)
        elif target in _ADD or target in _SUB:
            self.arith(node, where, what, sub=target in _SUB)
        elif target in _MUL or target in _DIV:
            a, b = node.args[:2]
            if len(ins) != 1 or node.kwargs:
                raise UnsupportedLayerError(where, what, "a product or quotient of two tensors that depend on the input")
            if target in _DIV:
                if a is not ins[0]:
                    raise UnsupportedLayerError(where, what, "division by a tensor that depends on the input")
                c = self.const(b, where, what)
                self.affine_const(node, where, what, a, scale=lambda c=c: 1 / c())
            else:
                other = b if a is ins[0] else a
                self.affine_const(node, where, what, ins[0], scale=self.const(other, where, what))
        elif target is operator.neg or (is_method and target == "neg"):
            self.affine_const(node, where, what, ins[0], scale=lambda: -1.0)
        elif target is F.avg_pool2d:
            kw = dict(zip(["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
                          node.args[1:]))
            kw.update(node.kwargs)
            op = self.avg_pool(where, what, self.nodes[ids[0]].shape, shape[1:], kw["kernel_size"], kw.get("stride"),
                               kw.get("padding", 0), kw.get("ceil_mode", False), kw.get("count_include_pad", True),
                               kw.get("divisor_override"))
            self.add(where, op, ids[:1], node)
        elif target is F.adaptive_avg_pool2d:
            self.add(where, self.adaptive_pool(where, what, self.nodes[ids[0]].shape, shape[1:]), ids[:1], node)
        elif target is F.dropout or (is_method and target == "clone") or target is torch.clone:
            if target is F.dropout and (node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)):
                raise UnsupportedLayerError(where, what, "functional dropout in training mode; use nn.Dropout")
            self.add(where, IdentityOp(), ids[:1], node)
        else:
            raise UnsupportedLayerError(where, what)

    def arith(self, node, where, what, *, sub: bool) -> None:
        a, b = node.args[:2]
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
            raise UnsupportedLayerError(where, what, "the alpha argument")
        a_t = isinstance(a, torch.fx.Node) and a in self.index
        b_t = isinstance(b, torch.fx.Node) and b in self.index
        if a_t and b_t:
            self.add(where, AddOp((1.0, -1.0 if sub else 1.0)), [self.index[a], self.index[b]], node)
        elif a_t:
            c = self.const(b, where, what)
            self.affine_const(node, where, what, a, shift=(lambda c=c: -c()) if sub else c)
        else:
            c = self.const(a, where, what)
            self.affine_const(node, where, what, b, scale=(lambda: -1.0) if sub else None, shift=c)


# ---------------------------------------------------------------------------- entry point
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, BoundGraph]] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    return tuple((name, type(m).__name__, tuple((k, tuple(v.shape)) for k, v in m.named_parameters(recurse=False)))
                 for name, m in model.named_modules())


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many kinds for data-dependent control flow
        raise RtkError(f"certification: cannot trace {type(model).__name__} into a fixed graph of layers "
                       f"({type(exc).__name__}: {exc}). Bound propagation needs a forward pass without "
                       f"data-dependent control flow built from: {SUPPORTED}.") from None
    return torch.fx.GraphModule(model, graph)


def build_graph(model: nn.Module, example: torch.Tensor) -> BoundGraph:
    """Trace ``model`` and build its bound graph for inputs shaped like ``example`` (a batch)."""
    from torch.fx.passes.shape_prop import ShapeProp

    _check_hooks(model)
    gm = _trace(model)
    sample = example[:1].detach()
    sample = torch.cat([sample, sample], 0)  # a batch of two tells the batch dimension apart
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(sample)
    except Exception as exc:
        raise RtkError(f"certification: running {type(model).__name__} on an input of shape {list(sample.shape[1:])} "
                       f"failed: {type(exc).__name__}: {exc}") from None
    finally:
        for m, t in states:
            m.train(t)
    graph = _Builder(model).build(gm.graph, batch=2)
    log.debug("bound graph of %s:\n%s", type(model).__name__, graph.describe())
    return graph


def bound_graph(model: nn.Module, example: torch.Tensor) -> BoundGraph:
    """The (cached) bound graph of ``model`` for inputs shaped like ``example``.

    The cache is keyed by the model object, the input shape and the shapes of every
    parameter, so a model whose layers are replaced (structured pruning) is traced again.
    """
    key = (tuple(example.shape[1:]), _signature(model))
    per_model = _CACHE.setdefault(model, {})
    graph = per_model.get(key)
    if graph is None:
        per_model.clear()
        graph = per_model[key] = build_graph(model, example)
    return graph


def check_graph(graph: BoundGraph, model: nn.Module, x: torch.Tensor, *, rtol: float = 1e-4) -> None:
    """Raise if the graph does not reproduce ``model(x)``: a guard against layers whose
    behaviour the tracer could not see."""
    with torch.no_grad():
        want = model(x)
        got = graph.forward(x, Pass(x.dtype, training=False))
    if want.shape != got.shape:
        raise RtkError(f"certification: the bound graph returns shape {list(got.shape)} but the model returns "
                       f"{list(want.shape)}")
    err = (want - got).abs().max().item() if want.numel() else 0.0
    scale = 1.0 + want.abs().max().item() if want.numel() else 1.0
    if not err <= rtol * scale:
        raise RtkError(f"certification: the bound graph does not reproduce the model's outputs (max difference "
                       f"{err:.3g}); the model computes something the tracer cannot see. Supported: {SUPPORTED}.")
