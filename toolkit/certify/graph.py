"""A model as a graph of bound-propagation operations.

:func:`bound_graph` traces a model with ``torch.fx`` and turns every node into an
:class:`~rtk.certify.ops.Op` (its exact forward, interval and CROWN backward steps).

Supported: ``nn.Linear``, ``nn.Conv2d`` (zero padding), ``nn.ReLU`` (and ``F.relu``),
``nn.BatchNorm1d/2d`` (eval mode; batch statistics of the interval centres in training
mode), ``nn.Flatten``/``view``/``reshape``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d`` (output
sizes dividing the input), :class:`rtk.models.Normalize`, ``nn.Identity``, ``nn.Dropout``,
additions of two branches (residual connections), and additions, subtractions,
multiplications and divisions by constants. Anything else raises
:class:`UnsupportedLayerError` naming the layer, never a silently wrong bound.

Parameters are read from the live modules at every call (never copied), so the same
graph serves certification and certified training, and pruning masks (rtk's masked and
scored layers, ``torch.nn.utils.prune``, ``torch.nn.utils.parametrize``) are honoured.
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
from .ops import (
    SUPPORTED,
    AddOp,
    BatchNormOp,
    ConvOp,
    DropoutOp,
    IdentityOp,
    InputOp,
    LinearOp,
    Op,
    Pass,
    ReLUOp,
    ReshapeOp,
    ScaleShiftOp,
    UnsupportedLayerError,
)

log = logging.getLogger(__name__)


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
            lines.append(
                f"{n.index:3d} {n.name:<24} {type(n.op).__name__:<14} in=[{ins}] shape={list(n.shape)}"
                f"{' refine' if self.refine and self.refine[n.index] else ''}"
            )
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
    LEAVES = (
        Normalize,
        nn.Linear,
        nn.Conv2d,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.Flatten,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.Identity,
        nn.Dropout,
    )

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
            raise RtkError(
                "certification: global module forward hooks are registered; they change what the model "
                "computes in ways bound propagation cannot see. Remove them before certifying."
            )
    for name, m in model.named_modules():
        where = name or "<model>"
        if m._forward_hooks:
            raise UnsupportedLayerError(where, type(m).__name__, "it has forward hooks; remove them before certifying")
        for h in m._forward_pre_hooks.values():
            if not isinstance(h, BasePruningMethod):
                raise UnsupportedLayerError(
                    where, type(m).__name__, "it has forward pre-hooks other than torch.nn.utils.prune masks"
                )


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
            raise UnsupportedLayerError(
                where, what, f"operand {arg.name!r} is neither a constant nor a supported tensor"
            )
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
    def _const_tensor(
        self, fn: Callable[[], Any], shape: tuple[int, ...], where: str, what: str
    ) -> Callable[[Pass], Any]:
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
            raise UnsupportedLayerError(
                "output", "model output", "the model must return one tensor of logits computed from its input"
            )
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
                raise UnsupportedLayerError(
                    target, what, f"inputs of shape {list(in_shape)}; flatten to one dimension first"
                )
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
            op = ScaleShiftOp(
                lambda p, m=m: (1 / m.std[0]).to(p.dtype), lambda p, m=m: (-m.mean[0] / m.std[0]).to(p.dtype)
            )
        elif _exact(m, nn.Flatten) or _exact(m, nn.Unflatten):
            op = ReshapeOp(in_shape, out_shape)
        elif _exact(m, nn.Identity):
            op = IdentityOp()
        elif _exact(m, nn.Dropout):
            op = DropoutOp(m)
        elif _exact(m, nn.AvgPool2d):
            op = self.avg_pool(
                target,
                what,
                in_shape,
                out_shape,
                m.kernel_size,
                m.stride,
                m.padding,
                m.ceil_mode,
                m.count_include_pad,
                m.divisor_override,
            )
        elif _exact(m, nn.AdaptiveAvgPool2d):
            op = self.adaptive_pool(target, what, in_shape, out_shape)
        else:
            detail = "its forward method is overridden" if isinstance(m, _Tracer.LEAVES) else ""
            raise UnsupportedLayerError(target, what, detail)
        self.add(target, op, [i], node)

    def avg_pool(
        self, where, what, in_shape, out_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
    ) -> Op:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
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
        return ConvOp(
            None, in_shape, out_shape, stride=stride, padding=padding, dilation=(1, 1), groups=c, fixed_weight=weight
        )

    def adaptive_pool(self, where, what, in_shape, out_shape) -> Op:
        if len(in_shape) != 3 or in_shape[1] % out_shape[1] or in_shape[2] % out_shape[2]:
            raise UnsupportedLayerError(
                where, what, f"output size {list(out_shape[1:])} does not divide the input size {list(in_shape[1:])}"
            )
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
                raise UnsupportedLayerError(
                    where, what, "a product or quotient of two tensors that depend on the input"
                )
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
            kw = dict(
                zip(
                    ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
                    node.args[1:],
                )
            )
            kw.update(node.kwargs)
            op = self.avg_pool(
                where,
                what,
                self.nodes[ids[0]].shape,
                shape[1:],
                kw["kernel_size"],
                kw.get("stride"),
                kw.get("padding", 0),
                kw.get("ceil_mode", False),
                kw.get("count_include_pad", True),
                kw.get("divisor_override"),
            )
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
    return tuple(
        (name, type(m).__name__, tuple((k, tuple(v.shape)) for k, v in m.named_parameters(recurse=False)))
        for name, m in model.named_modules()
    )


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many kinds for data-dependent control flow
        raise RtkError(
            f"certification: cannot trace {type(model).__name__} into a fixed graph of layers "
            f"({type(exc).__name__}: {exc}). Bound propagation needs a forward pass without "
            f"data-dependent control flow built from: {SUPPORTED}."
        ) from None
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
        raise RtkError(
            f"certification: running {type(model).__name__} on an input of shape {list(sample.shape[1:])} "
            f"failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for m, t in states:
            m.train(t)
    graph = _Builder(model).build(gm.graph, batch=2)
    log.debug("bound graph of %s:\n%s", type(model).__name__, graph.describe())
    return graph


def bound_graph(model: nn.Module, example: torch.Tensor) -> BoundGraph:
    """The (cached) bound graph of ``model`` for inputs shaped like ``example``.

    The cache is keyed by the model object, its mode (a forward pass may branch on
    ``self.training``), the input shape and the class and parameter shapes of every module,
    so a model whose layers are replaced or masked (pruning) is traced again.
    """
    key = (tuple(example.shape[1:]), model.training, _signature(model))
    per_model = _CACHE.setdefault(model, {})
    graph = per_model.get(key)
    if graph is None:
        if len(per_model) >= 4:
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
        raise RtkError(
            f"certification: the bound graph returns shape {list(got.shape)} but the model returns {list(want.shape)}"
        )
    err = (want - got).abs().max().item() if want.numel() else 0.0
    scale = 1.0 + want.abs().max().item() if want.numel() else 1.0
    if not err <= rtol * scale:
        raise RtkError(
            f"certification: the bound graph does not reproduce the model's outputs (max difference "
            f"{err:.3g}); the model computes something the tracer cannot see. Supported: {SUPPORTED}."
        )
