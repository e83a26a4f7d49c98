"""Training objectives: what the shared loop minimises on one batch.

An objective is a callable ``objective(model, x, y, *, progress) -> ObjectiveOutput``.
``progress`` is the fraction of training done, in [0, 1]; the loop passes a
:class:`Progress`, a float that also knows the epoch and step, so schedules (the eps ramp
here, a kappa schedule for CROWN-IBP elsewhere) can be written in epochs.

Adversarial objectives expose ``eps`` (the target radius), ``norm`` and ``eps_at(progress)``
so the loop can record the current radius and evaluate at the target one.

- :class:`StandardObjective`: cross-entropy on clean inputs.
- :class:`PGDATObjective`: Madry et al. (2018), cross-entropy on PGD examples.
- :class:`TRADESObjective`: Zhang et al. (2019), CE(clean) + beta * KL(clean || adversarial).
- :class:`MARTObjective`: Wang et al. (2020), boosted CE on adversarial examples +
  beta * KL weighted by (1 - p_y(clean)), which emphasises misclassified examples.
- :class:`FastATObjective`: Wong, Rice & Kolter (2020), one FGSM step from a uniform random
  start with step 1.25 * eps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import unwrap
from ..options import Span, run_epochs
from .attacks import Init, Norm, bn_mode, ce_sum, default_alpha, perturb


@dataclass
class ObjectiveOutput:
    """``loss`` to minimise; ``logits`` on clean inputs (or None when the objective does not
    compute them); ``adv_logits`` on the perturbed inputs the objective trained on."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    adv_logits: torch.Tensor | None = None


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        """``progress`` is the fraction of training done, in [0, 1] (for eps ramps)."""
        ...


class Progress(float):
    """The fraction of training done (a float in [0, 1]) that also carries the position in
    steps and epochs: ``step``, ``total_steps``, ``steps_per_epoch``, ``epoch`` (epochs
    completed, fractional: 2.5 is half-way through the third epoch) and ``epochs``."""

    step: int
    total_steps: int
    steps_per_epoch: int

    def __new__(cls, step: int, total_steps: int, steps_per_epoch: int) -> Progress:  # noqa: PYI034
        total_steps = max(int(total_steps), 1)
        obj = super().__new__(cls, min(max(step / total_steps, 0.0), 1.0))
        obj.step = int(step)
        obj.total_steps = total_steps
        obj.steps_per_epoch = max(int(steps_per_epoch), 1)
        return obj

    @classmethod
    def at_epoch(cls, epoch: float, epochs: float, steps_per_epoch: int = 1000) -> Progress:
        """The position after ``epoch`` of ``epochs`` epochs (for calling objectives by hand)."""
        return cls(round(epoch * steps_per_epoch), round(epochs * steps_per_epoch), steps_per_epoch)

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def __repr__(self) -> str:
        return f"Progress({float(self):.4f}, step={self.step}/{self.total_steps}, epoch={self.epoch:.3f})"


@dataclass(frozen=True)
class EpsSchedule:
    """The training radius over time: 0 during the ``warmup``, then a linear ramp over ``ramp``
    up to ``eps``, then ``eps``. Each is a :class:`rtk.Span` (epochs, or a share of the run) or
    a number of epochs. Without warm-up and ramp it is constant."""

    eps: float
    warmup: float | Span = 0.0
    ramp: float | Span = 0.0

    @property
    def constant(self) -> bool:
        return Span.parse(self.warmup).value <= 0 and Span.parse(self.ramp).value <= 0

    def end(self, epochs: float) -> float:
        """The epoch at which the target radius is reached, in a run of ``epochs`` epochs."""
        return Span.parse(self.warmup).epochs(epochs) + Span.parse(self.ramp).epochs(epochs)

    def __call__(self, progress: float) -> float:
        if self.constant:
            return self.eps
        total, epoch = run_epochs(progress), progress.epoch  # type: ignore[attr-defined]
        warmup, ramp = Span.parse(self.warmup).epochs(total), Span.parse(self.ramp).epochs(total)
        if epoch < warmup:
            return 0.0
        if ramp > 0:
            return self.eps * min(1.0, (epoch - warmup) / ramp)
        return self.eps


@dataclass(frozen=True)
class StandardObjective:
    """Cross-entropy on clean inputs."""

    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits)


