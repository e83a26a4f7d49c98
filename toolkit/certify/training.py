"""Certified training objectives for the shared training loop.

- :class:`CertifiedObjective` with ``method="ibp"``: Gowal et al. (2018),
  ``kappa * CE(f(x), y) + (1 - kappa) * CE(-underline{m}(x, eps), y)`` where
  ``underline{m}_j`` is the IBP lower bound of the margin ``logit_y - logit_j`` (so
  ``-underline{m}`` are the worst-case logits, with 0 for the true class).
- ``method="crown-ibp"``: Zhang et al. (2020), the same loss with the margin bound
  ``beta * CROWN-IBP + (1 - beta) * IBP``, ``beta`` going from ``beta_start`` to ``beta_end``.
- :class:`GaussianNoiseObjective`: cross-entropy under Gaussian noise, the training that
  makes randomized smoothing certify large radii (Cohen et al. 2019).

Schedules follow ``progress`` (the fraction of training done): ``eps`` is 0 during the
first ``warmup`` of training, then grows linearly over the next ``ramp``, and stays at its
target; ``kappa`` and ``beta`` move from their start to their end values along the same
ramp. Objectives expose ``eps``, ``norm`` and ``eps_at(progress)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..options import Span, run_epochs
from ..training.objectives import ObjectiveOutput
from .bounds import interval_pass, linf_box, margin_spec, spec_lower_crown, spec_lower_ibp
from .graph import bound_graph, check_graph
from .ops import Pass


@dataclass(frozen=True)
class Ramp:
    """0 before ``warmup``, linear from 0 to 1 over ``ramp``, then 1. A number is a fraction of
    training; a :class:`rtk.Span` may also be in epochs (then ``progress`` must be an
    :class:`rtk.training.Progress`, which knows the run's length)."""

    warmup: float | Span = 0.1
    ramp: float | Span = 0.4

    def _share(self, value: float | Span, progress: float) -> float:
        if not isinstance(value, Span):
            return float(value)
        if value.share:
            return value.value
        return value.fraction(run_epochs(progress))

    def __call__(self, progress: float) -> float:
        warmup, ramp = self._share(self.warmup, progress), self._share(self.ramp, progress)
        t = float(progress) - warmup
        if t < 0:
            return 0.0
        if ramp <= 0:
            return 1.0
        return min(1.0, t / ramp)


@dataclass
class CertifiedObjective:
    """IBP or CROWN-IBP certified training (see the module docstring)."""

    eps: float
    method: str = "ibp"
    schedule: Ramp = Ramp()
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0
    clip: tuple[float, float] | None = (0.0, 1.0)
    norm: str = "Linf"

    def __post_init__(self) -> None:
        if self.method not in ("ibp", "crown-ibp"):
            raise ConfigError(f"certified training method {self.method!r} is unknown; allowed: ibp, crown-ibp")
        self._checked: set[int] = set()

    def eps_at(self, progress: float) -> float:
        return self.eps * self.schedule(progress)

    def kappa_at(self, progress: float) -> float:
        f = self.schedule(progress)
        return self.kappa_start + (self.kappa_end - self.kappa_start) * f

    def beta_at(self, progress: float) -> float:
        f = self.schedule(progress)
        return self.beta_start + (self.beta_end - self.beta_start) * f

    def robust_logits(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float
    ) -> torch.Tensor:
        """Worst-case logits ``-underline{m}`` (B, K); the true class's entry is 0."""
        graph = bound_graph(model, x)
        if id(graph) not in self._checked:
            with torch.no_grad():
                states = [(m, m.training) for m in model.modules()]
                model.eval()
                try:
                    check_graph(graph, model, x[:8])
                finally:
                    for m, t in states:
                        m.train(t)
            self._checked.add(id(graph))
        p = Pass(x.dtype, training=model.training)
        box = linf_box(x, eps, self.clip)
        bounds = interval_pass(graph, box, p)
        C = margin_spec(y, graph.output.numel, x.dtype)
        low = spec_lower_ibp(graph, C, bounds, p)
        if self.method == "crown-ibp" and beta > 0:
            low = beta * spec_lower_crown(graph, C, bounds, p) + (1 - beta) * low
        return -low

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        kappa = self.kappa_at(progress)
        if kappa >= 1.0:
            return ObjectiveOutput(clean, logits)
        z = self.robust_logits(model, x, y, self.eps_at(progress), self.beta_at(progress))
        robust = F.cross_entropy(z, y)
        return ObjectiveOutput(kappa * clean + (1 - kappa) * robust, logits)


@dataclass
class GaussianNoiseObjective:
    """Cross-entropy on ``x + N(0, sigma^2 I)`` (not clipped, as in Cohen et al.)."""

    sigma: float = 0.25
    norm: str = "L2"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        noisy = x + torch.randn_like(x) * self.sigma
        logits = model(noisy)
        return ObjectiveOutput(F.cross_entropy(logits, y), None, logits)
