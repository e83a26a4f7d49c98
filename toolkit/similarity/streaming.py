"""Stateful streaming versions of the kernels: ``update(...)`` per batch, ``compute()`` at
the end (the style of torchmetrics). Memory never grows with the number of batches,
except in :class:`FeatureBuffer`, which exists for metrics that need all examples at once.

- :class:`MinibatchCKA`: minibatch linear CKA with the unbiased HSIC estimator (Nguyen,
  Raghu, Kornblith 2021) between every pair of layers; memory ``O(L^2)`` plus one batch.
- :class:`LinearCKAStream`: exact full-data linear CKA (biased or debiased) of one pair
  from running cross products; memory ``O((d1 + d2)^2)``.
- :class:`MomentStream`: running centred covariances of one pair; finishes as SVCCA,
  PWCCA or the Procrustes distance; memory ``O((d1 + d2)^2)``.
- :class:`FeatureBuffer`: keeps the features and calls any metric at the end.

Running sums are float64. Cross products of raw activations are taken after subtracting
a shift (the first batch's mean), so large means do not cancel catastrophically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .kernels import (
    LinearStats,
    Moments,
    SimilarityError,
    Tensor,
    _on_numpy,
    as_features,
    cka_from_stats,
    cka_matrix_from_products,
    hsic1_lower,
    hsic1_side_by_side,
    lower_gram_into,
    pow2_scale,
    procrustes_from_moments,
    pwcca_from_moments,
    svcca_from_moments,
)


def _batch_hsic(feats: list[Tensor], scratch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One minibatch's HSIC_1 matrix and its yardsticks: on the CPU,
    :func:`~rtk.similarity.kernels.hsic1_side_by_side` (NumPy only, one layer per
    single-threaded task, each Gram by symmetric rank-k updates of shifted column chunks);
    otherwise torch only, as follows.

    Each layer is shifted by the mean of a strided sample of its rows (about 32: HSIC_1 is
    exactly invariant to shifting the features, so the shift only has to bring the float
    products near the centred ones' precision; the full column mean cost a pass over the
    features), into ``scratch`` when it fits (a fresh multi-megabyte tensor per layer and
    batch costs page faults that measured as much as the shift itself); the lower triangle
    of its Gram goes by column-block strips (:func:`~rtk.similarity.kernels.lower_gram_into`)
    into one stack that :func:`~rtk.similarity.kernels.hsic1_lower` reads in float64. Few
    torch calls per layer: on a loaded machine each call waits for its threads."""
    b = feats[0].shape[0]
    dt = torch.float64 if any(f.dtype == torch.float64 for f in feats) else feats[0].dtype
    if _on_numpy(*feats):
        return hsic1_side_by_side([f.to(dt) for f in feats])
    lower = torch.empty(len(feats), b, b, dtype=dt, device=feats[0].device)
    step = max(1, b // 32)
    for layer, f in enumerate(feats):
        f = f.to(dt)
        shift = f[::step].mean(0, keepdim=True)
        if scratch is not None and scratch.dtype == dt and scratch.device == f.device and f.numel() <= scratch.numel():
            c = scratch[: f.numel()].view(f.shape)
            torch.sub(f, shift, out=c)
        else:
            c = f - shift
        lower_gram_into(c, lower[layer])
    return hsic1_lower(lower)


class MinibatchCKA:
    """Minibatch linear CKA between layers, streamed over batches.

    ``update(xs)`` takes the features of ``L`` layers for one minibatch (each ``[b, ...]``,
    b >= 4); ``update(xs, ys)`` the layers of two models on the same examples.
    ``compute()`` returns the ``[La, La]`` (or ``[La, Lb]``) matrix of
    ``mean_batches HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) * mean HSIC_1(L, L))`` as float64.

    >>> acc = MinibatchCKA()
    >>> for _ in range(3):
    ...     x = torch.randn(64, 10)
    ...     acc.update([x, 2 * x])
    >>> acc.compute().round(decimals=6).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """

    def __init__(self, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None) -> None:
        self.names_a = list(names_a) if names_a is not None else None
        self.names_b = list(names_b) if names_b is not None else None
        self._sum: Tensor | None = None
        self._terms: Tensor | None = None  # per layer, the summed size of the self-HSIC's terms
        self._scratch: Tensor | None = None  # reused centring buffer
        self._rtol = 1e-12  # a self-HSIC below rtol * its terms is zero up to rounding (1e-5 for float32 Grams)
        self._la = self._lb = 0
        self.batches = 0
        self.examples = 0

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor] | None = None) -> None:
        """Add one minibatch. Its work runs in one library: features arrive batch by batch
        from a torch forward pass, and handing each batch to NumPy's multi-threaded BLAS made
        its thread pool and torch's OpenMP pool spin against each other (measured 4x slower
        on 2 cores). On the CPU it runs in NumPy with BLAS single-threaded, one layer per
        thread (no BLAS pool to fight: with 3 torch products between updates, 20 batches of
        12 layers took 1.6 s this way and 9.1 s in torch on a loaded 2-core machine);
        elsewhere in torch (see ``_batch_hsic``)."""
        xs = list(xs)
        feats = xs + (list(ys) if ys is not None else [])
        la, lb = len(xs), (len(ys) if ys is not None else 0)
        if self._sum is None:
            self._la, self._lb = la, lb
        elif (la, lb) != (self._la, self._lb):
            raise SimilarityError(f"update got {la} + {lb} layers, earlier batches had {self._la} + {self._lb}")
        names = self._names(la, lb)
        checked = [
            as_features(f, what=f"layer {nm!r}", min_examples=4, check_finite=False) for f, nm in zip(feats, names)
        ]
        b = checked[0].shape[0]
        for f, nm in zip(checked, names):
            if f.shape[0] != b:
                raise SimilarityError(f"layer {nm!r} has {f.shape[0]} examples in this batch, the first layer has {b}")
        big = max(checked, key=lambda f: f.numel())
        dt = torch.float64 if any(f.dtype == torch.float64 for f in checked) else big.dtype
        stale = self._scratch is None or self._scratch.numel() < big.numel() or self._scratch.dtype != dt
        if stale and not _on_numpy(*checked):  # the torch route's centring buffer (NumPy keeps its own)
            self._scratch = torch.empty(big.numel(), dtype=dt, device=big.device)
        h, terms = _batch_hsic(checked, self._scratch)
        if not (bool(torch.isfinite(torch.diagonal(h)).all()) and float(terms.min()) >= 1e-60):
            # NaN or inf in the input, or float products that overflow or underflow (features
            # scaled by 1e20 or 1e-20): name the bad input, else redo the batch with every layer
            # scaled by an exact power of two and undo the scales in float64
            for f, nm in zip(checked, names):
                as_features(f, what=f"layer {nm!r}", min_examples=4)
            scales = torch.tensor([pow2_scale(f) for f in checked], dtype=torch.float64)
            h, terms = _batch_hsic([f * float(c) if c != 1.0 else f for f, c in zip(checked, scales)], self._scratch)
            sq = scales.square().to(h.device)
            h = h / torch.outer(sq, sq)
            terms = terms / sq.square()
            if not bool(torch.isfinite(torch.diagonal(h)).all()):
                raise SimilarityError("the minibatch Grams overflowed even after rescaling; pass float64 features")
        self._sum = h if self._sum is None else self._sum + h.to(self._sum.device)
        self._terms = terms if self._terms is None else self._terms + terms.to(self._terms.device)
        if any(f.dtype != torch.float64 for f in checked):
            self._rtol = max(self._rtol, 1e-5)
        self.batches += 1
        self.examples += int(b)

    def _names(self, la: int, lb: int) -> list[str]:
        return (self.names_a or [f"x[{i}]" for i in range(la)]) + (self.names_b or [f"y[{i}]" for i in range(lb)])

    def merge(self, other: MinibatchCKA) -> None:
        """Add another accumulator's batches (for example from another process)."""
        if other._sum is None:
            return
        if self._sum is None:
            self._sum, self._la, self._lb = other._sum.clone(), other._la, other._lb
            self._terms = other._terms.clone() if other._terms is not None else None
        else:
            self._sum = self._sum + other._sum.to(self._sum.device)
            if self._terms is not None and other._terms is not None:
                self._terms = self._terms + other._terms.to(self._terms.device)
        self._rtol = max(self._rtol, other._rtol)
        self.batches += other.batches
        self.examples += other.examples

    def sync(self, group: Any = None) -> None:
        """Sum the HSIC accumulators of every process (one all-reduce through
        :func:`rtk.distributed.all_reduce_sums`); a no-op when torch.distributed is not initialised."""
        from ..distributed import all_reduce_sums

        if self._sum is None:
            return
        terms = self._terms if self._terms is not None else torch.zeros(self._la + self._lb, dtype=torch.float64)
        counts = torch.tensor([float(self.batches), float(self.examples)], dtype=torch.float64)
        summed = all_reduce_sums(
            {"sum": self._sum, "terms": terms.to(self._sum.device), "counts": counts.to(self._sum.device)}, group
        )
        self._sum, self._terms = summed["sum"], summed["terms"]
        self.batches, self.examples = int(summed["counts"][0]), int(summed["counts"][1])

    def state_dict(self) -> dict[str, Any]:
        return {
            "sum": self._sum,
            "terms": self._terms,
            "la": self._la,
            "lb": self._lb,
            "batches": self.batches,
            "examples": self.examples,
        }

    def compute(self) -> Tensor:
        if self._sum is None or self.batches == 0:
            raise SimilarityError("minibatch CKA: no batch was given (call update() first)")
        mean = self._sum / self.batches
        selfs = torch.diagonal(mean).clone()
        la = self._la
        names_a = self.names_a or [f"x[{i}]" for i in range(la)]
        if self._terms is not None:
            terms = self._terms.to(selfs.device) / self.batches
            for i, nm in enumerate(self._names(la, self._lb)):
                if float(selfs[i]) <= self._rtol * float(terms[i]):
                    raise SimilarityError(
                        f"layer {nm!r}: mean unbiased HSIC with itself is {float(selfs[i]):.3g}, zero up to rounding "
                        f"(the terms it is the difference of are {float(terms[i]):.3g}): its features are constant "
                        "within every minibatch, or too degenerate for the unbiased estimator"
                    )
        if self._lb == 0:
            return cka_matrix_from_products(
                mean, selfs, selfs, what="mean unbiased HSIC", names_a=names_a, names_b=names_a
            )
        names_b = self.names_b or [f"y[{i}]" for i in range(self._lb)]
        return cka_matrix_from_products(
            mean[:la, la:], selfs[:la], selfs[la:], what="mean unbiased HSIC", names_a=names_a, names_b=names_b
        )


