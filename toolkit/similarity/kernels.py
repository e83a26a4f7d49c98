"""Pure functional similarity kernels: CKA (linear, RBF; biased and debiased), minibatch CKA,
SVCCA, PWCCA and the orthogonal Procrustes distance.

Every function takes feature tensors ``x`` of shape ``[n, ...]`` (``n`` examples; trailing
dimensions are flattened) in float16, bfloat16, float32 or float64, on any device, and
returns a Python float. Half-precision inputs are computed in float32; the sums that
decide the result (Frobenius products of Gram or cross-covariance matrices, HSIC
accumulators, covariances for CCA) are accumulated in float64.

Degenerate input raises :class:`SimilarityError` (an :class:`rtk.RtkError`) that says what
was wrong: NaN or inf values, fewer examples than the estimator needs, features that are
constant across examples. A kernel never returns NaN and never a silent 1.0.

Speed: linear CKA picks the cheaper of two exact routes, feature space (``d x d`` cross
products, cost about ``n (d1 + d2)^2``) or Gram space (``n x n`` Grams, cost about
``n^2 (d1 + d2)``); features are centred once; symmetric products (``X^T X`` and ``X X^T``)
use a symmetric BLAS routine on the CPU (NumPy's syrk: half the work of a general product).
Heatmaps compute one summary per layer, never one per pair (:func:`linear_cka_matrix`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..errors import RtkError

Tensor = torch.Tensor
T = TypeVar("T")


class SimilarityError(RtkError):
    """Input that a similarity metric cannot measure (NaN/inf, too few examples, constant
    features), or a metric that produced a non-finite value."""


# ----------------------------------------------------------------------------- input checks
# fewer examples than this make the metric a constant whatever the data: two centred
# representations of 2 examples are always proportional (CKA 1.0, Procrustes distance 0.0)
MIN_EXAMPLES = 3
_TOO_FEW = "with 2 examples any two centred representations are proportional, so the value would not depend on the data"


def as_features(
    x: Tensor, *, what: str = "x", min_examples: int = 2, check_finite: bool = True, why: str = ""
) -> Tensor:
    """Validate and return ``x`` as a 2-D floating tensor ``[n, d]``, detached from any graph.

    Half precision (float16, bfloat16) and integer inputs become float32; float32 and
    float64 are kept. Raises :class:`SimilarityError` for fewer than ``min_examples`` rows,
    zero features, or NaN / inf values (``check_finite=False`` leaves that pass to a caller
    whose own sums would show NaN or inf, and who calls this again to name them).
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.detach()  # similarities are statistics of the values: no graph is kept (activations may require grad)
    if x.ndim < 2:
        raise SimilarityError(f"{what}: expected features of shape [n, d] (n examples), got shape {list(x.shape)}")
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    n, d = x.shape
    if d == 0:
        raise SimilarityError(f"{what}: has no features (shape {list(x.shape)})")
    if n < min_examples:
        raise SimilarityError(f"{what}: needs at least {min_examples} examples, got {n}" + (f" ({why})" if why else ""))
    if not check_finite:
        return x
    # one cheap pass (a pairwise sum in the input's type); NaN and inf propagate into it
    total = float(x.numpy().sum()) if _on_numpy(x) else float(x.sum())
    if not math.isfinite(total):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise SimilarityError(f"{what}: contains {bad} NaN or inf value(s) out of {x.numel()}")
    return x


def _pair(x: Tensor, y: Tensor, min_examples: int, check_finite: bool = True) -> tuple[Tensor, Tensor]:
    why = _TOO_FEW if min_examples == MIN_EXAMPLES else ""
    x = as_features(x, what="x", min_examples=min_examples, check_finite=check_finite, why=why)
    y = as_features(y, what="y", min_examples=min_examples, check_finite=check_finite, why=why)
    if x.shape[0] != y.shape[0]:
        raise SimilarityError(f"x and y must hold the same examples: x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.device != y.device:
        y = y.to(x.device)
    if x.dtype != y.dtype:  # compute in the wider type
        dt = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dt), y.to(dt)
    return x, y


def center(x: Tensor, *, what: str = "x", check: bool = False) -> Tensor:
    """Subtract the column means. With ``check``, raise when every feature is constant
    across examples (the CKA kernels find that anyway: a representation's HSIC with
    itself is then zero, which they report)."""
    if _on_numpy(x):
        # NumPy only (one thread pool per hot loop: a torch reduction between NumPy's BLAS
        # calls makes the two pools spin against each other). NumPy's float32 column sums
        # lose up to about 1e-6 relative at large n, which CKA does not see: a residual mean
        # changes the centred products only in second order.
        a = x.numpy()
        with np.errstate(**QUIET):
            xc = torch.from_numpy(a - a.mean(0))
    else:
        xc = x - x.mean(0, keepdim=True)
    if check and not bool(xc.ne(0).any()):
        raise SimilarityError(f"{what}: every feature is constant across the {x.shape[0]} examples")
    return xc


def pow2_scale(x: Tensor) -> float:
    """A power of two ``s`` such that ``x * s`` has its largest magnitude near 1, or 1.0 when
    ``x``'s products are safe as they are (largest magnitude within ``2^-30 .. 2^30``).

    Every CKA variant is invariant to scaling a representation, and a power-of-two scaling
    is exact; it keeps float32 products of features scaled by 1e20 (which overflow) or
    1e-20 (which underflow to zero) computing the right value."""
    if _on_numpy(x):
        a = x.numpy()
        m = max(float(a.max()), -float(a.min())) if a.size else 0.0
    else:
        m = float(x.abs().max()) if x.numel() else 0.0
    if not (math.isfinite(m) and m > 0.0) or 2.0**-30 <= m <= 2.0**30:
        return 1.0
    return math.ldexp(1.0, -math.frexp(m)[1])


def _rescaled(x: Tensor, scale: float) -> Tensor:
    return x if scale == 1.0 else x * scale


# ----------------------------------------------------------------------------- products
# On the CPU, products go through NumPy's BLAS: it computes ``A @ A.T`` with a symmetric
# routine (syrk, half the work), and runs the skinny products of the heatmaps (``L x k`` by
# ``k x L``) an order of magnitude faster than torch here (benchmarks/bench_similarity.py
# measures both). On other devices the same functions call torch.
#: NumPy's floating-point warnings are off where overflow or NaN are expected and handled: the
#: callers check the sums (non-finite values raise a SimilarityError naming the input, or rescale
#: by a power of two and recompute), as the torch routes do without warning.
QUIET: dict[str, str] = {"over": "ignore", "invalid": "ignore", "under": "ignore"}


def _on_numpy(*ts: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad for t in ts)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``: NumPy's GEMM on the CPU (about 4% faster than torch's on our machines at
    ``n = 10,000``, ``d = 2,048``; benchmarks/bench_similarity.py prints both peaks), torch
    elsewhere. See :func:`gram` and :func:`self_cross` for the symmetric products."""
    if _on_numpy(a, b):
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


def _syrk(a: Tensor) -> Tensor:
    """``a @ a.T``: NumPy's symmetric routine on the CPU (half the work), torch elsewhere."""
    if _on_numpy(a):
        an = a.numpy()
        return torch.from_numpy(np.matmul(an, an.T))
    return a @ a.T


def gram(x: Tensor) -> Tensor:
    """``x @ x.T`` (``[n, n]``, symmetric)."""
    return _syrk(x)


def self_cross(x: Tensor) -> Tensor:
    """``x.T @ x`` (``[d, d]``, symmetric)."""
    return _syrk(x.T)


def row_products(rows: Tensor, chunk: int = 1 << 14) -> Tensor:
    """``rows @ rows.T`` in float64 for a wide ``[L, k]`` matrix, converted to float64 over
    chunks of ``chunk`` columns as they are read (the products are a small part of a
    heatmap's work; float32 products over chunks of 65,536 measured 5e-8 off in CKA,
    float64 ones 3e-9, in the same time)."""
    nl, k = rows.shape
    if _on_numpy(rows):
        a = rows.numpy()
        out = np.zeros((nl, nl))
        for c0 in range(0, k, chunk):
            part = a[:, c0 : c0 + chunk].astype(np.float64)
            out += part @ part.T
        return torch.from_numpy(out)
    res = torch.zeros(nl, nl, dtype=torch.float64, device=rows.device)
    for c0 in range(0, k, chunk):
        part = rows[:, c0 : c0 + chunk].to(torch.float64)
        res += part @ part.T
    return res


def _sumsq(t: Tensor) -> Tensor:
    """Sum of squares as a float64 scalar, every square and sum in float64 (the entries
    converted in row blocks as they are read). float32 row sums of the squares, added in
    float64, were the largest error of linear CKA's feature route: 1e-8 relative on the
    ``2048 x 2048`` products at ``n = 10,000``, whose own float32 rounding is 1e-9."""
    return _dot64(t, t)