@dataclass(frozen=True)
class AdversarialObjective:
    """Shared fields of the adversarial objectives.

    ``alpha`` is the step size at the target radius (it scales with eps during a ramp);
    ``None`` picks the objective's default. ``attack_bn="eval"`` runs the inner attack with
    the model in eval mode (batch norm uses running statistics and is not updated), as in
    the TRADES and MART code; ``"train"`` leaves the model in train mode, as in Madry's and
    Wong/Rice's code.
    """

    eps: float
    steps: int = 10
    alpha: float | None = None
    norm: Norm = "Linf"
    attack_bn: Literal["eval", "train"] = "eval"
    eps_warmup: float | Span = 0.0
    eps_ramp: float | Span = 0.0

    @property
    def schedule(self) -> EpsSchedule:
        return EpsSchedule(self.eps, self.eps_warmup, self.eps_ramp)

    @property
    def step_size(self) -> float:
        """The step size at the target radius."""
        return self.alpha if self.alpha is not None else default_alpha(self.eps, self.steps)

    def eps_at(self, progress: float) -> float:
        """The training radius at ``progress``."""
        return self.schedule(progress)

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, init: Init, loss_fn=ce_sum
    ) -> torch.Tensor:
        alpha = self.step_size * (eps / self.eps) if self.eps > 0 else 0.0
        model = unwrap(model)
        with bn_mode(model, self.attack_bn):
            return perturb(
                model, x, y, eps=eps, alpha=alpha, steps=self.steps, norm=self.norm, init=init, loss_fn=loss_fn
            )


@dataclass(frozen=True)
class PGDATObjective(AdversarialObjective):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples."""

    random_start: bool = True

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        eps = self.eps_at(progress)
        x_adv = self._attack(model, x, y, eps, init="uniform" if self.random_start else "zero")
        adv_logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(adv_logits, y), None, adv_logits)


def _kl_to_clean(clean_probs: torch.Tensor):
    def loss(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=1), clean_probs, reduction="sum")

    return loss


@dataclass(frozen=True)
class TRADESObjective(AdversarialObjective):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')), where x' maximises
    the KL term from a small Gaussian start (its official code). ``beta`` trades clean
    accuracy (small) for robustness (large); HYDRA and the TRADES paper use 6."""

    beta: float = 6.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        eps = self.eps_at(progress)
        if eps > 0:
            bare = unwrap(model)
            with torch.no_grad(), bn_mode(bare, self.attack_bn):
                clean_probs = F.softmax(bare(x).float(), dim=1)
            x_adv = self._attack(model, x, y, eps, init="normal", loss_fn=_kl_to_clean(clean_probs))
        else:
            x_adv = x
        logits = model(x)
        adv_logits = model(x_adv) if eps > 0 else logits
        natural = F.cross_entropy(logits, y)
        robust = F.kl_div(
            F.log_softmax(adv_logits.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
        )
        return ObjectiveOutput(natural + self.beta * robust, logits, adv_logits)


@dataclass(frozen=True)
class MARTObjective(AdversarialObjective):
    """MART (Wang et al. 2020): boosted cross-entropy on PGD examples,
    BCE = CE(f(x'), y) - log(1 - max_{k != y} p_k(x')), plus
    beta * KL(p(x) || p(x')) weighted per example by (1 - p_y(x)), so examples the model
    misclassifies count more. The attack maximises CE from a small Gaussian start."""

    beta: float = 6.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        eps = self.eps_at(progress)
        x_adv = self._attack(model, x, y, eps, init="normal")
        logits = model(x)
        adv_logits = model(x_adv)
        adv_probs = F.softmax(adv_logits.float(), dim=1)
        # the most likely wrong class under attack
        others = adv_probs.masked_fill(F.one_hot(y, adv_probs.shape[1]).bool(), -1.0)
        runner_up = others.argmax(dim=1)
        p_wrong = adv_probs.gather(1, runner_up[:, None]).squeeze(1)
        boosted_ce = F.cross_entropy(adv_logits.float(), y) - torch.log((1.0 - p_wrong).clamp_min(1e-12)).mean()
        clean_probs = F.softmax(logits.float(), dim=1)
        p_true = clean_probs.gather(1, y[:, None]).squeeze(1)
        kl = (clean_probs * (torch.log(clean_probs.clamp_min(1e-12)) - torch.log(adv_probs.clamp_min(1e-12)))).sum(1)
        loss = boosted_ce + self.beta * (kl * (1.0 - p_true)).mean()
        return ObjectiveOutput(loss, logits, adv_logits)


@dataclass(frozen=True)
class FastATObjective(AdversarialObjective):
    """Fast adversarial training (Wong, Rice & Kolter 2020): one FGSM step of size ``alpha``
    (default 1.25 * eps) from a uniform random start in the eps-ball, then cross-entropy
    on the result. Prone to catastrophic overfitting with a large step or long training:
    track the robust test accuracy and stop early (``patience``)."""

    steps: int = 1

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 1.25 * self.eps

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: float) -> ObjectiveOutput:
        eps = self.eps_at(progress)
        x_adv = self._attack(model, x, y, eps, init="uniform")
        adv_logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(adv_logits, y), None, adv_logits)
