"""Bound-propagation operations: one per kind of layer.

Every :class:`Op` knows three things:

- ``forward``: the exact computation on a point (used to check a graph against its model);
- ``interval``: interval bound propagation (IBP) from input intervals to an output interval;
- ``backward``: the backward linear relaxation step of CROWN, mapping a linear function
  ``A . out`` of the op's output to linear functions of its inputs plus a constant.

Parameters are read from the live modules at every call (never copied), so the same ops
serve certification and certified training; see :func:`_weight` for masked layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RtkError

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
        super().__init__(
            f"certification: layer {where!r} ({what}) is not supported{extra}. Supported layers: {SUPPORTED}."
        )


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
    """Sum over every dimension after the first two (batch, specification), in any memory layout."""
    return t.sum(tuple(range(2, t.dim()))) if t.dim() > 2 else t


def neuron_rows(A: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (B, S, *shape) as (B, S, n) and ``v`` (B, *shape) as (B, n), both flattened over the
    neurons in the order of ``A``'s memory, so that a channels-last ``A`` (the convolutions'
    backward pass keeps it so) is not copied; ``einsum("bsn,bn->bs", ...)`` of the two is the
    same in either order."""
    if A.dim() == 5 and A.shape[2] > 1 and A.stride(2) == 1 and A.stride(4) == A.shape[2]:
        return A.permute(0, 1, 3, 4, 2).flatten(2), v.permute(0, 2, 3, 1).flatten(1)
    return A.flatten(2), v.flatten(1)


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight a Linear/Conv2d layer's forward pass really uses, differentiably.

    - a layer that defines ``effective_weight()`` (the protocol for custom masked layers; rtk's
      masked and scored (HYDRA) layers of :mod:`rtk.pruning` define it: ``weight * weight_mask``,
      or ``weight`` times the top-k mask of ``|scores|`` with the straight-through gradient);
    - ``torch.nn.utils.prune``: ``weight_orig * weight_mask`` (``weight`` itself is refreshed
      only by a forward pre-hook);
    - otherwise ``weight`` (``torch.nn.utils.parametrize`` computes it on access).
    """
    fn = getattr(module, "effective_weight", None)
    if callable(fn):
        return fn()
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


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
    return A.reshape(A.shape[0] * A.shape[1], *A.shape[2 : 2 + n_dims])


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

    def push(self, p: Pass, *Ts: torch.Tensor) -> torch.Tensor:
        """The linear part of an affine op applied to directions ``Ts`` (B, K, *in_shape) of each
        input: (B, K, *out_shape). With :meth:`offset` it maps an affine function of the input to
        the op's output (CROWN's forward-direction pass, :mod:`rtk.certify.bounds`)."""
        raise NotImplementedError

    def offset(self, p: Pass) -> torch.Tensor | None:
        """The constant an affine op adds (its bias), broadcastable to (B, *out_shape); None for none."""
        return None


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

    def push(self, p, T):
        return T


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

    def push(self, p, T):
        return T.reshape(T.shape[0], T.shape[1], *self.out_shape)


class _AffineOp(Op):
    """A layer ``affine(x, weight, bias)`` (linear or convolution): its parameters in the pass's
    dtype, its forward pass and its interval bound (centre through the layer, radius through
    ``|weight|``)."""

    kind = "linear"
    module: nn.Module | None

    def _params(self, p: Pass):
        w = _weight(self.module).to(p.dtype)
        b = _bias(self.module)
        return w, (b.to(p.dtype) if b is not None else None)

    def _affine(self, x, w, b):
        raise NotImplementedError

    def forward(self, p, x):
        w, b = self._params(p)
        return self._affine(x, w, b)

    def interval(self, p, b):
        w, bias = self._params(p)
        mid, rad = _mid_rad(b)
        c, r = self._affine(mid, w, bias), self._affine(rad, w.abs(), None)
        return c - r, c + r


class LinearOp(_AffineOp):
    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def _affine(self, x, w, b):
        return F.linear(x, w, b)

    def backward(self, p, A, b):
        w, bias = self._params(p)
        return [A.matmul(w)], (A.matmul(bias) if bias is not None else None)

    def push(self, p, T):
        return T.matmul(self._params(p)[0].t())

    def offset(self, p):
        return self._params(p)[1]


class ConvOp(_AffineOp):
    def __init__(
        self,
        module: nn.Conv2d | None,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        stride=None,
        padding=None,
        dilation=None,
        groups=None,
        fixed_weight: torch.Tensor | None = None,
    ) -> None:
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
            self.in_shape[1 + i]
            - ((self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k[i] - 1) + 1)
            for i in range(2)
        )

    def _params(self, p: Pass):
        if self.fixed_weight is not None:
            return self.fixed_weight.to(p.dtype), None
        return super()._params(p)

    def _affine(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

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
            p.cache[key] = self._affine(eye, w, None).reshape(n_in, n_out).t()
        return p.cache[key]

    def backward(self, p, A, b):
        w, bias = self._params(p)
        B, S = A.shape[:2]
        dense = self._dense(p, w)
        if dense is not None:
            a_in = A.reshape(B, S, -1).matmul(dense)
        else:
            # channels_last makes the CPU kernel about 1.3-2x faster; the result stays channels_last
            # (the ReLUs' steps and the next convolution take it as it is: no conversion between layers)
            cl = torch.channels_last
            a_in = F.conv_transpose2d(
                _rows(A, 3).contiguous(memory_format=cl),
                w.contiguous(memory_format=cl),
                None,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        a_in = a_in.reshape(B, S, *self.in_shape)
        const = (A.sum((-2, -1)) * bias).sum(-1) if bias is not None else None
        return [a_in], const

    def unit_rows(self, p: Pass, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
        """The backward step of unit specifications, built directly: ``rows`` (B, k) are output
        neurons (indices into the flattened output), and row ``j`` of the result is the linear
        function of the input that equals neuron ``rows[:, j]``: its filter written at its
        receptive field (the taps that fall on padding dropped), with the neuron's bias as the
        constant. ``C_in * kh * kw`` writes a row instead of a transposed convolution of one-hot
        rows; None for grouped convolutions."""
        w, bias = self._params(p)
        if self.groups != 1 or not all(isinstance(v, int) for v in self.padding):
            return None
        B, k = rows.shape
        c_in, h_in, w_in = self.in_shape
        _, h_out, w_out = self.out_shape
        kh, kw = w.shape[-2:]
        flat = rows.reshape(-1)
        channel, i, j = flat // (h_out * w_out), (flat // w_out) % h_out, flat % w_out
        dev = w.device
        # input coordinates of every tap: (N, 1, kh, 1) rows and (N, 1, 1, kw) columns
        h = i[:, None, None, None] * self.stride[0] - self.padding[0]
        h = h + self.dilation[0] * torch.arange(kh, device=dev)[None, None, :, None]
        v = j[:, None, None, None] * self.stride[1] - self.padding[1]
        v = v + self.dilation[1] * torch.arange(kw, device=dev)[None, None, None, :]
        inside = (h >= 0) & (h < h_in) & (v >= 0) & (v < w_in)
        # flat offsets into (N, H, W, C) memory, that is channels_last, as the transposed convolutions
        # of the backward pass leave their results; a tap on padding adds 0 at a clamped offset
        pixel = h.clamp(0, h_in - 1) * w_in + v.clamp(0, w_in - 1)
        n = torch.arange(len(flat), device=dev)[:, None, None, None]
        ch = torch.arange(c_in, device=dev)[None, :, None, None]
        offset = (n * (h_in * w_in) + pixel) * c_in + ch
        memory = torch.zeros(len(flat), h_in, w_in, c_in, dtype=w.dtype, device=dev)
        memory.view(-1).index_put_((offset.flatten(),), (w[channel] * inside).flatten(), accumulate=True)
        a_in = memory.permute(0, 3, 1, 2)
        return [a_in.reshape(B, k, *self.in_shape)], (bias[channel].reshape(B, k) if bias is not None else None)

    def push(self, p, T):
        B, K = T.shape[:2]
        w = self._params(p)[0]
        # as a matmul only where the dense matrix is barely larger than the convolution's work
        # (a kernel covering most of a tiny input); conv2d wins elsewhere here
        dense = self._dense(p, w) if _numel(self.in_shape) <= 2 * w[0].numel() else None
        if dense is not None:
            return T.reshape(B, K, -1).matmul(dense.t()).reshape(B, K, *self.out_shape)
        return self._affine(_rows(T, 3), w, None).reshape(B, K, *self.out_shape)

    def offset(self, p):
        bias = self._params(p)[1]
        return bias.reshape(-1, 1, 1) if bias is not None else None


class ScaleShiftOp(Op):
    """``x * scale + shift`` with ``scale``/``shift`` broadcastable to one example's shape."""

    kind = "diag"

    def __init__(
        self, scale: Callable[[Pass], torch.Tensor | None], shift: Callable[[Pass], torch.Tensor | None]
    ) -> None:
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

    def push(self, p, T):
        s = self.params(p)[0]
        return T * s if s is not None else T

    def offset(self, p):
        return self.params(p)[1]


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
            raise UnsupportedLayerError(
                self.where,
                type(m).__name__,
                "track_running_stats=False: in eval mode it "
                "normalizes with batch statistics, so no example has a certificate of its own",
            )
        if p.training and m.training:
            key = ("bn", id(self))
            if x is None and b is None:
                if key not in p.cache:
                    raise RtkError(
                        f"certification: batch norm {self.where!r} in training mode needs an interval pass first"
                    )
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
        const = torch.einsum("bsn,bn->bs", *neuron_rows(neg, up_bias))
        a_in = A * low_slope.unsqueeze(1)
        if a_in.requires_grad or neg.requires_grad:
            a_in = torch.addcmul(a_in, neg, (up_slope - low_slope).unsqueeze(1))
        else:  # in place: one temporary of A's size fewer (A is the largest tensor of the pass)
            a_in.addcmul_(neg, (up_slope - low_slope).unsqueeze(1))
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

    def push(self, p, *Ts):
        return sum(T if s == 1.0 else T * s for s, T in zip(self.signs, Ts))
