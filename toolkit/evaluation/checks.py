"""Sanity checks that catch an evaluation's own false robustness.

Every evaluation runs them (unless turned off) and reports each as pass, fail or skipped
(with the reason). A failure warns (:class:`SanityCheckWarning`); ``strict`` makes it fatal
(:class:`SanityCheckError`). Three groups:

reproducibility
    ``eval_mode``, ``model_state_unchanged``, ``inputs_in_range``, ``outputs_are_logits``,
    ``deterministic``, ``batch_independent``
correctness of the adversarial examples
    ``perturbation_bounds``, ``robust_le_clean``, ``rescore_reproduces``
gradient masking (on a small subset of the examples)
    ``zero_gradients``, ``more_steps``, ``unbounded_eps``, ``random_noise``, ``black_box``

The checks' cost is counted in work, not time: examples x forward/backward passes, counted
by :class:`~rtk.evaluation.adapters.ModelView`. They run on the first examples of the
evaluation, as many (at most ``examples``, at least ``min_examples``) as fit in ``budget`` of
the evaluation's own work. Re-running the suite's attack with twice its effort
(``more_steps``) is the one check whose cost grows with the suite's; it is skipped, saying
so, when its work does not fit in what is left of the budget. Everything is decided by
counts and seeds, so one seed gives the same checks, whatever the machine's load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import RtkError
from .request import CheckSettings
from .units import AttackUnit, delta_norms, within


class SanityCheckWarning(UserWarning):
    """A sanity check of an evaluation failed."""


class SanityCheckError(RtkError):
    """A sanity check failed and the evaluation is strict."""


#: What each check means and what to do when it fails (also in docs/evaluation.md).
CHECKS: dict[str, tuple[str, str, str]] = {
    "eval_mode": (
        "reproducibility",
        "every module is in eval mode during the evaluation and the attacks",
        "a module ignores model.eval() (BatchNorm/Dropout stuck in training): fix its train()/eval() or its forward",
    ),
    "model_state_unchanged": (
        "reproducibility",
        "the evaluation and the attacks change no parameter and no buffer (BatchNorm running statistics)",
        "some layer updates state in forward (BatchNorm in train mode, a cache): put it in eval "
        "mode or make the update conditional on self.training",
    ),
    "inputs_in_range": (
        "reproducibility",
        "every input lies in [0, 1]",
        "the dataset is normalized outside the model: give the model raw [0, 1] images and normalize "
        "inside it (the `normalize` option does it)",
    ),
    "outputs_are_logits": (
        "reproducibility",
        "the model returns finite logits, not probabilities",
        "remove the final softmax (attacks on probabilities see vanishing gradients); NaN or infinite outputs "
        "come from broken weights or an overflow: no accuracy computed from them means anything",
    ),
    "deterministic": (
        "reproducibility",
        "two passes over the same inputs give the same outputs",
        "the model is randomized (dropout in train mode, noise): evaluate it in eval mode, or with "
        'EOT attacks (autoattack version = "rand") if the randomness is the defense',
    ),
    "batch_independent": (
        "reproducibility",
        "an example's output does not depend on the rest of its batch (batch size 1 and N agree)",
        "BatchNorm uses batch statistics (train mode) or the model mixes examples: fix eval mode",
    ),
    "perturbation_bounds": (
        "correctness",
        "every adversarial example is finite, in [0, 1] and within its budget (||delta|| <= eps + tol)",
        "an attack (or its options) is wrong; such examples are not counted as broken, but fix or drop the attack",
    ),
    "robust_le_clean": (
        "correctness",
        "no attack makes the model more accurate than on clean inputs",
        "the model or the attack is randomized, or an attack returns other inputs than it was given; check determinism",
    ),
    "rescore_reproduces": (
        "correctness",
        "re-scoring the saved adversarial examples reproduces the recorded predictions",
        "the model is not deterministic, or the saved examples were altered; rerun the deterministic check",
    ),
    "zero_gradients": (
        "gradient_masking",
        "few examples have an exactly zero input gradient",
        "the model masks gradients (rounding, quantization, non-differentiable preprocessing): "
        "evaluate with black-box attacks (square) and BPDA, do not trust gradient attacks",
    ),
    "more_steps": (
        "gradient_masking",
        "doubling the attack's effort (steps, queries) does not lower accuracy beyond the tolerance",
        "the attack has not converged: raise steps (and restarts) until accuracy stops falling",
    ),
    "unbounded_eps": (
        "gradient_masking",
        "an unbounded attack (the whole [0,1] box) drives accuracy to chance",
        "gradients do not lead anywhere: gradient masking or a broken attack; use black-box attacks",
    ),
    "random_noise": (
        "gradient_masking",
        "random noise of the same norm breaks no example the attacks missed",
        "the attacks are weaker than noise: gradient masking or a bug; add restarts, EOT, square",
    ),
    "black_box": (
        "gradient_masking",
        "a black-box attack (Square) breaks no example the white-box attacks missed",
        "the white-box attacks are weaker than a black-box search: too few steps, or masked gradients; "
        "strengthen them and add square to the suite (autoattack includes it)",
    ),
}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. ``passed`` is None when the check was skipped."""

    name: str
    passed: bool | None
    value: float | None = None
    threshold: str = ""
    n: int = 0
    detail: str = ""

    @property
    def group(self) -> str:
        return CHECKS.get(self.name, ("other", "", ""))[0]

    @property
    def status(self) -> str:
        return "skipped" if self.passed is None else ("pass" if self.passed else "fail")

    @property
    def advice(self) -> str:
        return CHECKS.get(self.name, ("", "", ""))[2] if self.passed is False else ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(group=self.group, status=self.status, advice=self.advice)
        return d