class _PairStream:
    """Shared plumbing of the pair streams: validation, shifts, example count."""

    def __init__(self) -> None:
        self.n = 0
        self._cx: Tensor | None = None
        self._cy: Tensor | None = None

    def _prepare(self, x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        x = as_features(x, what="x", min_examples=1)
        y = as_features(y, what="y", min_examples=1)
        if x.shape[0] != y.shape[0]:
            raise SimilarityError(f"x and y must hold the same examples: x has {x.shape[0]} rows, y has {y.shape[0]}")
        if dtype is not None:
            x, y = x.to(dtype), y.to(dtype)
        if self._cx is None:
            self._cx = x.mean(0, dtype=torch.float64).to(x.dtype)
            self._cy = y.mean(0, dtype=torch.float64).to(y.dtype)
        elif x.shape[1] != self._cx.shape[0] or y.shape[1] != self._cy.shape[0]:  # type: ignore[union-attr]
            raise SimilarityError(
                f"feature widths changed between batches: x {x.shape[1]} vs {self._cx.shape[0]}, "
                f"y {y.shape[1]} vs {self._cy.shape[0]}"
            )  # type: ignore[union-attr]
        self.n += x.shape[0]
        return x - self._cx.to(x.device), y - self._cy.to(y.device)  # type: ignore[union-attr]


class LinearCKAStream(_PairStream):
    """Exact linear CKA of one pair, biased or debiased, from running sums (memory does not
    depend on the number of examples). The debiased form uses that the unbiased HSIC
    estimator is invariant to shifting the features, so it is evaluated on the shifted
    features directly.

    >>> s = LinearCKAStream(debiased=True)
    >>> x = torch.randn(300, 5)
    >>> for i in range(0, 300, 100):
    ...     s.update(x[i:i + 100], 3 * x[i:i + 100] + 1)
    >>> round(s.compute(), 6)
    1.0
    """

    def __init__(self, *, debiased: bool = False) -> None:
        super().__init__()
        self.debiased = debiased
        self._acc: dict[str, Any] = {}

    def _add(self, key: str, value: Tensor | float) -> None:
        if isinstance(value, torch.Tensor):
            value = value.to(torch.float64)
        cur = self._acc.get(key)
        self._acc[key] = value if cur is None else cur + value

    def update(self, x: Tensor, y: Tensor) -> None:
        xs, ys = self._prepare(x, y)
        f64 = torch.float64
        k = torch.linalg.vector_norm(xs, dim=1, dtype=f64).square()
        l = torch.linalg.vector_norm(ys, dim=1, dtype=f64).square()
        self._add("sx", xs.sum(0, dtype=f64))
        self._add("sy", ys.sum(0, dtype=f64))
        self._add("sxy", xs.T @ ys)
        self._add("sxx", xs.T @ xs)
        self._add("syy", ys.T @ ys)
        self._add("k", k.sum())
        self._add("l", l.sum())
        self._add("kl", (k * l).sum())
        self._add("kk", (k * k).sum())
        self._add("ll", (l * l).sum())
        xd, yd = xs.to(f64), ys.to(f64)
        self._add("x_l", xd.T @ l)
        self._add("y_k", yd.T @ k)
        self._add("x_k", xd.T @ k)
        self._add("y_l", yd.T @ l)

    def compute(self) -> float:
        if self.n == 0:
            raise SimilarityError("linear CKA stream: no batch was given (call update() first)")
        a = self._acc
        n = self.n
        sx, sy, sxy, sxx, syy = a["sx"], a["sy"], a["sxy"], a["sxx"], a["syy"]
        if self.debiased:
            if n < 4:
                raise SimilarityError(f"debiased CKA needs at least 4 examples, got {n}")

            def h(
                c: Tensor, s1: Tensor, s2: Tensor, skl: Tensor, sk: Tensor, sl: Tensor, v1: Tensor, v2: Tensor
            ) -> float:
                tr = float(c.square().sum()) - float(skl)
                ones_k = float(s1 @ s1) - float(sk)
                ones_l = float(s2 @ s2) - float(sl)
                kl1 = float(s1 @ c @ s2) - float(s1 @ v1) - float(s2 @ v2) + float(skl)
                return tr + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1

            hxy = h(sxy, sx, sy, a["kl"], a["k"], a["l"], a["x_l"], a["y_k"])
            hxx = h(sxx, sx, sx, a["kk"], a["k"], a["k"], a["x_k"], a["x_k"])
            hyy = h(syy, sy, sy, a["ll"], a["l"], a["l"], a["y_l"], a["y_l"])
            from .kernels import _ratio

            return _ratio(hxy, hxx, hyy, "debiased HSIC")
        cxy = sxy - torch.outer(sx, sy) / n
        cxx = sxx - torch.outer(sx, sx) / n
        cyy = syy - torch.outer(sy, sy) / n
        stats = LinearStats(
            n, float(cxy.square().sum()), float(cxx.square().sum()), float(cyy.square().sum()), 0.0, 0.0, 0.0, 0.0, 0.0
        )
        return cka_from_stats(stats, debiased=False)


class MomentStream(_PairStream):
    """Running centred covariances of one pair (float64); ``compute()`` finishes them with
    ``finish`` (SVCCA, PWCCA or Procrustes by default chosen with ``metric``)."""

    FINISHERS: dict[str, Callable[..., float]] = {
        "svcca": svcca_from_moments,
        "pwcca": pwcca_from_moments,
        "procrustes": procrustes_from_moments,
    }

    def __init__(self, metric: str = "svcca", **options: Any) -> None:
        super().__init__()
        if metric not in self.FINISHERS:
            raise ValueError(f"metric must be one of {', '.join(self.FINISHERS)}, got {metric!r}")
        self.metric = metric
        self.options = options
        self._sx = self._sy = self._sxx = self._syy = self._sxy = None

    def update(self, x: Tensor, y: Tensor) -> None:
        xs, ys = self._prepare(x, y, dtype=torch.float64)
        for name, val in (
            ("_sx", xs.sum(0)),
            ("_sy", ys.sum(0)),
            ("_sxx", xs.T @ xs),
            ("_syy", ys.T @ ys),
            ("_sxy", xs.T @ ys),
        ):
            cur = getattr(self, name)
            setattr(self, name, val if cur is None else cur + val)

    def moments(self) -> Moments:
        if self.n < 2:
            raise SimilarityError(f"needs at least 2 examples, got {self.n}")
        n = self.n
        sx, sy = self._sx, self._sy
        assert sx is not None and sy is not None
        return Moments(
            n,
            self._sxx - torch.outer(sx, sx) / n,
            self._syy - torch.outer(sy, sy) / n,  # type: ignore[operator]
            self._sxy - torch.outer(sx, sy) / n,
        )  # type: ignore[operator]

    def compute(self) -> float:
        return self.FINISHERS[self.metric](self.moments(), **self.options)


class FeatureBuffer:
    """Keeps every batch (on the CPU) and calls ``metric(X, Y)`` at the end: the streaming
    form of metrics that need all examples at once (RBF CKA, plain callables)."""

    def __init__(self, metric: Callable[[Tensor, Tensor], float]) -> None:
        self.metric = metric
        self._xs: list[Tensor] = []
        self._ys: list[Tensor] = []

    def update(self, x: Tensor, y: Tensor) -> None:
        self._xs.append(x.detach().reshape(x.shape[0], -1).cpu())
        self._ys.append(y.detach().reshape(y.shape[0], -1).cpu())

    def compute(self) -> float:
        if not self._xs:
            raise SimilarityError("no batch was given (call update() first)")
        return float(self.metric(torch.cat(self._xs), torch.cat(self._ys)))
