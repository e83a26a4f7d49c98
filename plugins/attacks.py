"""Built-in attacks, wrapping torchattacks 3.5.

Every attack takes inputs in [0, 1] and returns adversarial inputs in [0, 1]. Options
every attack has: ``seed`` (the attack's randomness runs under it, the caller's global RNG is left
untouched), ``output`` and ``normalize`` (explicit adapters for models that return a tuple
or dict, or expect normalized inputs). Budgeted attacks take ``eps`` as a float or a
fraction such as ``"8/255"``; attacks with a ``norm`` option measure it in that norm.

torchattacks puts the model in eval mode during an attack and restores its mode after;
rtk's evaluation checks that nothing in the model changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from pydantic import AliasChoices, Field, model_validator

import rtk
from rtk.evaluation import OUTPUT_PATTERN, Normalization, ensemble, model_view, seeded, with_restarts

DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5, "L1": 5.0}


# ---------------------------------------------------------------------------- options
# Every options class lists its own keys first and the common ones (targeting, seed,
# output, normalize) last, so the generated reference reads top-down.
def _seed():
    return Field(0, description="seed of the attack's randomness; the global RNG is left untouched")


def _output():
    return Field("logits", pattern=OUTPUT_PATTERN,
                 description='what the model returns: "logits", "first" or "index:N" (item of a tuple), '
                             '"key:NAME" (entry of a dict)')


def _normalize():
    return Field(None, description="{ mean, std } the model expects; the attack normalizes its [0, 1] inputs itself")


def _targeted():
    return Field(False, description="aim at a target class instead of any wrong class")


def _target():
    return Field("random", description="how targets are chosen when targeted")


def _restarts():
    return Field(1, ge=1, description="random restarts; an example keeps the first success")


Target = Literal["random", "least-likely"]


def _check_eps(norm: str, eps: float | None) -> float:
    eps = DEFAULT_EPS[norm] if eps is None else eps
    if norm == "Linf" and eps > 1:
        raise ValueError(f"eps = {eps:g} is larger than 1, the whole [0, 1] range, for the Linf norm")
    return eps


class _EpsByNorm(rtk.Options):
    """Fills ``eps`` with the norm's default (8/255 Linf, 0.5 L2, 5 L1) and bounds Linf eps by 1."""

    @model_validator(mode="after")
    def _eps_default(self):
        object.__setattr__(self, "eps", _check_eps(self.norm, self.eps))
        return self


class FGSMOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius, a float or a fraction such as '8/255'")
    targeted: bool = _targeted()
    target: Target = _target()
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class PGDOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius, a float or a fraction such as '8/255'")
    step_size: rtk.Eps | None = Field(None, gt=0, le=1, validation_alias=AliasChoices("step_size", "alpha"),
                                      description="step size (alias: alpha); default eps/4")
    steps: int = Field(10, ge=1, description="iterations")
    random_start: bool = Field(True, description="start at a uniform random point of the eps-ball")
    restarts: int = _restarts()
    targeted: bool = _targeted()
    target: Target = _target()
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class PGDL2Options(rtk.Options):
    eps: rtk.Eps = Field(0.5, ge=0, description="L2 radius")
    step_size: rtk.Eps | None = Field(None, gt=0, validation_alias=AliasChoices("step_size", "alpha"),
                                      description="step size (alias: alpha); default eps/4")
    steps: int = Field(10, ge=1, description="iterations")
    random_start: bool = Field(True, description="start at a random point of the eps-ball")
    restarts: int = _restarts()
    targeted: bool = _targeted()
    target: Target = _target()
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class APGDOptions(_EpsByNorm):
    norm: Literal["Linf", "L2"] = Field("Linf", description="threat model: Linf or L2")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget in the norm (default 8/255 for Linf, 0.5 for L2)")
    steps: int = Field(100, ge=1, description="iterations (AutoAttack uses 100)")
    restarts: int = Field(1, ge=1, description="random restarts")
    eot_iter: int = Field(1, ge=1, description="gradient samples per step (expectation over transformation)")
    rho: float = Field(0.75, gt=0, lt=1, description="step-size halving threshold")
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class APGDDLROptions(APGDOptions):
    """APGD's options plus the targeted version's."""

    targeted: bool = Field(False, description="targeted DLR (APGD-T): attack the top n_target_classes classes in turn")
    n_target_classes: int = Field(9, ge=1, description="target classes of the targeted version (capped at classes-1)")