def allowed(n: int, tolerance: float) -> int:
    """Examples a comparison may differ by: ``tolerance`` of ``n``, at least one."""
    return max(1, math.ceil(tolerance * n - 1e-9))


def within_allowed(
    name: str, count: int, n: int, tolerance: float, detail: str, threshold: str = "<= {lim}/{n} examples"
) -> CheckResult:
    """Check ``name`` passes when ``count`` of the ``n`` examples compared is at most
    :func:`allowed` (``threshold`` is formatted with ``lim`` and ``n``)."""
    lim = allowed(n, tolerance)
    return CheckResult(name, count <= lim, count / n, threshold.format(lim=lim, n=n), n, detail)


def none_found(name: str, found: Sequence[str], threshold: str, clean: str, label: str) -> CheckResult:
    """Check ``name`` passes when ``found`` (what offends, by name) is empty; the detail says
    ``clean``, else ``label`` and the first eight found."""
    detail = clean if not found else f"{label}: {', '.join(found[:8])}"
    return CheckResult(name, not found, float(len(found)), threshold, 0, detail)


def _scale(out: torch.Tensor) -> float:
    return float(out.detach().abs().max().clamp_min(1.0))


def _hard_flips(a: torch.Tensor, b: torch.Tensor, tol: float) -> torch.Tensor:
    """Examples whose predicted class differs between two output tensors although the
    runner-up margin of ``a`` is larger than ``tol`` (flips at near-ties are not counted)."""
    top2 = a.topk(2, dim=1).values if a.shape[1] > 1 else torch.cat([a, a], 1)
    margin = top2[:, 0] - top2[:, 1]
    return (a.argmax(1) != b.argmax(1)) & (margin > tol)


def _error(name: str, exc: BaseException) -> CheckResult:
    return CheckResult(name, False, detail=f"the check itself raised {type(exc).__name__}: {exc}")


