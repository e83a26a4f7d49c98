"""The metric protocol and rtk's built-in metric objects.

A similarity metric is any object that ``SimilaritySpec.build(options)`` returns. The
protocol has one required part and three optional fast paths:

``metric(x, y) -> float``  (required)
    ``x`` and ``y`` are feature tensors ``[n, ...]`` holding the same ``n`` examples in the
    same order. A plain function is a complete metric.

``metric.matrix(xs, ys=None) -> Tensor``  (optional: whole heatmaps)
    Every pair of layers at once: ``[len(xs), len(xs)]`` within a model, or
    ``[len(xs), len(ys)]`` between two models.

``metric.summarize(x)`` and ``metric.compare(sx, sy) -> float``  (optional)
    One summary per layer, then a cheap comparison per pair.

``metric.accumulator(names_a, names_b) -> acc``  (optional: streaming)
    ``acc.update(xs, ys=None)`` per batch of examples and ``acc.compute() -> Tensor``
    ``[La, Lb]`` at the end; memory independent of the number of batches. When a metric has
    it, the ``similarity`` stage streams through the data instead of collecting features.

Attributes (optional): ``higher_is_similar`` (default True; False for distances such as
Procrustes), ``max_value`` (the value of identical representations' opposite end for a
distance, used to turn distances into similarities for the block-structure score).

:func:`similarity_matrix` uses the best path a metric offers and checks every value is
finite; errors name the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from . import kernels as K
from .kernels import SimilarityError, Tensor
from .streaming import MinibatchCKA


@runtime_checkable
class SimilarityMetric(Protocol):
    """The required part of a metric: ``metric(x, y) -> float``."""

    def __call__(self, x: Tensor, y: Tensor) -> float: ...


class LinearCKA:
    """Linear CKA (Kornblith et al. 2019), biased or debiased."""

    higher_is_similar = True

    def __init__(self, debiased: bool = False) -> None:
        self.debiased = debiased

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.linear_cka(x, y, debiased=self.debiased)

    def matrix(
        self,
        xs: Sequence[Tensor],
        ys: Sequence[Tensor] | None = None,
        *,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
    ) -> Tensor:
        return K.linear_cka_matrix(xs, ys, debiased=self.debiased, names_a=names_a, names_b=names_b)

    def __repr__(self) -> str:
        return f"LinearCKA(debiased={self.debiased})"


class RBFCKA:
    """RBF CKA with bandwidth ``sigma`` times the median distance, biased or debiased."""

    higher_is_similar = True

    def __init__(self, sigma: float = 0.8, debiased: bool = False) -> None:
        self.sigma = sigma
        self.debiased = debiased

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.rbf_cka(x, y, sigma=self.sigma, debiased=self.debiased)

    def summarize(self, x: Tensor) -> K.GramSummary:
        return K.gram_summary(K.rbf_gram(x, sigma=self.sigma), debiased=self.debiased)

    def compare(self, sx: K.GramSummary, sy: K.GramSummary) -> float:
        p = K.gram_products([sx, sy])
        return K._ratio(float(p[0, 1]), float(p[0, 0]), float(p[1, 1]), "HSIC")

    def matrix(
        self,
        xs: Sequence[Tensor],
        ys: Sequence[Tensor] | None = None,
        *,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
    ) -> Tensor:
        names_a = list(names_a) if names_a is not None else [f"x[{i}]" for i in range(len(xs))]
        sa = [_named(lambda x=x: self.summarize(x), f"layer {nm!r}") for x, nm in zip(xs, names_a)]
        if ys is None:
            p = K.gram_products(sa)
            d = torch.diagonal(p).clone()
            return K.cka_matrix_from_products(p, d, d, names_a=names_a, names_b=names_a)
        names_b = list(names_b) if names_b is not None else [f"y[{i}]" for i in range(len(ys))]
        sb = [_named(lambda y=y: self.summarize(y), f"layer {nm!r}") for y, nm in zip(ys, names_b)]
        p = K.gram_products(sa + sb)
        d = torch.diagonal(p).clone()
        la = len(sa)
        return K.cka_matrix_from_products(p[:la, la:], d[:la], d[la:], names_a=names_a, names_b=names_b)

    def __repr__(self) -> str:
        return f"RBFCKA(sigma={self.sigma}, debiased={self.debiased})"


class MinibatchCKAMetric:
    """Minibatch linear CKA with the unbiased HSIC estimator (Nguyen et al. 2021). As a plain
    call it splits the examples into consecutive minibatches of ``batch_size``; in the
    ``similarity`` stage it streams over the data's batches."""

    higher_is_similar = True

    def __init__(self, batch_size: int = 256) -> None:
        self.batch_size = batch_size

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.minibatch_cka(x, y, batch_size=self.batch_size)

    def accumulator(self, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None) -> MinibatchCKA:
        return MinibatchCKA(names_a, names_b)

    def matrix(
        self,
        xs: Sequence[Tensor],
        ys: Sequence[Tensor] | None = None,
        *,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
    ) -> Tensor:
        acc = self.accumulator(names_a, names_b)
        n = xs[0].shape[0]
        for i0 in range(0, n, self.batch_size):
            if n - i0 < 4:
                break
            acc.update(
                [x[i0 : i0 + self.batch_size] for x in xs],
                None if ys is None else [y[i0 : i0 + self.batch_size] for y in ys],
            )
        return acc.compute()

    def __repr__(self) -> str:
        return f"MinibatchCKA(batch_size={self.batch_size})"