class APGDTOptions(APGDDLROptions):
    targeted: bool = Field(True, description="targeted DLR (APGD-T): attack the top n_target_classes classes in turn")


class FABOptions(_EpsByNorm):
    norm: Literal["Linf", "L2", "L1"] = Field("Linf", description="threat model: Linf, L2 or L1")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget (default 8/255 Linf, 0.5 L2, 5 L1)")
    steps: int = Field(100, ge=1, description="iterations")
    restarts: int = Field(1, ge=1, description="random restarts")
    targeted: bool = Field(False, description="multi-targeted FAB-T: the top n_target_classes classes in turn")
    n_target_classes: int = Field(9, ge=1, description="target classes of FAB-T (capped at classes-1)")
    alpha_max: float = Field(0.1, gt=0, lt=1, description="largest step towards the boundary")
    eta: float = Field(1.05, ge=1, description="overshoot")
    beta: float = Field(0.9, gt=0, le=1, description="backward step")
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class SquareOptions(_EpsByNorm):
    norm: Literal["Linf", "L2"] = Field("Linf", description="threat model: Linf or L2")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget in the norm (default 8/255 for Linf, 0.5 for L2)")
    queries: int = Field(5000, ge=1, description="queries per example (AutoAttack uses 5000)")
    restarts: int = Field(1, ge=1, description="random restarts")
    p_init: float = Field(0.8, gt=0, le=1, description="initial share of pixels changed per square")
    loss: Literal["margin", "ce"] = Field("margin", description="loss the search maximizes")
    targeted: bool = _targeted()
    target: Target = _target()
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class CWOptions(rtk.Options):
    c: float = Field(1.0, gt=0, description="weight of the classification term against the L2 distance")
    kappa: float = Field(0.0, ge=0, description="confidence margin")
    steps: int = Field(100, ge=1, description="Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    targeted: bool = _targeted()
    target: Target = _target()
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class DeepFoolOptions(rtk.Options):
    steps: int = Field(50, ge=1, description="iterations")
    overshoot: float = Field(0.02, ge=0, description="overshoot past the linearized boundary")
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


class AutoAttackOptions(_EpsByNorm):
    norm: Literal["Linf", "L2"] = Field("Linf", description="threat model: Linf or L2")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget in the norm (default 8/255 for Linf, 0.5 for L2)")
    version: Literal["standard", "plus", "rand"] = Field(
        "standard", description="standard: APGD-CE, APGD-T, FAB-T, Square; plus: with restarts and untargeted DLR/FAB; "
                                "rand: APGD-CE and APGD-DLR with EOT (randomized defenses)")
    steps: int = Field(100, ge=1, description="iterations of APGD and FAB")
    queries: int = Field(5000, ge=1, description="queries of Square")
    n_target_classes: int = Field(9, ge=1, description="target classes of APGD-T and FAB-T (capped at classes-1)")
    seed: int = _seed()
    output: str = _output()
    normalize: Normalization | None = _normalize()


# ---------------------------------------------------------------------------- plumbing
def _num_classes(view: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(view(x[:1]).shape[1])


@contextlib.contextmanager
def _inputs_only(view: torch.nn.Module) -> Iterator[None]:
    """During an attack only inputs need gradients: parameters are frozen (no weight
    gradients computed or accumulated) and their ``.grad`` restored afterwards."""
    params = [p for p in view.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(params, grads):
            p.requires_grad_(True)
            p.grad = g


def _targeting(atk: Any, o: Any) -> Any:
    if getattr(o, "targeted", False) and hasattr(o, "target"):
        if o.target == "random":
            atk.set_mode_targeted_random(quiet=True)
        else:
            atk.set_mode_targeted_least_likely(quiet=True)
    return atk


def _need_classes(name: str, k: int, minimum: int) -> None:
    if k < minimum:
        raise rtk.RtkError(f"attack {name}: needs a model with at least {minimum} classes, this one has {k}")


def _lazy(view: torch.nn.Module, o: Any, make: Callable[[int], Callable], *, restarts: int = 1) -> Callable:
    """An ``attack(x, y)`` that builds its torchattacks object on the first call (when the
    number of classes is known) and runs under ``o.seed`` with frozen parameters."""
    state: dict[str, Callable] = {}

    def once(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        with seeded(seed, x.device):
            return state["atk"](x, y)

    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _inputs_only(view):
            if "atk" not in state:
                state["atk"] = make(_num_classes(view, x))
            return with_restarts(once, view, x, y, restarts=restarts, seed=o.seed).detach()

    return attack


# ---------------------------------------------------------------------------- builders
def _fgsm(model, o: FGSMOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    return _lazy(view, o, lambda k: _targeting(torchattacks.FGSM(view, eps=o.eps), o))


def _pgd(model, o: PGDOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    step = o.step_size if o.step_size is not None else o.eps / 4
    return _lazy(view, o, lambda k: _targeting(torchattacks.PGD(view, eps=o.eps, alpha=step, steps=o.steps,
                                                                random_start=o.random_start), o), restarts=o.restarts)


def _pgd_l2(model, o: PGDL2Options):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    step = o.step_size if o.step_size is not None else o.eps / 4
    return _lazy(view, o, lambda k: _targeting(torchattacks.PGDL2(view, eps=o.eps, alpha=step, steps=o.steps,
                                                                  random_start=o.random_start), o), restarts=o.restarts)


def _apgd_ce(model, o: APGDOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    return _lazy(view, o, lambda k: torchattacks.APGD(view, norm=o.norm, eps=o.eps, steps=o.steps, n_restarts=o.restarts,
                                                      seed=o.seed, loss="ce", eot_iter=o.eot_iter, rho=o.rho))


def _apgd_dlr(model, o: APGDDLROptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)

    def make(k: int):
        if o.targeted:
            _need_classes("apgd-t", k, 4)
            return torchattacks.APGDT(view, norm=o.norm, eps=o.eps, steps=o.steps, n_restarts=o.restarts, seed=o.seed,
                                      eot_iter=o.eot_iter, rho=o.rho, n_classes=min(o.n_target_classes, k - 1) + 1)
        _need_classes("apgd-dlr", k, 3)
        return torchattacks.APGD(view, norm=o.norm, eps=o.eps, steps=o.steps, n_restarts=o.restarts, seed=o.seed,
                                 loss="dlr", eot_iter=o.eot_iter, rho=o.rho)

    return _lazy(view, o, make)


def _fab(model, o: FABOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)

    def make(k: int):
        return torchattacks.FAB(view, norm=o.norm, eps=o.eps, steps=o.steps, n_restarts=o.restarts,
                                alpha_max=o.alpha_max, eta=o.eta, beta=o.beta, seed=o.seed, multi_targeted=o.targeted,
                                n_classes=min(o.n_target_classes, k - 1) + 1)

    return _lazy(view, o, make)


def _square(model, o: SquareOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    return _lazy(view, o, lambda k: _targeting(torchattacks.Square(view, norm=o.norm, eps=o.eps, n_queries=o.queries,
                                                                   n_restarts=o.restarts, p_init=o.p_init, loss=o.loss,
                                                                   seed=o.seed), o))


def _cw(model, o: CWOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    return _lazy(view, o, lambda k: _targeting(torchattacks.CW(view, c=o.c, kappa=o.kappa, steps=o.steps, lr=o.lr), o))


def _deepfool(model, o: DeepFoolOptions):
    import torchattacks

    view = model_view(model, o.output, o.normalize)
    return _lazy(view, o, lambda k: torchattacks.DeepFool(view, steps=o.steps, overshoot=o.overshoot))


def _autoattack(model, o: AutoAttackOptions):
    """AutoAttack (Croce & Hein 2020) composed from torchattacks' components with the
    original settings (100 iterations, 9 target classes, 5000 Square queries); each
    component runs only on the examples the previous ones did not break."""
    import torchattacks as ta

    view = model_view(model, o.output, o.normalize)
    common = {"norm": o.norm, "eps": o.eps, "seed": o.seed}

    def make(k: int):
        nt = min(o.n_target_classes, k - 1) + 1
        if o.version == "rand":
            _need_classes("autoattack (rand)", k, 3)
            parts = [ta.APGD(view, loss="ce", steps=o.steps, eot_iter=20, n_restarts=1, **common),
                     ta.APGD(view, loss="dlr", steps=o.steps, eot_iter=20, n_restarts=1, **common)]
        elif o.version == "plus":
            _need_classes("autoattack (plus)", k, 4)
            parts = [ta.APGD(view, loss="ce", steps=o.steps, n_restarts=5, **common),
                     ta.APGD(view, loss="dlr", steps=o.steps, n_restarts=5, **common),
                     ta.FAB(view, steps=o.steps, n_restarts=5, n_classes=nt, **common),
                     ta.Square(view, n_queries=o.queries, n_restarts=1, **common),
                     ta.APGDT(view, steps=o.steps, n_restarts=1, n_classes=nt, **common),
                     ta.FAB(view, steps=o.steps, n_restarts=1, multi_targeted=True, n_classes=nt, **common)]
        else:
            _need_classes("autoattack", k, 4)
            parts = [ta.APGD(view, loss="ce", steps=o.steps, n_restarts=1, **common),
                     ta.APGDT(view, steps=o.steps, n_restarts=1, n_classes=nt, **common),
                     ta.FAB(view, steps=o.steps, n_restarts=1, multi_targeted=True, n_classes=nt, **common),
                     ta.Square(view, n_queries=o.queries, n_restarts=1, **common)]
        return ensemble(parts, view)

    return _lazy(view, o, make)


@rtk.hookimpl
def rtk_attacks():
    A = rtk.AttackSpec
    yield A(name="fgsm", summary="fast gradient sign method, L-inf (Goodfellow et al. 2015)", options=FGSMOptions,
            build=_fgsm, norm="Linf")
    yield A(name="pgd", summary="projected gradient descent, L-inf (Madry et al. 2018), via torchattacks",
            options=PGDOptions, build=_pgd, norm="Linf")
    yield A(name="pgd-l2", summary="projected gradient descent, L2 (Madry et al. 2018)", options=PGDL2Options,
            build=_pgd_l2, norm="L2")
    yield A(name="apgd-ce", summary="auto-PGD on cross-entropy, Linf or L2 (Croce & Hein 2020)", options=APGDOptions,
            build=_apgd_ce, norm="Linf")
    yield A(name="apgd-dlr", summary="auto-PGD on the DLR loss, untargeted or targeted (Croce & Hein 2020)",
            options=APGDDLROptions, build=_apgd_dlr, norm="Linf")
    yield A(name="apgd-t", summary="targeted auto-PGD on the DLR loss (APGD-T of AutoAttack)", options=APGDTOptions,
            build=_apgd_dlr, norm="Linf")
    yield A(name="fab", summary="fast adaptive boundary attack, Linf/L2/L1, untargeted or FAB-T (Croce & Hein 2020)",
            options=FABOptions, build=_fab, norm="Linf")
    yield A(name="square", summary="Square attack: black-box random search, Linf or L2 (Andriushchenko et al. 2020)",
            options=SquareOptions, build=_square, norm="Linf")
    yield A(name="cw-l2", summary="Carlini-Wagner L2 (no fixed budget; perturbation sizes are recorded)",
            options=CWOptions, build=_cw, norm="none")
    yield A(name="deepfool", summary="DeepFool, minimal L2 perturbation (no fixed budget)", options=DeepFoolOptions,
            build=_deepfool, norm="none")
    yield A(name="autoattack", summary="AutoAttack: APGD-CE, APGD-T, FAB-T, Square (standard), plus, or rand",
            options=AutoAttackOptions, build=_autoattack, norm="Linf")