def _rowsq(xc: Tensor) -> Tensor:
    """Squared norm of every row, as float64: the diagonal of the Gram matrix."""
    if _on_numpy(xc):
        a = xc.numpy()
        return torch.from_numpy(np.einsum("ij,ij->i", a, a).astype(np.float64))
    return (xc * xc).sum(1).to(torch.float64)


# ----------------------------------------------------------------------------- BLAS workers
# NumPy's BLAS (OpenBLAS) runs each product on all its threads, and its symmetric routine
# splits the triangle poorly between them: at n = 10,000, d = 2,048 on 2 threads, syrk ran at
# 0.70 of GEMM's flop rate (0.86 on 1 thread), and each threaded call waits at a barrier for
# its slowest thread (on a loaded machine, for a thread the OS descheduled). Independent
# products go faster as independent single-threaded calls, one per BLAS thread, run side by
# side: NumPy releases the GIL inside BLAS calls and large ufuncs.
_BLAS: dict[str, object] = {}


def _blas_controller():  # -> threadpoolctl.ThreadpoolController | None
    ctl = _BLAS.get("controller")
    if ctl is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a dependency of scikit-learn, which rtk requires
            return None
        ctl = ThreadpoolController().select(user_api="blas")
        if not ctl.lib_controllers:
            return None
        _BLAS["controller"] = ctl
    return ctl


def blas_workers() -> int:
    """How many single-threaded BLAS calls :func:`run_side_by_side` runs at once: the
    thread count of NumPy's BLAS (1 when it cannot be read)."""
    ctl = _blas_controller()
    if ctl is None:
        return 1
    return max(1, max(int(lib.num_threads) for lib in ctl.lib_controllers))  # type: ignore[attr-defined]


def run_side_by_side(tasks: Sequence[Callable[[], T]], *, torch_products: bool = False) -> list[T]:
    """Run ``tasks`` (NumPy work) on :func:`blas_workers` threads, each taking the next task
    when it finishes one (so a thread the OS slows down takes fewer), with NumPy's BLAS
    single-threaded meanwhile (and torch's threads too with ``torch_products``, for tasks that
    call :func:`_general_product`); the results in order. Put the largest tasks first. With
    one task, or when BLAS has one thread, they run one after the other as they are."""
    workers = min(blas_workers(), len(tasks))
    if workers < 2 or threading.current_thread().name.startswith("rtk-blas"):  # a task's own tasks run in it
        return [t() for t in tasks]
    ctl = _blas_controller()
    pool = _BLAS.get("pool")
    # a new pool after fork (the parent's threads do not exist in the child) or to grow
    if pool is None or _BLAS.get("pid") != os.getpid() or pool._max_workers < workers:  # type: ignore[attr-defined]
        from concurrent.futures import ThreadPoolExecutor

        pool = _BLAS["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtk-blas")
        _BLAS["pid"] = os.getpid()
    torch_threads = torch.get_num_threads()
    with ctl.limit(limits=1):  # type: ignore[attr-defined]
        if torch_products:  # tasks with torch products (MKL, see _general_product): single-threaded too
            torch.set_num_threads(1)
        try:
            futures = [pool.submit(t) for t in tasks]  # type: ignore[attr-defined]
            for f in futures:  # every task ends before the limits are lifted
                f.exception()
        finally:
            if torch_products:
                torch.set_num_threads(torch_threads)
    return [f.result() for f in futures]


