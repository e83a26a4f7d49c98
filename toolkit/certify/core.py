"""The certifier protocol, per-example results, and helpers that run a certifier over a split.

A certifier (built by a :class:`rtk.CertifierSpec`) has

- ``name`` (str), ``norm`` ("Linf" or "L2"),
- ``eps_independent`` (bool): True when one call yields a radius valid for every eps
  (randomized smoothing); False when verification is decided at a given eps (IBP, CROWN),
- ``certify(model, x, y, *, eps=None) -> list[CertificationResult]``: one result per
  example of the batch ``x`` (in [0, 1], on the model's device) with labels ``y``;
  ``eps=None`` uses the certifier's own option.

Verified robust accuracy is the share of examples whose result has ``verified=True``;
:func:`verified_accuracy` computes it over a split (what a pruning stage needs), and
:func:`certify_split` returns one row per example and eps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn

from ..data.core import batches, subset
from ..errors import RtkError
from ..runtime import progress as _progress
from .bounds import METHODS, margin_lower_bounds
from .graph import bound_graph, check_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificationResult:
    """The certificate of one example.

    - ``prediction``: the clean prediction (bound certifiers) or the smoothed classifier's
      prediction (smoothing; -1 when it abstains).
    - ``correct``: the prediction equals the label (False when abstaining).
    - ``verified``: correct and provably constant within radius ``eps`` (in ``norm``).
    - ``radius``: the radius proved. For a radius certificate (``radius_certificate=True``,
      randomized smoothing) it is the certified radius itself, valid for every eps (0 when
      abstaining); for bound certifiers it is ``eps`` when verified, else 0.
    - ``margin_lower``: the lower bound of the smallest margin ``logit_y - logit_j`` over the
      ball (bound certifiers; NaN for smoothing).
    """

    label: int
    prediction: int
    correct: bool
    verified: bool
    eps: float
    radius: float
    norm: str = "Linf"
    abstain: bool = False
    margin_lower: float = math.nan
    radius_certificate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verified_at(self, eps: float) -> bool:
        """Verified at another radius. A radius certificate answers for every eps; a bound
        certificate at ``self.eps`` answers for ``eps == self.eps`` and, when verified, for
        every smaller eps."""
        if self.radius_certificate:
            return self.correct and not self.abstain and self.radius >= eps
        if eps == self.eps or (eps < self.eps and self.verified):
            return self.verified
        raise RtkError(
            f"a certificate at eps={self.eps} (verified={self.verified}) says nothing about eps={eps}; "
            "certify again at that eps"
        )


@runtime_checkable
class Certifier(Protocol):
    name: str
    norm: str
    eps_independent: bool

    def certify(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | None = None
    ) -> list[CertificationResult]: ...


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block and restore each one's flag after."""
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in states:
            m.train(t)


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class BoundCertifier:
    """Verification by bound propagation at an L-inf radius ``eps`` (box intersected with
    [0, 1]): IBP, CROWN or CROWN-IBP. An example is verified when it is classified
    correctly and the lower bound of ``logit_y - logit_j`` is positive for every ``j != y``.
    """

    norm = "Linf"
    eps_independent = False

    def __init__(
        self,
        method: str = "crown",
        eps: float = 2 / 255,
        *,
        batch_size: int = 64,
        spec_chunk: int = 256,
        intersect_ibp: bool = True,
        dtype: str = "float32",
        clip: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        if method not in METHODS:
            raise RtkError(f"unknown bound method {method!r}; allowed: {', '.join(METHODS)}")
        if dtype not in _DTYPES:
            raise RtkError(f"unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
        self.name = method
        self.method = method
        self.eps = float(eps)
        self.batch_size = int(batch_size)
        self.spec_chunk = int(spec_chunk)
        self.intersect_ibp = intersect_ibp
        self.dtype = _DTYPES[dtype]
        self.clip = clip

    def margins(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Lower bounds (B,) of the smallest margin over the ball (model in eval mode)."""
        eps = self.eps if eps is None else float(eps)
        out = []
        with eval_mode(model), torch.no_grad():
            graph = bound_graph(model, x)
            for start in range(0, len(x), self.batch_size):
                xb, yb = x[start : start + self.batch_size], y[start : start + self.batch_size]
                low = margin_lower_bounds(
                    model,
                    xb,
                    yb,
                    eps,
                    method=self.method,
                    clip=self.clip,
                    graph=graph,
                    spec_chunk=self.spec_chunk,
                    intersect_ibp=self.intersect_ibp,
                    dtype=self.dtype,
                )
                out.append(low.min(1).values.to(torch.float32))
        return torch.cat(out) if out else torch.zeros(0)

    def certify(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | None = None
    ) -> list[CertificationResult]:
        eps = self.eps if eps is None else float(eps)
        if len(x) == 0:
            return []
        with eval_mode(model), torch.no_grad():
            check_graph(bound_graph(model, x), model, x[: min(len(x), 16)])
            pred = torch.cat([model(x[i : i + self.batch_size]).argmax(1) for i in range(0, len(x), self.batch_size)])
        low = self.margins(model, x, y, eps)
        results = []
        for lab, p, m in zip(y.tolist(), pred.tolist(), low.tolist()):
            ok = p == lab
            verified = ok and m > 0
            results.append(CertificationResult(lab, p, ok, verified, eps, eps if verified else 0.0, "Linf", False, m))
        return results


# ---------------------------------------------------------------------------- over a split
def certify_split(
    certifier: Certifier,
    model: nn.Module,
    split,
    *,
    eps: Sequence[float] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """One row per example and eps: index, label, prediction, correct, verified, eps,
    radius, abstain, margin_lower, seconds (time for that eps, or for the one call of an
    eps-independent certifier)."""
    part = subset(split, limit, seed)
    eps_list = [None] if not eps else [float(e) for e in eps]
    rows: list[dict[str, Any]] = []
    model = model.to(device)
    if certifier.eps_independent:
        t0 = time.perf_counter()
        results = _run(certifier, model, part, batch_size, device, eps=0.0)
        secs = time.perf_counter() - t0
        for e in eps_list:
            e = 0.0 if e is None else e
            for i, r in enumerate(results):
                rows.append({"index": i, **r.to_dict(), "eps": e, "verified": r.verified_at(e), "seconds": secs})
    else:
        for e in eps_list:
            t0 = time.perf_counter()
            results = _run(certifier, model, part, batch_size, device, eps=e)
            secs = time.perf_counter() - t0
            for i, r in enumerate(results):
                rows.append({"index": i, **r.to_dict(), "seconds": secs})
    return pd.DataFrame(rows)


def _run(
    certifier: Certifier, model: nn.Module, split, batch_size: int, device, eps: float | None
) -> list[CertificationResult]:
    out: list[CertificationResult] = []
    n = len(split)
    for x, y in _progress(
        batches(split, batch_size, device=device), total=-(-n // batch_size), desc=f"certify {certifier.name}"
    ):
        out.extend(certifier.certify(model, x, y, eps=eps))
    return out


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per eps: n, clean (certifier's) accuracy, verified accuracy, abstention rate, seconds."""
    if rows.empty:
        return pd.DataFrame(columns=["eps", "n", "accuracy", "verified_accuracy", "abstain_rate", "seconds"])
    g = rows.groupby("eps", sort=True)
    return pd.DataFrame(
        {
            "n": g.size(),
            "accuracy": g["correct"].mean(),
            "verified_accuracy": g["verified"].mean(),
            "abstain_rate": g["abstain"].mean(),
            "seconds": g["seconds"].first(),
        }
    ).reset_index()


def verified_accuracy(
    certifier: Certifier,
    model: nn.Module,
    split,
    eps: float | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """The share of (a fixed subset of) ``split`` verified at ``eps``."""
    rows = certify_split(
        certifier,
        model,
        split,
        eps=None if eps is None else [eps],
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    return float(rows["verified"].mean()) if len(rows) else 0.0


def radius_curve(rows: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """Certified accuracy at each radius: the share of examples correct, not abstaining and
    with certified radius >= r (one call's rows of an eps-independent certifier)."""
    per_example = rows.drop_duplicates("index")
    ok = per_example["correct"] & ~per_example["abstain"]
    n = max(len(per_example), 1)
    return pd.DataFrame(
        {
            "radius": list(radii),
            "certified_accuracy": [float((ok & (per_example["radius"] >= r)).sum()) / n for r in radii],
        }
    )