class _CCAMetric:
    """Base of the CCA-type metrics (SVD of the centred data in float64)."""

    higher_is_similar = True


class SVCCA(_CCAMetric):
    """SVCCA (Raghu et al. 2017): top principal directions (``variance`` or ``dims``), then
    the mean canonical correlation."""

    def __init__(self, variance: float | None = 0.99, dims: int | None = None) -> None:
        self.variance, self.dims = variance, dims

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.svcca(x, y, variance=self.variance, dims=self.dims)

    def __repr__(self) -> str:
        return f"SVCCA(variance={self.variance}, dims={self.dims})"


class PWCCA(_CCAMetric):
    """Projection-weighted CCA (Morcos et al. 2018)."""

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.pwcca(x, y)

    def __repr__(self) -> str:
        return "PWCCA()"


class ProcrustesDistance(_CCAMetric):
    """Orthogonal Procrustes distance (0 = identical up to rotation and scale; at most 2)."""

    higher_is_similar = False
    max_value = 2.0

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return K.procrustes_distance(x, y)

    def __repr__(self) -> str:
        return "ProcrustesDistance()"


# ----------------------------------------------------------------------------- dispatch
def _named(fn: Callable[[], Any], label: str) -> Any:
    try:
        return fn()
    except SimilarityError as exc:
        raise SimilarityError(f"{label}: {exc}") from None


def _check_value(value: Any, label: str, metric: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SimilarityError(f"{label}: metric {metric!r} returned {value!r}, not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise SimilarityError(f"{label}: metric {metric!r} returned {v}")
    return v


def similarity_matrix(
    metric: Any,
    xs: Sequence[Tensor],
    ys: Sequence[Tensor] | None = None,
    *,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> Tensor:
    """Every pair of layers: ``[len(xs), len(xs)]`` (one model) or ``[len(xs), len(ys)]``
    (two models), through the fastest path the metric offers. float64 on the CPU.

    Errors (:class:`SimilarityError`) name the layers; a non-finite value is an error.
    """
    names_a = list(names_a) if names_a is not None else [f"x[{i}]" for i in range(len(xs))]
    within = ys is None
    names_b = names_a if within else (list(names_b) if names_b is not None else [f"y[{i}]" for i in range(len(ys))])
    other = xs if within else ys
    assert other is not None
    if hasattr(metric, "matrix"):
        out = metric.matrix(xs, None if within else ys, names_a=names_a, names_b=None if within else names_b)
        out = torch.as_tensor(out, dtype=torch.float64).cpu()
        bad = (~torch.isfinite(out)).nonzero().tolist()
        if bad:
            i, j = bad[0]
            raise SimilarityError(
                f"layers {names_a[i]!r} vs {names_b[j]!r}: metric {metric!r} returned {float(out[i, j])}"
            )
        return out
    out = torch.empty(len(xs), len(other), dtype=torch.float64)
    if hasattr(metric, "summarize") and hasattr(metric, "compare"):
        sa = [_named(lambda x=x: metric.summarize(x), f"layer {nm!r}") for x, nm in zip(xs, names_a)]
        sb = (
            sa
            if within
            else [_named(lambda y=y: metric.summarize(y), f"layer {nm!r}") for y, nm in zip(other, names_b)]
        )
        for i in range(len(xs)):
            for j in range(len(other)):
                if within and j < i:
                    out[i, j] = out[j, i]
                    continue
                label = f"layers {names_a[i]!r} vs {names_b[j]!r}"
                out[i, j] = _check_value(_named(lambda: metric.compare(sa[i], sb[j]), label), label, metric)
        return out
    symmetric = within and getattr(metric, "symmetric", False)
    for i in range(len(xs)):
        for j in range(len(other)):
            if symmetric and j < i:
                out[i, j] = out[j, i]
                continue
            label = f"layers {names_a[i]!r} vs {names_b[j]!r}"
            out[i, j] = _check_value(_named(lambda: metric(xs[i], other[j]), label), label, metric)
    return out


def pair_values(metric: Any, xs: Sequence[Tensor], ys: Sequence[Tensor], names: Sequence[str]) -> list[float]:
    """``metric(xs[i], ys[i])`` for corresponding layers (diagonals), with named errors."""
    out = []
    for x, y, nm in zip(xs, ys, names):
        label = f"layer {nm!r}"
        out.append(_check_value(_named(lambda x=x, y=y: metric(x, y), label), label, metric))
    return out


def as_similarity(values: Tensor, metric: Any) -> Tensor:
    """Values where higher means more similar: distances become ``1 - d / max_value``."""
    if getattr(metric, "higher_is_similar", True):
        return values
    top = float(getattr(metric, "max_value", 0.0) or float(values.max()) or 1.0)
    return 1.0 - values / top
