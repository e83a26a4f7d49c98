"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` is certified by
CERTIFY: ``n0`` noisy samples select the top class ``c_A``; ``n`` fresh samples count how
often ``f`` returns it (``n_A``); the one-sided Clopper-Pearson lower bound ``p_A`` of its
probability at level ``alpha`` gives, when ``p_A > 1/2``, the certified L2 radius
``sigma * Phi^-1(p_A)``; otherwise the certifier abstains. With probability at least
``1 - alpha`` over the sampling, every non-abstaining answer is correct for ``g``.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

import torch
from torch import nn

from ..errors import RtkError
from .core import CertificationResult, eval_mode


def _binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (log-space sum in float64)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = torch.arange(k, n + 1, dtype=torch.float64)
    n_t = torch.tensor(float(n), dtype=torch.float64)
    logpmf = (
        torch.lgamma(n_t + 1)
        - torch.lgamma(i + 1)
        - torch.lgamma(n_t - i + 1)
        + i * math.log(p)
        + (n_t - i) * math.log1p(-p)
    )
    return float(torch.logsumexp(logpmf, 0).exp())


def clopper_pearson_lower_bisect(k: int, n: int, alpha: float, *, iters: int = 200) -> float:
    """The one-sided Clopper-Pearson lower bound by bisection: the ``p`` with
    ``P(X >= k | n, p) = alpha`` (the tail grows with ``p``). No SciPy needed."""
    if k <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if _binomial_upper_tail(k, n, mid) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return lo  # the side whose tail is below alpha: never above the exact bound


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` lower confidence bound of a binomial proportion ``k / n``:
    the ``alpha`` quantile of Beta(k, n - k + 1) (SciPy when installed, else bisection)."""
    if not 0 <= k <= n or n <= 0:
        raise RtkError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise RtkError(f"alpha must be in (0, 1), got {alpha}")
    if k == 0:
        return 0.0
    try:
        from scipy.stats import beta
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return clopper_pearson_lower_bisect(k, n, alpha)
    return float(beta.ppf(alpha, k, n - k + 1))


#: Noise copies drawn from one generator; copy ``j`` of an example is row ``j % CHUNK`` of chunk ``j // CHUNK``.
CHUNK = 64


def _mix(key: int, counter: int) -> int:
    """A 63-bit seed from a key and a counter (sha256, so nearby counters give unrelated seeds)."""
    digest = hashlib.sha256(f"{key}:{counter}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _noise(key: int, start: int, count: int, x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of copies ``start .. start + count - 1`` of example ``x``."""
    parts = []
    for k in range(start // CHUNK, (start + count - 1) // CHUNK + 1):
        gen = torch.Generator(device=x.device).manual_seed(_mix(key, k))
        chunk = torch.randn((CHUNK, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
        lo, hi = max(start, k * CHUNK) - k * CHUNK, min(start + count, (k + 1) * CHUNK) - k * CHUNK
        parts.append(chunk[lo:hi])
    return torch.cat(parts)


class SmoothingCertifier:
    """Certified L2 radius of the Gaussian-smoothed classifier, per example (Cohen et al.).

    ``sigma``: noise level (in [0, 1] pixel units); ``n0`` selection and ``n`` estimation
    samples; ``alpha`` the failure probability; ``batch_size`` noisy copies per forward;
    ``seed`` makes the noise reproducible.
    """

    norm = "L2"
    eps_independent = True

    def __init__(
        self,
        sigma: float = 0.25,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        *,
        batch_size: int = 1000,
        seed: int = 0,
        name: str = "smoothing",
    ) -> None:
        if sigma <= 0:
            raise RtkError(f"sigma must be positive, got {sigma}")
        self.sigma, self.n0, self.n, self.alpha = float(sigma), int(n0), int(n), float(alpha)
        self.batch_size, self.seed, self.name = int(batch_size), int(seed), name

    def counts(self, model: nn.Module, x: torch.Tensor, num: int, key: int) -> torch.Tensor:
        """How often ``model`` predicts each class on ``num`` noisy copies of one example ``x``.

        Copy ``j``'s noise depends only on ``key`` and ``j`` (counter-based: chunk ``j // CHUNK``
        has its own generator), never on ``batch_size`` or on the other examples of a call."""
        preds = []
        start = 0
        while start < num:
            b = min(self.batch_size, num - start)
            noise = _noise(key, start, b, x) * self.sigma
            preds.append(model(x.unsqueeze(0) + noise).argmax(1))
            start += b
        return torch.bincount(torch.cat(preds)).cpu() if preds else torch.zeros(1, dtype=torch.long)

    def example_key(self, x: torch.Tensor) -> int:
        """The noise key of one example: its seed mixed with the example's own values."""
        h = hashlib.sha256(str(self.seed).encode())
        h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return int.from_bytes(h.digest()[:8], "little") >> 1

    def certify_one(self, model: nn.Module, x: torch.Tensor) -> tuple[int, float, bool, int, float]:
        """``(prediction, radius, abstain, n_A, p_A)`` for one example."""
        key = self.example_key(x)
        c0 = self.counts(model, x, self.n0, _mix(key, 0))
        top = int(c0.argmax())
        c = self.counts(model, x, self.n, _mix(key, 1))
        n_a = int(c[top]) if top < len(c) else 0
        p_a = clopper_pearson_lower(n_a, self.n, self.alpha)
        if p_a <= 0.5:
            return -1, 0.0, True, n_a, p_a
        return top, self.sigma * NormalDist().inv_cdf(p_a), False, n_a, p_a

    def certify(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | None = None
    ) -> list[CertificationResult]:
        eps = 0.0 if eps is None else float(eps)
        results = []
        with eval_mode(model), torch.no_grad():
            for xi, yi in zip(x, y.tolist()):
                pred, radius, abstain, _, _ = self.certify_one(model, xi)
                correct = not abstain and pred == yi
                results.append(
                    CertificationResult(
                        yi, pred, correct, correct and radius >= eps, eps, radius, "L2", abstain, math.nan, True
                    )
                )
        return results