def guarded(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; an exception inside it is a failure that says what was raised."""
    try:
        return fn()
    except (RtkError, RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        return _error(name, exc)


# ------------------------------------------------------------------------ reproducibility
def check_eval_mode(view: nn.Module, after: Sequence[str] = ()) -> CheckResult:
    training = [n or "(root)" for n, m in view.named_modules() if m.training]
    stuck = sorted(set(training) | set(after))
    return none_found(
        "eval_mode", stuck, "0 modules in training mode", "all modules in eval mode", "in training mode after eval()"
    )


def check_state_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> CheckResult:
    now = model.state_dict()
    changed = [k for k, v in before.items() if k not in now or now[k].shape != v.shape or not torch.equal(now[k], v)]
    changed += [k for k in now if k not in before]
    return none_found(
        "model_state_unchanged", changed, "0 tensors changed", "parameters and buffers unchanged", "changed"
    )


def check_inputs(lo: float, hi: float, n: int) -> CheckResult:
    ok = lo >= -1e-6 and hi <= 1 + 1e-6
    return CheckResult("inputs_in_range", ok, None, "[0, 1]", n, f"inputs range over [{lo:.4g}, {hi:.4g}]")


def check_logits(out: torch.Tensor) -> CheckResult:
    out = out.detach().float()
    bad = ~torch.isfinite(out).all(1)
    if bad.any():
        share = float(bad.float().mean())
        return CheckResult(
            "outputs_are_logits",
            False,
            share,
            "every output finite",
            len(out),
            f"{int(bad.sum())}/{len(out)} output rows hold NaN or infinite values",
        )
    nonneg = (out >= -1e-6).all(1)
    sums1 = (out.sum(1) - 1).abs() <= 1e-3
    probs = nonneg & sums1
    share = float(probs.float().mean())
    ok = share < 0.5
    detail = (
        "outputs look like logits"
        if ok
        else f"{share:.0%} of the output rows are non-negative and sum to 1: probabilities, not logits"
    )
    return CheckResult("outputs_are_logits", ok, share, "< 50% rows look like probabilities", len(out), detail)


def _agree(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, passes: str) -> CheckResult:
    """The check ``name``: two ``passes`` over the same inputs gave outputs ``a`` and ``b`` that differ by at most
    ``rtol`` of the outputs' scale and change no prediction."""
    diff = float((a - b).abs().max())
    tol = rtol * _scale(a)
    flips = int(_hard_flips(a, b, tol).sum())
    ok = diff <= tol and flips == 0
    detail = f"{passes} differ by up to {diff:.3g}; {flips} predictions change"
    return CheckResult(name, ok, diff, f"max |difference| <= {tol:.3g}", len(a), detail)


@torch.no_grad()
def check_deterministic(view: nn.Module, x: torch.Tensor, rtol: float) -> CheckResult:
    return _agree("deterministic", view(x), view(x), rtol, "two passes")


@torch.no_grad()
def check_batch_independent(view: nn.Module, x: torch.Tensor, rtol: float, limit: int = 32) -> CheckResult:
    x = x[:limit]
    batched = view(x)
    single = torch.cat([view(x[i : i + 1]) for i in range(len(x))])
    return _agree("batch_independent", batched, single, rtol, f"batch size 1 and {len(x)}")


# ------------------------------------------------------------------------ correctness
def check_bounds(bad: dict[str, dict[str, Any]], attacked: int) -> CheckResult:
    """``bad``: unit label -> {"count": n, "reasons": set, "excess": max norm excess}."""
    total = sum(v["count"] for v in bad.values())
    if total == 0:
        return CheckResult(
            "perturbation_bounds",
            True,
            0.0,
            "0 invalid examples",
            attacked,
            "every adversarial example is finite, in [0, 1] and within its budget",
        )
    parts = []
    for label, v in bad.items():
        ex = f", ||delta|| exceeds eps by up to {v['excess']:.3g}" if v.get("excess") else ""
        parts.append(f"{label}: {v['count']} ({', '.join(sorted(v['reasons']))}{ex})")
    return CheckResult(
        "perturbation_bounds",
        False,
        float(total),
        "0 invalid examples",
        attacked,
        "invalid adversarial examples (not counted as broken): " + "; ".join(parts),
    )


def check_robust_le_clean(rows: list[tuple[str, int, int]], n: int) -> CheckResult:
    """``rows``: (unit label, correct on adversarial inputs, correct on clean inputs)."""
    worse = [(label, adv, clean) for label, adv, clean in rows if adv > clean]
    if not rows:
        return CheckResult("robust_le_clean", None, detail="no attack")
    if not worse:
        return CheckResult(
            "robust_le_clean",
            True,
            0.0,
            "accuracy under attack <= clean",
            n,
            "no attack raised accuracy above clean accuracy",
        )
    label, adv, clean = worse[0]
    return CheckResult(
        "robust_le_clean",
        False,
        float(len(worse)),
        "accuracy under attack <= clean",
        n,
        f"{label}: {adv}/{n} correct under attack but {clean}/{n} on clean inputs"
        + (f" (and {len(worse) - 1} more)" if len(worse) > 1 else ""),
    )


# ------------------------------------------------------------------------ gradient masking
def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: highest other logit minus the true logit (positive = misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def input_gradients(view: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = margin_loss(view(x), y).sum()
        (g,) = torch.autograd.grad(loss, x)
    return g


def check_zero_gradients(view: nn.Module, x: torch.Tensor, y: torch.Tensor, max_share: float) -> CheckResult:
    g = input_gradients(view, x, y)
    zero = (g.flatten(1) == 0).all(1)
    share = float(zero.float().mean())
    return CheckResult(
        "zero_gradients",
        share <= max_share,
        share,
        f"<= {max_share:.0%} of examples",
        len(x),
        f"{int(zero.sum())}/{len(x)} examples have an exactly zero input gradient (margin loss)",
    )


def unbounded_pgd(view: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """Margin-loss PGD over the whole [0, 1] box, from the clean input (no random start,
    so a zero gradient leaves the input where it is)."""
    step = 2.5 / steps
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = margin_loss(view(x_adv), y).sum()
            (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = (x_adv.detach() + step * g.sign()).clamp(0, 1)
    return x_adv.detach()


def random_noise(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """One draw of noise on the sphere of radius ``eps`` (L-inf: a random corner)."""
    shape = x.shape
    if norm == "Linf":
        d = (torch.randint(0, 2, shape, generator=generator).float() * 2 - 1) * eps
    else:
        d = torch.randn(shape, generator=generator)
        flat = d.flatten(1)
        scale = flat.abs().sum(1) if norm == "L1" else flat.norm(dim=1)
        d = d / scale.clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1))) * eps
    return (x + d.to(x.device, x.dtype)).clamp(0, 1)


@torch.no_grad()
def noise_broken(
    view: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, draws: int, seed: int
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(draws):
        broken |= view(random_noise(x, norm, eps, g)).argmax(1) != y
    return broken


def valid_broken(
    view: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str, eps: float, tol: float
) -> torch.Tensor:
    """Examples an adversarial batch really breaks: misclassified, finite, in [0,1], in budget."""
    with torch.no_grad():
        wrong = view(x_adv).argmax(1) != y
    flat = x_adv.flatten(1)
    ok = torch.isfinite(flat).all(1) & (flat.amin(1) >= -1e-6) & (flat.amax(1) <= 1 + 1e-6)
    ok &= within(delta_norms(x, x_adv)[norm], eps, tol)
    return wrong & ok


def first_with_effort(units: Sequence[AttackUnit], norm: str, eps: float) -> AttackUnit | None:
    """The first unit at (norm, eps) whose record names an effort option (steps, queries)."""
    for u in units:
        if u.budgeted and u.norm == norm and abs(u.eps - eps) < 1e-12 and u.effort is not None:
            return u
    return None


__all__ = [
    "CHECKS",
    "CheckResult",
    "CheckSettings",
    "SanityCheckError",
    "SanityCheckWarning",
    "allowed",
    "check_batch_independent",
    "check_bounds",
    "check_deterministic",
    "check_eval_mode",
    "check_inputs",
    "check_logits",
    "check_robust_le_clean",
    "check_state_unchanged",
    "check_zero_gradients",
    "first_with_effort",
    "guarded",
    "input_gradients",
    "margin_loss",
    "none_found",
    "noise_broken",
    "random_noise",
    "unbounded_pgd",
    "valid_broken",
    "within_allowed",
]