def _general_product(u: np.ndarray, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``u @ v`` (two different arrays) by torch's GEMM (MKL), which measured faster than
    NumPy's (OpenBLAS) on one thread for the shapes here: 153 against 134 GFLOP/s for a
    heatmap's ``576 x 576`` Gram tiles (``d`` 512 to 8,192), 175 against 165 for
    ``2048 x 10,000`` by ``10,000 x 2048``. Symmetric products stay with NumPy's syrk."""
    tu, tv = torch.from_numpy(u), torch.from_numpy(v)
    if out is None:
        return torch.mm(tu, tv).numpy()
    torch.mm(tu, tv, out=torch.from_numpy(out))
    return out


_LOCAL = threading.local()


def _scratch(name: str, size: int, dtype: np.dtype | type) -> np.ndarray:
    """A flat buffer of at least ``size`` elements kept by this thread across calls (one per
    ``name``; it grows when a call needs more). Fresh multi-megabyte arrays per batch or tile
    cost page faults that measured as much as the arithmetic around them."""
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = bufs[name] = np.empty(size, dtype)
    return buf[:size]


def _shifted_gram(a: np.ndarray, shift: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """The Gram ``(a - shift)(a - shift)^T`` of ``a`` (``[b, d]``, float32 or float64): the
    shifted features in a buffer of this thread and the Gram in another (see :func:`_scratch`),
    by NumPy's symmetric product (syrk). ``dtype`` (float64 for float32 ``a``) makes the
    subtraction and the product in that type.

    SciPy's own ``ssyrk`` over column chunks kept in cache took 0.88 of this one's time on one
    thread, but its wrappers hold the GIL: side by side on two cores 20 batches of 12 layers
    took 0.73 s that way and 0.43-0.52 s this way. NumPy's ``matmul`` releases the GIL."""
    work = np.dtype(dtype or a.dtype)
    c = _scratch("shifted", a.size, work).reshape(a.shape)
    np.subtract(a, shift, out=c, dtype=work)
    b = a.shape[0]
    k = _scratch("gram", b * b, work).reshape(b, b)
    np.matmul(c, c.T, out=k)  # the same buffer twice: NumPy's symmetric routine (it fills both triangles)
    return k


# ----------------------------------------------------------------------------- linear CKA
@dataclass(frozen=True)
class LinearStats:
    """Everything linear CKA (biased or debiased) needs about one pair of centred
    representations with Grams ``K = Xc Xc^T`` and ``L = Yc Yc^T``:

    ``kl = <K, L>_F = ||Xc^T Yc||_F^2``, ``kk``, ``ll``; the Gram diagonals' sums
    ``sk = tr K``, ``sl``; and ``skl = sum_i K_ii L_ii``, ``skk``, ``sll``. ``n`` examples.
    """

    n: int
    kl: float
    kk: float
    ll: float
    sk: float
    sl: float
    skl: float
    skk: float
    sll: float


def hsic1_from_stats(n: int, kl: float, skl: float, sk: float, sl: float) -> float:
    """``n (n - 3)`` times the unbiased HSIC estimator (Song et al. 2012) of two *centred*
    linear Grams, written with the Gram diagonals: for centred features ``K 1 = 0``, so
    ``tr(K~L~) = <K,L> - sum k_i l_i``, ``1^T K~ 1 = -tr K`` and ``1^T K~ L~ 1 = sum k_i l_i``
    (``K~`` is ``K`` with its diagonal set to zero)."""
    return kl - (n / (n - 2)) * skl + sk * sl / ((n - 1) * (n - 2))


def cka_from_stats(s: LinearStats, *, debiased: bool) -> float:
    """Linear CKA from :class:`LinearStats`."""
    if debiased:
        if s.n < 4:
            raise SimilarityError(f"debiased CKA needs at least 4 examples, got {s.n}")
        hxy = hsic1_from_stats(s.n, s.kl, s.skl, s.sk, s.sl)
        hxx = hsic1_from_stats(s.n, s.kk, s.skk, s.sk, s.sk)
        hyy = hsic1_from_stats(s.n, s.ll, s.sll, s.sl, s.sl)
        return _ratio(hxy, hxx, hyy, "debiased HSIC")
    return _ratio(s.kl, s.kk, s.ll, "HSIC")


def _ratio(xy: float, xx: float, yy: float, what: str) -> float:
    if not (xx > 0.0):
        raise SimilarityError(
            f"{what} of x with itself is {xx:.3g}, not positive: x is (nearly) constant, "
            "or there are too few examples for the unbiased estimator"
        )
    if not (yy > 0.0):
        raise SimilarityError(
            f"{what} of y with itself is {yy:.3g}, not positive: y is (nearly) constant, "
            "or there are too few examples for the unbiased estimator"
        )
    value = xy / math.sqrt(xx * yy)
    if not math.isfinite(value):
        raise SimilarityError(f"{what} ratio is not finite ({xy!r} / sqrt({xx!r} * {yy!r}))")
    return max(-1.0, min(1.0, value))


def linear_stats(
    x: Tensor, y: Tensor, *, route: str = "auto", min_examples: int = MIN_EXAMPLES, diagonals: bool = True
) -> LinearStats:
    """Centre both representations once and compute :class:`LinearStats` by the cheaper
    exact route: feature space when ``d1 + d2 < n``, Gram space otherwise (``route`` may
    force ``"feature"`` or ``"gram"``)."""
    # the finiteness pass over the inputs is folded into the products: a NaN or inf
    # anywhere in x or y makes kk or ll non-finite, and only then are the inputs scanned
    # to say which and how many; the same goes for features whose float products overflow
    # or underflow (scaled by 1e20 or 1e-20): only then are they rescaled and run again
    x, y = _pair(x, y, min_examples=min_examples, check_finite=False)
    n, d1 = x.shape
    if route == "auto":
        route = "feature" if d1 + y.shape[1] < n else "gram"
    if route not in ("feature", "gram"):
        raise ValueError(f"route must be 'auto', 'feature' or 'gram', got {route!r}")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # handled below
        xc, yc, kl, kk, ll = _linear_products(x, y, route)
    if not (all(math.isfinite(v) for v in (kl, kk, ll)) and min(kk, ll) >= 1e-30):
        as_features(x, what="x")
        as_features(y, what="y")
        sx, sy = pow2_scale(x), pow2_scale(y)
        if sx != 1.0 or sy != 1.0:
            xc, yc, kl, kk, ll = _linear_products(_rescaled(x, sx), _rescaled(y, sy), route)
    if not all(math.isfinite(v) for v in (kl, kk, ll)):
        raise SimilarityError(
            f"the products of x and y overflowed (<K,L> = {kl!r}, <K,K> = {kk!r}, "
            f"<L,L> = {ll!r}); rescale the features or pass float64"
        )
    if not diagonals:
        return LinearStats(n, kl, kk, ll, 0.0, 0.0, 0.0, 0.0, 0.0)
    k, l = _rowsq(xc), _rowsq(yc)
    return LinearStats(
        n, kl, kk, ll, float(k.sum()), float(l.sum()), float((k * l).sum()), float((k * k).sum()), float((l * l).sum())
    )


# below this summed width, the feature route's products run in float64 (see _linear_products)
FLOAT64_FEATURES = 4096


def _linear_products(x: Tensor, y: Tensor, route: str) -> tuple[Tensor, Tensor, float, float, float]:
    """Centred features and ``<K,L>, <K,K>, <L,L>`` by the feature or the Gram route."""
    side_by_side = route == "feature" and _on_numpy(x, y) and blas_workers() >= 2
    if side_by_side:  # the two centrings too (see _feature_sums_side_by_side)
        xc, yc = run_side_by_side([lambda: center(x, what="x"), lambda: center(y, what="y")])
    else:
        xc, yc = center(x, what="x"), center(y, what="y")
    if route == "feature":
        # (one symmetric product of the concatenated features does the same flops, but the
        # three products measured faster here: a general GEMM and two symmetric ones)
        if xc.dtype == torch.float32 and xc.shape[1] + yc.shape[1] < FLOAT64_FEATURES:
            # float32 d x d products average their rounding over fewer entries when d is
            # small: measured 6.3e-8 off the float64 value at n = 1,500, d1 = d2 = 128,
            # 2.0e-8 at n = 4,000, d = 512, 1.5e-8 at n = 3,000, d = 1,100 (2.4e-9 at
            # n = 10,000, d = 2,048, which stays in float32)
            xc, yc = xc.to(torch.float64), yc.to(torch.float64)
        if side_by_side:
            kl, kk, ll = _feature_sums_side_by_side(xc.numpy(), yc.numpy())
        else:
            kl = float(_sumsq(matmul(xc.T, yc)))
            kk = float(_sumsq(self_cross(xc)))
            ll = float(_sumsq(self_cross(yc)))
    else:
        gx, gy = gram(xc), gram(yc)
        kl = float(_dot64(gx, gy))
        kk, ll = float(_sumsq(gx)), float(_sumsq(gy))
    return xc, yc, kl, kk, ll


def _feature_sums_side_by_side(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """``||A^T B||^2, ||A^T A||^2, ||B^T B||^2`` of centred features as single-threaded BLAS
    calls side by side (see :func:`run_side_by_side`): ``A^T B`` in column blocks (one per
    BLAS thread, at least 2) and each ``A^T A`` by column halves ``[A1 A2]`` as one general
    ``A1^T A2`` counted twice and two symmetric products (a symmetric product ran at 0.86 of
    a general one's rate on one thread; this way half its flops go general), every block
    with its float64 sum of squares. At ``n = 10,000``, ``d = 2,048`` on 2 cores this (with
    the two centrings side by side) measured 1.14-1.23x faster than the same flops as three
    threaded calls."""

    def sq(u: np.ndarray, v: np.ndarray, times: float = 1.0) -> Callable[[], float]:
        def task() -> float:
            with np.errstate(**QUIET):
                same = u.ctypes.data == v.ctypes.data and u.shape == v.shape and u.strides == v.strides
                p = u.T @ u if same else _general_product(u.T, v)  # the same array: a symmetric routine
                return times * float(_sumsq(torch.from_numpy(p)))

        return task

    general: list[tuple[int, Callable[[], float]]] = []  # (0: kl, 1: kk, 2: ll, the block)
    symmetric: list[tuple[int, Callable[[], float]]] = []
    step = -(-b.shape[1] // max(2, blas_workers()))
    general += [(0, sq(a, b[:, c0 : c0 + step])) for c0 in range(0, b.shape[1], step)]
    for which, u in ((1, a), (2, b)):
        h = u.shape[1] // 2
        if h < 64:
            symmetric.append((which, sq(u, u)))
        else:
            general.append((which, sq(u[:, :h], u[:, h:], 2.0)))
            symmetric += [(which, sq(u[:, :h], u[:, :h])), (which, sq(u[:, h:], u[:, h:]))]
    jobs = general + symmetric  # the largest first
    sums = [0.0, 0.0, 0.0]
    for (which, _), v in zip(jobs, run_side_by_side([job for _, job in jobs], torch_products=True)):
        sums[which] += v
    return sums[0], sums[1], sums[2]


def _dot64(a: Tensor, b: Tensor, block: int = 1 << 18) -> Tensor:
    """Frobenius inner product in float64: blocks of about ``block`` entries converted to
    float64 as they are read, every product and sum in float64."""
    if a.ndim < 2:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    if _on_numpy(a, b):
        an, bn = a.numpy(), b.numpy()
        rows = max(1, block // max(1, an.shape[1]))
        total = 0.0
        for r0 in range(0, an.shape[0], rows):  # einsum casts each block to float64 as it reads it
            total += float(np.einsum("ij,ij->", an[r0 : r0 + rows], bn[r0 : r0 + rows], dtype=np.float64))
        return torch.tensor(total, dtype=torch.float64)
    return (a.to(torch.float64) * b.to(torch.float64)).sum()


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019): ``<Kc, Lc> / (||Kc|| ||Lc||)`` with centred
    linear Grams; ``debiased=True`` replaces each HSIC by its unbiased estimator
    (Song et al. 2012), as in Kornblith et al.'s debiased CKA (needs n >= 4).

    >>> x = torch.randn(100, 8); round(linear_cka(x, 2 * x), 6)
    1.0
    """
    stats = linear_stats(x, y, min_examples=4 if debiased else MIN_EXAMPLES, diagonals=debiased)
    return cka_from_stats(stats, debiased=debiased)


def linear_cka_matrix(
    xs: Sequence[Tensor],
    ys: Sequence[Tensor] | None = None,
    *,
    debiased: bool = False,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
    route: str = "auto",
    memory: int = 256 << 20,
    gram_memory: int = 2 << 30,
) -> Tensor:
    """Linear CKA between every pair of layers: ``[len(xs), len(xs)]`` within one model, or
    ``[len(xs), len(ys)]`` between two models. One summary per layer, never one per pair:

    - every representation is validated and centred once;
    - feature route (when the summed width ``D`` of all layers is below ``n``): one
      symmetric product of the concatenated features ``Z^T Z`` (``n D^2`` flops), whose
      blocks give every ``||Xi^T Xj||_F^2``;
    - Gram route (otherwise): one symmetric ``n x n`` Gram per layer (``n^2 sum(d)``
      flops), then all ``L^2`` Frobenius products as GEMMs of the flattened Grams over
      column chunks, accumulated in float64. When the ``L`` Grams would take more than
      ``gram_memory`` bytes, they are computed in row-block strips of their upper
      triangles instead, and each strip's products with all layers are taken at once:
      memory then stays under ``memory`` bytes whatever ``n`` and ``L``.

    Returns float64 CKA values on the features' device.
    """
    xs = list(xs)
    names_a = list(names_a) if names_a is not None else [f"x[{i}]" for i in range(len(xs))]
    least = 4 if debiased else MIN_EXAMPLES
    why = "" if debiased else _TOO_FEW
    feats = [as_features(x, what=f"layer {nm!r}", min_examples=least, why=why) for x, nm in zip(xs, names_a)]
    names = list(names_a)
    if ys is not None:
        ys = list(ys)
        names_b = list(names_b) if names_b is not None else [f"y[{i}]" for i in range(len(ys))]
        feats += [as_features(y, what=f"layer {nm!r}", min_examples=least, why=why) for y, nm in zip(ys, names_b)]
        names += names_b
    if not feats:
        raise SimilarityError("no representations given")
    n = feats[0].shape[0]
    for f, nm in zip(feats, names):
        if f.shape[0] != n:
            raise SimilarityError(
                f"layer {nm!r} has {f.shape[0]} examples, the first layer has {n}: "
                "every representation must hold the same examples"
            )
    dev = feats[0].device
    dt = torch.float64 if any(f.dtype == torch.float64 for f in feats) else torch.float32
    feats = [f.to(device=dev, dtype=dt) for f in feats]
    widths = [f.shape[1] for f in feats]
    if route == "auto":
        route = "feature" if sum(widths) < n else "gram"
    if route not in ("feature", "gram"):
        raise ValueError(f"route must be 'auto', 'feature' or 'gram', got {route!r}")
    diags = None
    if route == "gram" and _on_numpy(*feats):  # centring folded into the tiles (see _gram_tile_products)
        feats = run_side_by_side([lambda f=f: _rescaled(f, pow2_scale(f)) for f in feats])
        prods, diags = _gram_tile_products(feats, max(1 << 16, memory // 8), diagonals=debiased)
    else:
        if _on_numpy(*feats):  # side by side, single-threaded (see run_side_by_side)
            feats = run_side_by_side([lambda f=f: center(_rescaled(f, pow2_scale(f))) for f in feats])
        else:
            feats = [center(_rescaled(f, pow2_scale(f))) for f in feats]
        if route == "feature":
            prods = _feature_products(feats, widths)
        elif len(feats) * n * n * feats[0].element_size() <= gram_memory:
            prods = _gram_stored_products(feats)
        else:
            prods = _gram_strip_products(feats, memory)
    if debiased:
        k = torch.stack(diags if diags is not None else [_rowsq(f) for f in feats])  # [L, n] Gram diagonals
        sk = k.sum(1)
        skl = k @ k.T
        prods = prods - (n / (n - 2)) * skl + torch.outer(sk, sk) / ((n - 1) * (n - 2))
    selfs = torch.diagonal(prods).clone()
    la = len(xs)
    what = "debiased HSIC" if debiased else "HSIC"
    if ys is None:
        return cka_matrix_from_products(prods, selfs, selfs, what=what, names_a=names, names_b=names)
    return cka_matrix_from_products(
        prods[:la, la:], selfs[:la], selfs[la:], what=what, names_a=names[:la], names_b=names[la:]
    )


def _feature_products(feats: Sequence[Tensor], widths: Sequence[int]) -> Tensor:
    """``||Xi^T Xj||_F^2`` for all pairs from one symmetric product of the stacked features."""
    z = torch.cat(list(feats), dim=1)
    c = self_cross(z)
    edges = [0]
    for w in widths:
        edges.append(edges[-1] + w)
    nl = len(feats)
    out = torch.zeros(nl, nl, dtype=torch.float64, device=z.device)
    for i in range(nl):
        for j in range(i, nl):
            v = _sumsq(c[edges[i] : edges[i + 1], edges[j] : edges[j + 1]])
            out[i, j] = v
            out[j, i] = v
    return out


def _gram_stored_products(feats: Sequence[Tensor]) -> Tensor:
    """``<Ki, Kj>_F`` for all pairs from the stored Grams ``Ki = Xi Xi^T`` (torch)."""
    nl, n = len(feats), feats[0].shape[0]
    grams = torch.stack([f @ f.T for f in feats]).reshape(nl, n * n)
    return row_products(grams)


# a layer whose squared mean is at most this many times its summed variance has its centring
# folded into the Gram tiles (see _gram_tile_products); the float32 products of uncentred
# features err about (1 + ratio) times as much as centred ones (measured with offsets added
# to ReLU features at n = 1,500: 1.8e-10 at ratio ~1, 4.3e-9 at ~12, 1.4e-8 at ~300)
FOLD_CENTRING = 4.0


def _gram_tile_products(feats: Sequence[Tensor], memory: int, diagonals: bool = False) -> tuple[Tensor, list[Tensor]]:
    """``<Ki, Kj>_F`` for all pairs of centred linear Grams ``Ki = Xci Xci^T`` on the CPU (and,
    with ``diagonals``, each Gram's diagonal), tile by tile: for each tile ``(I, J)`` of the
    upper triangle of the ``n x n`` grid, every layer's block ``X[I] X[J]^T`` (a symmetric
    product on the diagonal), centred in float64 as
    ``X[I] X[J]^T - u[I] 1^T - 1 u[J]^T + m.m`` (``m`` the column means, ``u = X m``), then
    the tile's float64 products between all layers (counted twice off the diagonal). A
    layer with a large mean (see :data:`FOLD_CENTRING`) is centred once beforehand instead.

    The tiles are tasks for :func:`run_side_by_side`, each with about ``memory`` bytes: the
    ``L`` full Grams are never stored, nor centred copies of the features (at ``n = 5,000``,
    ``L = 12``: allocating the Grams' 1.2 GB afresh cost 7.7 s of page faults on a loaded
    machine, as much as computing them, and the centred copies' 0.7 GB some 3 s)."""
    nl, n = len(feats), feats[0].shape[0]

    def prepare(f: Tensor) -> tuple[np.ndarray, np.ndarray | None, float, Tensor | None]:
        a = f.numpy()
        m = a.mean(0, dtype=np.float64)
        sample = a[:: max(1, n // 256)].astype(np.float64) - m
        if float(m @ m) * sample.shape[0] > FOLD_CENTRING * float(np.einsum("ij,ij->", sample, sample)):
            c = center(f)
            return c.numpy(), None, 0.0, (_rowsq(c) if diagonals else None)
        rows = max(1, (1 << 20) // a.shape[1])
        u = np.empty(n)
        diag = np.empty(n) if diagonals else None
        for r0 in range(0, n, rows):
            blk = a[r0 : r0 + rows].astype(np.float64)
            u[r0 : r0 + rows] = blk @ m
            if diag is not None:
                blk -= m
                diag[r0 : r0 + rows] = np.einsum("ij,ij->i", blk, blk)
        return a, u, float(m @ m), (torch.from_numpy(diag) if diag is not None else None)

    prep = run_side_by_side([lambda f=f: prepare(f) for f in feats])
    t = min(n, max(64, int(math.sqrt(memory / (nl * 8))) // 32 * 32))
    starts = range(0, n, t)
    tiles = [(i0, j0) for i0 in starts for j0 in starts if j0 >= i0]
    tiles.sort(key=lambda ij: -(min(n, ij[0] + t) - ij[0]) * (min(n, ij[1] + t) - ij[1]) * (1 + (ij[0] != ij[1])))

    def tile(i0: int, j0: int) -> np.ndarray:
        i1, j1 = min(n, i0 + t), min(n, j0 + t)
        # this thread's buffers, kept across tiles and calls (a fresh 32 MB stack per tile cost page faults)
        blk = _scratch("tile-stack", nl * (i1 - i0) * (j1 - j0), np.float64).reshape(nl, i1 - i0, -1)
        g = _scratch("tile-gram", (i1 - i0) * (j1 - j0), prep[0][0].dtype).reshape(i1 - i0, -1)
        for l, (a, u, mm, _) in enumerate(prep):
            if i0 == j0:  # the same rows: syrk
                np.matmul(a[i0:i1], a[i0:i1].T, out=g)
            else:
                _general_product(a[i0:i1], a[j0:j1].T, out=g)
            b = blk[l]
            if u is None:
                b[...] = g
            else:  # two passes: converted and row-centred, then column-centred
                np.subtract(g, u[i0:i1, None], out=b, dtype=np.float64)
                b -= u[j0:j1] - mm
        flat = blk.reshape(nl, -1)
        out = flat @ flat.T
        return out if i0 == j0 else 2.0 * out

    parts = run_side_by_side([lambda i0=i0, j0=j0: tile(i0, j0) for i0, j0 in tiles], torch_products=True)
    return torch.from_numpy(np.sum(parts, axis=0)), [d for *_, d in prep if d is not None]


def _gram_strip_products(feats: Sequence[Tensor], memory: int) -> Tensor:
    """``<Ki, Kj>_F`` for all pairs of centred linear Grams ``Ki = Xi Xi^T`` from row-block
    strips of their upper triangles: off-diagonal blocks count twice, diagonal blocks once."""
    nl = len(feats)
    n = feats[0].shape[0]
    item = feats[0].element_size()
    block = int(max(16, min(1024, memory // max(1, nl * n * item))))
    out = torch.zeros(nl, nl, dtype=torch.float64, device=feats[0].device)
    buf = torch.empty(nl * block * n, dtype=feats[0].dtype, device=feats[0].device)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        bb, m = i1 - i0, n - i0
        strips = buf[: nl * bb * m].view(nl, bb, m)
        for l, f in enumerate(feats):
            torch.mm(f[i0:i1], f[i0:].T, out=strips[l])
        out += 2.0 * _layer_products(strips) - _layer_products(strips[:, :, :bb])
    return out


def _layer_products(strips: Tensor) -> Tensor:
    """``sum_r strips[:, r] @ strips[:, r].T`` for ``strips`` ``[L, b, m]`` (float64)."""
    nl = strips.shape[0]
    return row_products(strips.reshape(nl, -1) if strips.is_contiguous() else strips.contiguous().reshape(nl, -1))


# ----------------------------------------------------------------------------- Gram-based CKA
def rbf_gram(x: Tensor, *, sigma: float = 0.8, what: str = "x") -> Tensor:
    """RBF kernel matrix ``exp(-||x_i - x_j||^2 / (2 s^2))`` in float64, with bandwidth
    ``s = sigma * median distance`` (the median over the ``n (n - 1) / 2`` distinct pairs;
    for an even count, the mean of the two middle distances)."""
    if not sigma > 0:
        raise SimilarityError(f"rbf bandwidth fraction must be positive, got {sigma}")
    x = as_features(x, what=what, min_examples=MIN_EXAMPLES, why=_TOO_FEW)
    x = _rescaled(x, pow2_scale(x))
    xc = center(x, what=what)
    d2 = sq_distances(xc)
    med = _median_offdiag_distance(d2)
    if not med > 0:
        raise SimilarityError(f"{what}: the median distance between examples is 0 (most examples are identical)")
    return torch.exp(d2 * (-1.0 / (2.0 * (sigma * med) ** 2)))


def sq_distances(xc: Tensor) -> Tensor:
    """Squared Euclidean distances between rows, float64 ``[n, n]`` with an exact zero
    diagonal."""
    g = gram(xc).to(torch.float64)
    sq = torch.diagonal(g).clone()
    d2 = sq[:, None] + sq[None, :] - 2.0 * g
    d2.clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2


def _median_offdiag_distance(d2: Tensor) -> float:
    n = d2.shape[0]
    m = n * (n - 1)  # ordered off-diagonal pairs (each distinct pair twice; the median is the same)
    flat = d2.reshape(-1)
    # the n zeros of the diagonal sort first, so the j-th smallest off-diagonal value is the
    # (n + j)-th smallest of the whole matrix
    lo = float(torch.kthvalue(flat, n + m // 2).values)
    hi = float(torch.kthvalue(flat, n + m // 2 + 1).values)
    return 0.5 * (math.sqrt(max(lo, 0.0)) + math.sqrt(max(hi, 0.0)))


@dataclass(frozen=True)
class GramSummary:
    """A kernel matrix prepared for CKA: ``mat`` is the centred Gram ``H K H`` (biased) or
    the Gram with a zero diagonal ``K~`` (debiased), flattened; ``rows = K~ 1`` and
    ``total = 1^T K~ 1`` for the debiased estimator."""

    mat: Tensor
    n: int
    debiased: bool
    rows: Tensor | None = None
    total: float = 0.0


def gram_summary(k: Tensor, *, debiased: bool) -> GramSummary:
    """Prepare a kernel matrix ``k`` (``[n, n]``, symmetric) for CKA."""
    n = k.shape[0]
    k = k.to(torch.float64)
    if debiased:
        if n < 4:
            raise SimilarityError(f"debiased CKA needs at least 4 examples, got {n}")
        kt = k.clone()
        kt.fill_diagonal_(0.0)
        rows = kt.sum(1)
        return GramSummary(kt.reshape(-1), n, True, rows, float(rows.sum()))
    kc = k - k.mean(0, keepdim=True)
    kc = kc - kc.mean(1, keepdim=True)
    return GramSummary(kc.reshape(-1), n, False)


def gram_products(a: Sequence[GramSummary], b: Sequence[GramSummary] | None = None) -> Tensor:
    """Matrix of HSIC values (up to one common factor) between every pair of summaries:
    ``<Kc, Lc>`` (biased) or ``n (n - 3) HSIC_1`` (debiased), one GEMM of the flattened
    matrices. float64 ``[len(a), len(b)]``."""
    b = a if b is None else b
    n = a[0].n
    if any(s.n != n for s in list(a) + list(b)):
        raise SimilarityError("all representations must hold the same examples")
    prod = _stacked_products([s.mat for s in a], None if b is a else [s.mat for s in b])
    if a[0].debiased:
        ra = torch.stack([s.rows for s in a])  # type: ignore[misc]
        rb = ra if b is a else torch.stack([s.rows for s in b])  # type: ignore[misc]
        ta = torch.tensor([s.total for s in a], dtype=torch.float64, device=prod.device)
        tb = torch.tensor([s.total for s in b], dtype=torch.float64, device=prod.device)
        prod = prod + torch.outer(ta, tb) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (ra @ rb.T)
    return prod


def _stacked_products(a: Sequence[Tensor], b: Sequence[Tensor] | None, chunk: int = 1 << 20) -> Tensor:
    """``A @ B.T`` for row vectors given as lists, in float64 column chunks (the stacked
    matrices never exist whole)."""
    length = a[0].numel()
    out = None
    for c0 in range(0, length, chunk):
        ca = torch.stack([v[c0 : c0 + chunk] for v in a]).to(torch.float64)
        cb = ca if b is None else torch.stack([v[c0 : c0 + chunk] for v in b]).to(torch.float64)
        part = ca @ cb.T
        out = part if out is None else out + part
    assert out is not None
    return out


def cka_matrix_from_products(
    cross: Tensor,
    self_a: Tensor,
    self_b: Tensor,
    *,
    what: str = "HSIC",
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> Tensor:
    """``cross[i, j] / sqrt(self_a[i] self_b[j])`` with a clear error for a non-positive
    self term (naming the layer when names are given)."""
    for selfs, names, side in ((self_a, names_a, "a"), (self_b, names_b, "b")):
        bad = (~(selfs > 0)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            label = f"layer {names[i]!r}" if names is not None else f"representation {i} of {side}"
            raise SimilarityError(
                f"{label}: {what} with itself is {float(selfs[i]):.3g}, not positive "
                "(constant features, or too few examples for the unbiased estimator)"
            )
    out = cross / torch.sqrt(torch.outer(self_a, self_b))
    return out.clamp(-1.0, 1.0)


def kernel_cka(k: Tensor, l: Tensor, *, debiased: bool = False) -> float:
    """CKA of two kernel matrices (any kernel)."""
    sa, sb = gram_summary(k, debiased=debiased), gram_summary(l, debiased=debiased)
    p = gram_products([sa, sb])
    return _ratio(float(p[0, 1]), float(p[0, 0]), float(p[1, 1]), "debiased HSIC" if debiased else "HSIC")


def rbf_cka(x: Tensor, y: Tensor, *, sigma: float = 0.8, debiased: bool = False) -> float:
    """RBF CKA (Kornblith et al. 2019) with bandwidth ``sigma`` times the median distance
    (computed separately for x and y).

    On the CPU the whole computation stays in NumPy (one thread pool) and in place: per
    representation one symmetric Gram, turned into squared distances, partitioned once for
    the median and exponentiated in the same ``n x n`` buffer, in the input's precision;
    every sum that decides the value (row means, Frobenius products) is taken in float64.
    Elsewhere torch runs :func:`rbf_gram` and :func:`kernel_cka`."""
    if not sigma > 0:
        raise SimilarityError(f"rbf bandwidth fraction must be positive, got {sigma}")
    x, y = _pair(x, y, min_examples=4 if debiased else MIN_EXAMPLES)
    x, y = _rescaled(x, pow2_scale(x)), _rescaled(y, pow2_scale(y))
    if not _on_numpy(x, y):
        return kernel_cka(rbf_gram(x, sigma=sigma, what="x"), rbf_gram(y, sigma=sigma, what="y"), debiased=debiased)
    n = x.shape[0]
    buf = np.empty((2, n, n), dtype=x.numpy().dtype)
    rows = np.empty((2, n))
    tots = [0.0, 0.0]

    def kernel(i: int, f: Tensor, what: str) -> None:
        k = buf[i]
        _rbf_kernel_into(center(f, what=what).numpy(), k, sigma, what)
        if debiased:
            # HSIC_1 is unchanged by adding a constant to every off-diagonal entry: shift
            # by their mean, so the float64 terms below do not cancel catastrophically
            np.fill_diagonal(k, 0.0)
            k -= k.sum(dtype=np.float64) / (n * (n - 1))
            np.fill_diagonal(k, 0.0)
            rows[i] = k.sum(1, dtype=np.float64)
            tots[i] = float(rows[i].sum())
        else:  # H K H in place, with float64 row means (K is symmetric)
            m = k.sum(1, dtype=np.float64) / n
            k -= m[:, None].astype(k.dtype)
            k -= (m - m.mean()).astype(k.dtype)[None, :]

    # the two kernels side by side, each on one thread (NumPy's elementwise passes are
    # single-threaded, and its symmetric product splits poorly between threads)
    run_side_by_side([lambda: kernel(0, x, "x"), lambda: kernel(1, y, "y")])
    p = _frobenius64(buf)
    if debiased:
        p = p + np.outer(tots, tots) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (rows @ rows.T)
    return _ratio(float(p[0, 1]), float(p[0, 0]), float(p[1, 1]), "debiased HSIC" if debiased else "HSIC")


def _frobenius64(buf: np.ndarray, rows: int = 128) -> np.ndarray:
    """``<buf[i], buf[j]>_F`` for all pairs of the symmetric matrices stacked in ``buf``
    (``[m, n, n]``) from their lower triangles (each row block's part left of the diagonal
    counted twice, its diagonal block once: half the work), with every product and sum in
    float64 (blocks converted as they are read; float32 products over long runs measured
    2e-8 off in CKA, float64 ones 1e-9); the row blocks are tasks for
    :func:`run_side_by_side`."""
    m, n = buf.shape[0], buf.shape[1]

    def part(r0: int) -> np.ndarray:
        r1 = min(n, r0 + rows)
        diag = buf[:, r0:r1, r0:r1].astype(np.float64).reshape(m, -1)
        out = diag @ diag.T
        if r0:
            left = buf[:, r0:r1, :r0].astype(np.float64).reshape(m, -1)
            out += 2.0 * (left @ left.T)
        return out

    return np.sum(run_side_by_side([lambda r0=r0: part(r0) for r0 in range(0, n, rows)[::-1]]), axis=0)


def kth_pair(flat: np.ndarray, k: int, sample: int = 1 << 16) -> tuple[float, float]:
    """The ``k``-th and ``(k+1)``-th smallest values of ``flat`` (0-based), exactly.

    Equal to ``np.partition(flat, (k, k + 1))[[k, k + 1]]``, without copying and partitioning
    all of ``flat`` (an ``n^2`` distance matrix: 0.2 s and a 100 MB copy at ``n = 5,000``):
    a strided sample brackets the two values, one pass counts what lies below the bracket
    and gathers what lies inside it, and only that (about 1% of ``flat``) is partitioned.
    When the sample's bracket misses (at most a few times in a million for unsorted data),
    it falls back to the full partition."""
    size = flat.shape[0]
    if size <= 8 * sample:
        part = np.partition(flat, (k, k + 1))
        return float(part[k]), float(part[k + 1])
    step = size // sample
    sub = np.sort(flat[::step])
    q = k / size
    width = 6.0 * math.sqrt(q * (1 - q) / sub.shape[0]) + 2.0 / sub.shape[0]
    lo = sub[max(0, int((q - width) * sub.shape[0]))]
    hi = sub[min(sub.shape[0] - 1, int((q + width) * sub.shape[0]) + 1)]
    # by chunks of 2^20 values: their masks stay small and reused (fresh 25 MB masks cost
    # seconds of page faults on a loaded machine)
    n_below, parts = 0, []
    for c0 in range(0, size, 1 << 20):
        chunk = flat[c0 : c0 + (1 << 20)]
        below = chunk < lo
        n_below += int(np.count_nonzero(below))
        parts.append(chunk[~below & (chunk <= hi)])
    inside = np.concatenate(parts)
    j = k - n_below
    if 0 <= j and j + 1 < inside.shape[0]:
        part = np.partition(inside, (j, j + 1))
        return float(part[j]), float(part[j + 1])
    part = np.partition(flat, (k, k + 1))
    return float(part[k]), float(part[k + 1])


def _rbf_kernel_into(a: np.ndarray, out: np.ndarray, sigma: float, what: str) -> None:
    """RBF kernel matrix of the centred rows ``a`` written into ``out`` (``[n, n]``)."""
    n = a.shape[0]
    np.matmul(a, a.T, out=out)  # symmetric routine (syrk)
    sq = out.diagonal().copy()
    out *= -2.0
    out += sq[:, None]
    out += sq[None, :]
    np.maximum(out, 0.0, out=out)
    np.fill_diagonal(out, 0.0)
    # the two middle values of the off-diagonal distances; the n zeros of the diagonal sort first
    m = n * (n - 1)
    k = n + m // 2
    lo, hi = kth_pair(out.reshape(-1), k - 1)
    med = 0.5 * (math.sqrt(max(lo, 0.0)) + math.sqrt(max(hi, 0.0)))
    if not med > 0:
        raise SimilarityError(f"{what}: the median distance between examples is 0 (most examples are identical)")
    out *= -1.0 / (2.0 * (sigma * med) ** 2)
    np.exp(out, out=out)


# ----------------------------------------------------------------------------- minibatch HSIC
def hsic1_matrix(grams: Tensor | Sequence[Tensor]) -> Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) between every pair of ``L`` kernel
    matrices of one minibatch: ``grams`` is ``[L, b, b]`` or a list of ``[b, b]`` (any float
    type; b >= 4). Returns float64 ``[L, L]``:

    ``HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1)/((b-1)(b-2)) - 2/(b-2) 1^T K~ L~ 1] / (b (b-3))``

    Computed with torch only (no NumPy round trip: see :class:`~rtk.similarity.MinibatchCKA`
    for why), in float64: one ``[L, b^2]`` by ``[b^2, L]`` product gives every ``tr(K~ L~)``.
    """
    return _hsic1(list(grams))[0]


def _hsic1(mats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`hsic1_matrix` and, per kernel, ``tr(K~ K~) / (b (b - 3))``: the size of the
    terms whose difference the self-HSIC is (the yardstick for "zero up to rounding")."""
    n_layers, b = len(mats), mats[0].shape[0]
    if b < 4:
        raise SimilarityError(f"the unbiased HSIC estimator needs minibatches of at least 4 examples, got {b}")
    kt = torch.empty(n_layers, b, b, dtype=torch.float64, device=mats[0].device)
    for i, m in enumerate(mats):
        kt[i].copy_(m)
    kt.diagonal(dim1=1, dim2=2).zero_()
    flat = kt.view(n_layers, b * b)
    rows = kt.sum(2)  # [L, b]
    return _hsic1_combine(flat @ flat.T, rows, b)


def _hsic1_combine(h: Tensor, rows: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """The unbiased HSIC from ``h = [tr(K~_i K~_j)]`` and the row sums ``K~_i 1`` (float64)."""
    tot = rows.sum(1)  # [L]
    terms = torch.diagonal(h) / (b * (b - 3))
    h += torch.outer(tot, tot) / ((b - 1) * (b - 2))
    h -= (2.0 / (b - 2)) * (rows @ rows.T)
    return h.div_(b * (b - 3)), terms


def hsic1_lower(lower: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_hsic1` of symmetric kernels given by their lower triangles: ``lower`` is
    ``[L, b, b]`` holding each kernel on and below its diagonal (what lies above is
    ignored; ``lower`` is overwritten). The strict lower triangles are taken in float64 and
    ``tr(K~ L~) = 2 <T_K, T_L>`` (``T`` the strict lower triangle, ``K~`` the kernel with a
    zero diagonal)."""
    n_layers, b = lower.shape[0], lower.shape[1]
    if b < 4:
        raise SimilarityError(f"the unbiased HSIC estimator needs minibatches of at least 4 examples, got {b}")
    t = lower.tril_(-1).to(torch.float64)
    flat = t.view(n_layers, b * b)
    h = flat @ flat.T
    h *= 2.0
    rows = t.sum(2) + t.sum(1)  # K~ 1: the row and the column sums of the strict triangle
    return _hsic1_combine(h, rows, b)


# below this many examples per batch, minibatch Grams are computed in float64: float32 ones
# measured off float64 by up to 2.5e-8 in CKA at b = 12, 1.1e-8 at b = 32, 5.2e-9 at b = 64 and
# 1.5e-9 at b = 256 (the worst of 6 seeds, layers of 5 to 1,300 features), even centred exactly
FLOAT64_BATCH = 64


def hsic1_side_by_side(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`_hsic1` of the linear Grams of one minibatch's features (``L`` layers of ``[b, d]``
    CPU arrays, one type) on NumPy: per layer, as a task for :func:`run_side_by_side`, the
    Gram of the features shifted by the mean of a strided sample of
    about 32 rows (HSIC_1 is exactly invariant to shifting the features; the shift only
    brings the float products near the centred ones' precision: without it the bench's
    ReLU features measured 8.5e-9 off float64, with it 2.5e-9) by :func:`_shifted_gram`,
    its strict lower triangle packed into ``b (b - 1) / 2`` float64 values, and the row sums
    of ``K~``; then
    ``tr(K~ L~) = 2 <T_K, T_L>`` (``T`` the strict triangle) for all pairs in one float64
    product of the packed triangles (half the values of the square matrices). Batches of
    fewer than :data:`FLOAT64_BATCH` examples take their products in float64."""
    nl, b = len(feats), feats[0].shape[0]
    if b < 4:
        raise SimilarityError(f"the unbiased HSIC estimator needs minibatches of at least 4 examples, got {b}")
    packed = _scratch("hsic-packed", nl * (b * (b - 1) // 2), np.float64).reshape(nl, -1)
    rows = np.empty((nl, b))
    idx = _strict_lower_positions(b)
    step = max(1, b // 32)

    def layer(l: int) -> None:
        a = feats[l].numpy()
        with np.errstate(**QUIET):
            k = _shifted_gram(a, a[::step].mean(0), dtype=np.float64 if b < FLOAT64_BATCH else None)
            packed[l] = k.reshape(-1)[idx]
            rows[l] = k.sum(1, dtype=np.float64) - k.diagonal()  # K~ 1 (K~: the diagonal set to zero)

    run_side_by_side([lambda l=l: layer(l) for l in sorted(range(nl), key=lambda l: -feats[l].shape[1])])
    with np.errstate(**QUIET):
        h = packed @ packed.T
        h *= 2.0
    return _hsic1_combine(torch.from_numpy(h), torch.from_numpy(rows), b)


_LOWER: dict[int, np.ndarray] = {}


def _strict_lower_positions(b: int) -> np.ndarray:
    """Flat positions, in a C-ordered ``[b, b]`` array, of the strict lower triangle (row by row)."""
    pos = _LOWER.get(b)
    if pos is None:
        i, j = np.tril_indices(b, -1)
        pos = _LOWER[b] = i * b + j
    return pos


def lower_gram_into(x: Tensor, out: Tensor, strips: int = 2) -> Tensor:
    """The lower triangle of ``x @ x.T`` (with the blocks left of the diagonal) written into
    ``out`` (``[b, b]``, ``x``'s type) as column-block strips ``x[i:] @ x[i:j].T``; torch has
    no symmetric product (syrk) of its own. For ``[256, d]`` features, ``d`` 512 to 8,192,
    on one core: 2 strips (3/4 of the flops) took 0.80 of a general product's time, 4
    strips (10/16) 0.74-0.78, NumPy's syrk 0.79. Two strips are the default: every product
    is one more parallel region, and on a loaded machine (or with ``OMP_WAIT_POLICY=PASSIVE``)
    each region waits for its threads (4 strips then measured 2.4x a general product, 2
    strips 1.3-1.5x). What lies above the diagonal blocks is left as it was."""
    b = x.shape[0]
    block = max(64, -(-b // strips))
    for i0 in range(0, b, block):
        i1 = min(i0 + block, b)
        torch.mm(x[i0:], x[i0:i1].T, out=out[i0:, i0:i1])
    return out


def minibatch_cka(x: Tensor, y: Tensor, *, batch_size: int = 256) -> float:
    """Minibatch linear CKA (Nguyen, Raghu, Kornblith 2021): the mean of the unbiased HSIC
    over consecutive minibatches of ``batch_size`` examples, then
    ``mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) mean HSIC_1(L, L))``. A final minibatch
    with fewer than 4 examples is left out."""
    from .streaming import MinibatchCKA

    x, y = _pair(x, y, min_examples=4)
    acc = MinibatchCKA()
    for i0 in range(0, x.shape[0], batch_size):
        if x.shape[0] - i0 < 4:
            break
        acc.update([x[i0 : i0 + batch_size]], [y[i0 : i0 + batch_size]])
    return float(acc.compute()[0, 0])


# ----------------------------------------------------------------------------- CCA family
@dataclass(frozen=True)
class Moments:
    """Centred second moments of a pair of representations, float64: ``cxx = Xc^T Xc``,
    ``cyy``, ``cxy`` and the number of examples ``n``."""

    n: int
    cxx: Tensor
    cyy: Tensor
    cxy: Tensor


def moments(x: Tensor, y: Tensor) -> Moments:
    """Centred cross products of a pair in float64 (the input of every CCA-type metric)."""
    x, y = _pair(x, y, min_examples=2)
    if _on_numpy(x, y):  # side by side on single-threaded BLAS (see run_side_by_side)
        n = x.shape[0]
        (xs, sx), (ys, sy) = run_side_by_side([lambda: _shifted64(x), lambda: _shifted64(y)])
        cxy, cxx, cyy = run_side_by_side(
            [
                lambda: _fold_means(matmul(xs.T, ys), sx, sy, n),
                lambda: _fold_means(self_cross(xs), sx, sx, n),
                lambda: _fold_means(self_cross(ys), sy, sy, n),
            ]
        )
        return Moments(n, cxx, cyy, cxy)
    xc = center(x.to(torch.float64), what="x")
    yc = center(y.to(torch.float64), what="y")
    return Moments(x.shape[0], self_cross(xc), self_cross(yc), matmul(xc.T, yc))


def _shifted64(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` in float64 shifted by the mean of a strided sample of about 256 rows, made in the
    one pass that converts it, and the column sums of the result (what remains of the mean;
    :func:`_fold_means` takes it out of the products). At ``n = 5,000``, ``d = 512`` this
    replaced a conversion and a centring pass (two more array copies) per representation."""
    a = x.numpy()
    with np.errstate(**QUIET):
        c = np.subtract(a, a[:: max(1, a.shape[0] // 256)].mean(0, dtype=np.float64), dtype=np.float64)
    return torch.from_numpy(c), torch.from_numpy(c.sum(0))


def _fold_means(p: Tensor, su: Tensor, sv: Tensor, n: int) -> Tensor:
    """Centred product ``(U - 1 mu^T)^T (V - 1 mv^T) = U^T V - su sv^T / n`` from the product
    of float64 features shifted near their means (``su``, ``sv``: their column sums), in place."""
    p -= torch.outer(su, sv) / n
    return p


def _eigh(c: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh``, through NumPy's LAPACK on the CPU (the products before it ran
    in NumPy's BLAS: one thread pool per computation)."""
    if _on_numpy(c):
        vals, vecs = np.linalg.eigh(c.numpy())
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    return torch.linalg.eigh(c)


def _svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Economy SVD ``a = U S Vh`` (NumPy's LAPACK on the CPU, as :func:`_eigh`)."""
    if _on_numpy(a):
        u, sv, vh = np.linalg.svd(a.numpy(), full_matrices=False)
        return torch.from_numpy(u), torch.from_numpy(sv), torch.from_numpy(vh)
    return torch.linalg.svd(a, full_matrices=False)


def _eig_desc(c: Tensor, what: str, rtol: float) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending, above ``rtol * max``) and eigenvectors of a symmetric PSD matrix."""
    c = 0.5 * (c + c.T)
    vals, vecs = _eigh(c)
    vals, vecs = vals.flip(0), vecs.flip(1)
    top = float(vals[0]) if vals.numel() else 0.0
    if not top > 0:
        raise SimilarityError(f"{what}: every feature is constant across examples")
    keep = vals > rtol * top
    return vals[keep], vecs[:, keep]


def _dims_for(vals: Tensor, variance: float | None, dims: int | None, what: str) -> int:
    r = vals.numel()
    if dims is not None:
        if dims < 1:
            raise SimilarityError(f"dims must be at least 1, got {dims}")
        if dims > r:
            raise SimilarityError(f"{what}: asked for {dims} SVCCA directions, but the representation has rank {r}")
        return dims
    if variance is None:
        return r
    frac = torch.cumsum(vals, 0) / vals.sum()
    return min(int((frac < variance - 1e-12).sum()) + 1, r)


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlations (descending) of two representations, with the PWCCA weights
    of the first representation's canonical variates."""

    rho: Tensor
    weights: Tensor
    dims_x: int
    dims_y: int


def cca(
    m: Moments, *, variance: float | None = None, dims: int | None = None, rtol: float = 1e-10, weights: bool = True
) -> CCAResult:
    """CCA from centred moments. With ``variance`` (a fraction, e.g. 0.99) or ``dims`` each
    representation is first reduced to its top principal directions (SVCCA's SVD step).

    Whitening uses the eigendecomposition of each covariance in float64; directions with
    eigenvalue below ``rtol`` times the largest are dropped (numerical rank). Raises when
    the kept dimensions are too many for the examples (``kx + ky > n - 1``: canonical
    correlations of 1 would then be guaranteed, whatever the data).
    """
    # the two eigendecompositions side by side, each on one thread (on the CPU)
    (lx, vx), (ly, vy) = run_side_by_side([lambda: _eig_desc(m.cxx, "x", rtol), lambda: _eig_desc(m.cyy, "y", rtol)])
    kx = _dims_for(lx, variance, dims, "x")
    ky = _dims_for(ly, variance, dims, "y")
    _check_cca_dims(kx, ky, m.n)
    lx, vx, ly, vy = lx[:kx], vx[:, :kx], ly[:ky], vy[:, :ky]
    wx = vx / lx.sqrt()
    wy = vy / ly.sqrt()
    t = matmul(matmul(wx.T, m.cxy), wy)
    if not weights:  # the correlations alone (SVCCA): singular values only
        rho = _singular_values(t).clamp(0.0, 1.0)
        return CCAResult(rho, torch.ones_like(rho), kx, ky)
    a, rho, _ = _svd(t)
    rho = rho.clamp(0.0, 1.0)
    k = rho.numel()
    # <h_i, x_j> for canonical variate h_i = Xc W_x a_i is (Xc^T Xc W_x a_i)_j = (V_x L_x^{1/2} a_i)_j
    contrib = (vx * lx.sqrt()) @ a[:, :k]
    return CCAResult(rho, contrib.abs().sum(0), kx, ky)


def _singular_values(t: Tensor) -> Tensor:
    """Singular values of ``t`` (descending), on the CPU as the square roots of the eigenvalues
    of the smaller of ``t t^T`` and ``t^T t`` (a symmetric product and a tridiagonal
    reduction: 9.4 ms against 16.4 ms for LAPACK's singular values of a ``457 x 457`` matrix,
    one thread). A squared value carries an absolute error near ``1e-16`` times the largest,
    so values below ``1e-5`` of the largest (error above ``1e-11`` after the root) are taken
    from the singular value decomposition instead."""
    if not _on_numpy(t):
        return torch.linalg.svdvals(t)
    a = t.numpy()
    g = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a  # symmetric routine
    lam = np.linalg.eigvalsh(g)[::-1]
    if lam.size and not lam[-1] > 1e-10 * lam[0]:
        return torch.from_numpy(np.linalg.svd(a, compute_uv=False))
    return torch.from_numpy(np.sqrt(lam))


def _svd_basis(x: Tensor, what: str, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Economy SVD of the centred representation in float64, ``Xc = U S Vh``, truncated to
    its numerical rank (singular values above ``sqrt(rtol)`` times the largest, the same
    cut as :func:`cca`'s eigenvalue cut ``rtol``)."""
    xc = center(x.to(torch.float64), what=what)
    # torch's LAPACK (MKL) measured 2-3x faster than NumPy's for these tall SVDs
    u, sv, vh = torch.linalg.svd(xc, full_matrices=False)
    if not (sv.numel() and float(sv[0]) > 0):
        raise SimilarityError(f"{what}: every feature is constant across examples")
    keep = sv > math.sqrt(rtol) * sv[0]
    return u[:, keep], sv[keep], vh[keep]


def cca_data(
    x: Tensor, y: Tensor, *, variance: float | None = None, dims: int | None = None, rtol: float = 1e-10
) -> CCAResult:
    """CCA (and SVCCA's reduction) from the data by SVD: the orthonormal bases ``U`` of the
    centred representations make the canonical correlations the singular values of
    ``Ux^T Uy``. Equal to :func:`cca` on the moments, and cheaper when features outnumber
    examples (no ``d x d`` eigendecomposition)."""
    x, y = _pair(x, y, min_examples=2)
    ux, sx, vhx = _svd_basis(x, "x", rtol)
    uy, sy, _ = _svd_basis(y, "y", rtol)
    kx = _dims_for(sx.square(), variance, dims, "x")
    ky = _dims_for(sy.square(), variance, dims, "y")
    _check_cca_dims(kx, ky, x.shape[0])
    a, rho, _ = _svd(matmul(ux[:, :kx].T, uy[:, :ky]))
    k = rho.numel()
    # <h_i, x_j> for canonical variate h_i = Ux a_i is (Vx Sx a_i)_j
    contrib = (vhx[:kx].T * sx[:kx]) @ a[:, :k]
    return CCAResult(rho.clamp(0.0, 1.0), contrib.abs().sum(0), kx, ky)


def _check_cca_dims(kx: int, ky: int, n: int) -> None:
    if kx + ky > n - 1:
        raise SimilarityError(
            f"CCA with {kx} + {ky} dimensions needs more than {kx + ky} examples, got {n} "
            "(canonical correlations would be 1 whatever the data); use more examples, fewer dims "
            "(SVCCA dims/variance) or pool the features"
        )


def svcca(x: Tensor, y: Tensor, *, variance: float | None = 0.99, dims: int | None = None) -> float:
    """SVCCA (Raghu et al. 2017): keep the top principal directions of each representation
    (enough to explain ``variance`` of it, or exactly ``dims``), then the mean canonical
    correlation.

    With at least as many examples as the wider representation has features, from the
    float64 covariances (``d x d`` products and eigendecompositions: :func:`cca`; at
    ``n = 5,000``, ``d = 2,048`` the SVD route took minutes); otherwise from the SVDs of the
    data (:func:`cca_data`), which never forms a ``d x d`` matrix."""
    xf, yf = as_features(x, what="x", check_finite=False), as_features(y, what="y", check_finite=False)
    opts = {"variance": None if dims is not None else variance, "dims": dims}
    if xf.shape[0] >= max(xf.shape[1], yf.shape[1]):
        res = cca(moments(x, y), weights=False, **opts)
    else:
        res = cca_data(x, y, **opts)
    return float(res.rho.mean())


def svcca_from_moments(m: Moments, *, variance: float | None = 0.99, dims: int | None = None) -> float:
    res = cca(m, variance=None if dims is not None else variance, dims=dims, weights=False)
    return float(res.rho.mean())


def pwcca(x: Tensor, y: Tensor) -> float:
    """PWCCA (Morcos et al. 2018): the mean of the canonical correlations weighted by how
    much of ``x`` each canonical variate accounts for, ``a_i = sum_j |<h_i, x_j>|``
    (``h_i`` the i-th canonical variate of x, ``x_j`` the j-th neuron). Not symmetric."""
    return _pwcca(cca_data(x, y))


def pwcca_from_moments(m: Moments) -> float:
    return _pwcca(cca(m))


def _pwcca(res: CCAResult) -> float:
    w = res.weights
    total = float(w.sum())
    if not total > 0:
        raise SimilarityError("PWCCA weights are all zero")
    return float((w * res.rho).sum() / total)


def procrustes_distance(x: Tensor, y: Tensor) -> float:
    """Orthogonal Procrustes distance (Ding et al. 2021):
    ``min_R ||X^ - Y^ R||_F^2 = 2 - 2 ||X^^T Y^||_*`` for centred representations scaled to
    unit Frobenius norm (``R`` orthogonal; the smaller one is zero-padded). 0 for identical
    representations up to rotation and scale, at most 2."""
    x, y = _pair(x, y, min_examples=MIN_EXAMPLES)
    ux, sx, _ = _svd_basis(x, "x", 1e-20)
    uy, sy, _ = _svd_basis(y, "y", 1e-20)
    # ||Xc^T Yc||_* = ||Sx Ux^T Uy Sy||_* (the right singular bases are orthogonal)
    nuc = float(torch.linalg.svdvals((sx[:, None] * (ux.T @ uy)) * sy[None, :]).sum())
    return max(0.0, 2.0 - 2.0 * nuc / math.sqrt(float(sx.square().sum()) * float(sy.square().sum())))


def procrustes_from_moments(m: Moments) -> float:
    if m.n < MIN_EXAMPLES:
        raise SimilarityError(f"needs at least {MIN_EXAMPLES} examples, got {m.n} ({_TOO_FEW})")
    nx = float(torch.trace(m.cxx))
    ny = float(torch.trace(m.cyy))
    if not (nx > 0 and ny > 0):
        raise SimilarityError("every feature is constant across examples")
    nuc = float(torch.linalg.svdvals(m.cxy).sum())
    return max(0.0, 2.0 - 2.0 * nuc / math.sqrt(nx * ny))


__all__ = [
    "SimilarityError",
    "as_features",
    "center",
    "gram",
    "self_cross",
    "LinearStats",
    "linear_stats",
    "cka_from_stats",
    "hsic1_from_stats",
    "linear_cka",
    "linear_cka_matrix",
    "rbf_gram",
    "sq_distances",
    "GramSummary",
    "gram_summary",
    "gram_products",
    "cka_matrix_from_products",
    "kernel_cka",
    "rbf_cka",
    "hsic1_matrix",
    "minibatch_cka",
    "Moments",
    "moments",
    "CCAResult",
    "cca",
    "cca_data",
    "svcca",
    "svcca_from_moments",
    "pwcca",
    "pwcca_from_moments",
    "procrustes_distance",
    "procrustes_from_moments",
]
