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
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import AliasChoices, Field, create_model, model_validator

import rtk
from rtk.evaluation import OUTPUT_PATTERN, Normalization

if TYPE_CHECKING:  # torch and the engine are imported when an attack is built, not to list it
    import torch

components = rtk.Components()

DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5, "L1": 5.0}


# ---------------------------------------------------------------------------- options
# Every options class lists its own keys first and the common ones (targeting, seed,
# output, normalize) last, so the generated reference reads top-down: ``_common_keys_last``
# appends the common ones after the class's own.
def _seed():
    return Field(0, description="seed of the attack's randomness; the global RNG is left untouched")


def _output():
    return Field(
        "logits",
        pattern=OUTPUT_PATTERN,
        description='what the model returns: "logits", "first" or "index:N" (item of a tuple), '
        '"key:NAME" (entry of a dict)',
    )


def _normalize():
    return Field(None, description="{ mean, std } the model expects; the attack normalizes its [0, 1] inputs itself")


def _targeted():
    return Field(False, description="aim at a target class instead of any wrong class")


def _target():
    return Field("random", description="how targets are chosen when targeted")


def _restarts():
    return Field(1, ge=1, description="random restarts; an example keeps the first success")


def _n_restarts():
    return Field(1, ge=1, description="random restarts")


Target = Literal["random", "least-likely"]
_Options = TypeVar("_Options", bound=rtk.Options)


def _common_keys_last(*, targeting: bool = False) -> Callable[[type[_Options]], type[_Options]]:
    """Class decorator: the options class extended by the keys every attack has (``seed``,
    ``output``, ``normalize``; first ``targeted`` and ``target`` when ``targeting``), listed after its own."""

    def extend(cls: type[_Options]) -> type[_Options]:
        keys: dict[str, Any] = {}
        if targeting:
            keys.update(targeted=(bool, _targeted()), target=(Target, _target()))
        keys.update(seed=(int, _seed()), output=(str, _output()), normalize=(Normalization | None, _normalize()))
        return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **keys)

    return extend


def _check_eps(norm: str, eps: float | None) -> float:
    eps = DEFAULT_EPS[norm] if eps is None else eps
    if norm == "Linf" and eps > 1:
        raise ValueError(f"eps = {eps:g} is larger than 1, the whole [0, 1] range, for the Linf norm")
    return eps


class _EpsByNorm(rtk.Options):
    """A threat model (``norm``) and a budget ``eps`` in it: fills ``eps`` with the norm's default
    (8/255 Linf, 0.5 L2, 5 L1) and bounds Linf eps by 1."""

    norm: rtk.NormLinfL2 = Field("Linf", description="threat model: Linf or L2")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget in the norm (default 8/255 for Linf, 0.5 for L2)")
    if TYPE_CHECKING:  # added to every attack's options by ``_common_keys_last``
        seed: int

    @model_validator(mode="after")
    def _eps_default(self):
        object.__setattr__(self, "eps", _check_eps(self.norm, self.eps))
        return self


@_common_keys_last(targeting=True)
class FGSMOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius, a float or a fraction such as '8/255'")


@_common_keys_last(targeting=True)
class PGDOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius, a float or a fraction such as '8/255'")
    step_size: rtk.Eps | None = Field(
        None,
        gt=0,
        le=1,
        validation_alias=AliasChoices("step_size", "alpha"),
        description="step size (alias: alpha); default eps/4",
    )
    steps: int = Field(10, ge=1, description="iterations")
    random_start: bool = Field(True, description="start at a uniform random point of the eps-ball")
    restarts: int = _restarts()


class PGDL2Options(PGDOptions):
    # PGD's options with an L2 radius and step (no upper bound); keys keep PGD's order
    eps: rtk.Eps = Field(0.5, ge=0, description="L2 radius")
    step_size: rtk.Eps | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("step_size", "alpha"),
        description="step size (alias: alpha); default eps/4",
    )
    random_start: bool = Field(True, description="start at a random point of the eps-ball")


@_common_keys_last()
class APGDOptions(_EpsByNorm):
    steps: int = Field(100, ge=1, description="iterations (AutoAttack uses 100)")
    restarts: int = _n_restarts()
    eot_iter: int = Field(1, ge=1, description="gradient samples per step (expectation over transformation)")
    rho: float = Field(0.75, gt=0, lt=1, description="step-size halving threshold")


class APGDDLROptions(APGDOptions):
    """APGD's options plus the targeted version's."""

    targeted: bool = Field(False, description="targeted DLR (APGD-T): attack the top n_target_classes classes in turn")
    n_target_classes: int = Field(9, ge=1, description="target classes of the targeted version (capped at classes-1)")


class APGDTOptions(APGDDLROptions):
    targeted: bool = Field(True, description="targeted DLR (APGD-T): attack the top n_target_classes classes in turn")


@_common_keys_last()
class FABOptions(_EpsByNorm):
    norm: rtk.Norm = Field("Linf", description="threat model: Linf, L2 or L1")
    eps: rtk.Eps | None = Field(None, ge=0, description="budget (default 8/255 Linf, 0.5 L2, 5 L1)")
    steps: int = Field(100, ge=1, description="iterations")
    restarts: int = _n_restarts()
    targeted: bool = Field(False, description="multi-targeted FAB-T: the top n_target_classes classes in turn")
    n_target_classes: int = Field(9, ge=1, description="target classes of FAB-T (capped at classes-1)")
    alpha_max: float = Field(0.1, gt=0, lt=1, description="largest step towards the boundary")
    eta: float = Field(1.05, ge=1, description="overshoot")
    beta: float = Field(0.9, gt=0, le=1, description="backward step")


@_common_keys_last(targeting=True)
class SquareOptions(_EpsByNorm):
    queries: int = Field(5000, ge=1, description="queries per example (AutoAttack uses 5000)")
    restarts: int = _n_restarts()
    p_init: float = Field(0.8, gt=0, le=1, description="initial share of pixels changed per square")
    loss: Literal["margin", "ce"] = Field("margin", description="loss the search maximizes")


@_common_keys_last(targeting=True)
class CWOptions(rtk.Options):
    c: float = Field(1.0, gt=0, description="weight of the classification term against the L2 distance")
    kappa: float = Field(0.0, ge=0, description="confidence margin")
    steps: int = Field(100, ge=1, description="Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")


@_common_keys_last()
class DeepFoolOptions(rtk.Options):
    steps: int = Field(50, ge=1, description="iterations")
    overshoot: float = Field(0.02, ge=0, description="overshoot past the linearized boundary")


@_common_keys_last()
class AutoAttackOptions(_EpsByNorm):
    version: Literal["standard", "plus", "rand"] = Field(
        "standard",
        description="standard: APGD-CE, APGD-T, FAB-T, Square; plus: with restarts and untargeted DLR/FAB; "
        "rand: APGD-CE and APGD-DLR with EOT (randomized defenses)",
    )
    steps: int = Field(100, ge=1, description="iterations of APGD and FAB")
    queries: int = Field(5000, ge=1, description="queries of Square")
    n_target_classes: int = Field(9, ge=1, description="target classes of APGD-T and FAB-T (capped at classes-1)")


# ---------------------------------------------------------------------------- plumbing
def _num_classes(view: torch.nn.Module, x: torch.Tensor) -> int:
    import torch

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
    from rtk.evaluation import seeded, with_restarts

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
#: ``make(torchattacks, view, o, k)``: the torchattacks attack on ``view`` for a model with ``k`` classes.
Make = Callable[[Any, "torch.nn.Module", Any, int], Callable]


def _builder(make: Make, *, rtk_restarts: bool = False) -> Callable:
    """An attack's ``build(model, o)``: the model's view is attacked by ``make``'s torchattacks object,
    built on the first call with the targeting ``o`` asks for; with ``rtk_restarts`` the attack runs
    ``o.restarts`` times (an example keeps the first success)."""

    def build(model: torch.nn.Module, o: Any) -> Callable:
        import torchattacks

        from rtk.evaluation import model_view

        view = model_view(model, o.output, o.normalize)
        return _lazy(
            view, o, lambda k: _targeting(make(torchattacks, view, o, k), o), restarts=o.restarts if rtk_restarts else 1
        )

    return build


def _attack(
    name: str,
    options: type[rtk.Options],
    summary: str,
    *,
    norm: str = "Linf",
    effort: str | None = "steps",
    black_box: bool = False,
    rtk_restarts: bool = False,
) -> Callable[[Make], Make]:
    """Decorator: declares the attack ``name`` whose torchattacks object the decorated ``make`` builds
    (see :func:`_builder`; ``rtk_restarts`` goes to it); the other arguments are the record's fields.
    The records are collected in declaration order (stacked decorators run bottom-up: the one nearest
    ``def`` declares its attack first)."""

    def declare(make: Make) -> Make:
        build = _builder(make, rtk_restarts=rtk_restarts)
        components.add(
            rtk.AttackSpec(
                name=name, summary=summary, options=options, build=build, norm=norm, black_box=black_box, effort=effort
            )
        )
        return make

    return declare


def _target_classes(o: Any, k: int) -> int:
    """torchattacks' ``n_classes`` for the top ``o.n_target_classes`` targets (capped at k-1)."""
    return min(o.n_target_classes, k - 1) + 1


@_attack("fgsm", FGSMOptions, "fast gradient sign method, L-inf (Goodfellow et al. 2015)", effort=None)
def _fgsm(ta, view, o: FGSMOptions, k: int):
    return ta.FGSM(view, eps=o.eps)


@_attack("pgd-l2", PGDL2Options, "projected gradient descent, L2 (Madry et al. 2018)", norm="L2", rtk_restarts=True)
@_attack(
    "pgd", PGDOptions, "projected gradient descent, L-inf (Madry et al. 2018), via torchattacks", rtk_restarts=True
)
def _pgd(ta, view, o: PGDOptions, k: int):
    """PGD, in L2 for :class:`PGDL2Options`."""
    step = o.step_size if o.step_size is not None else o.eps / 4
    attack = ta.PGDL2 if isinstance(o, PGDL2Options) else ta.PGD
    return attack(view, eps=o.eps, alpha=step, steps=o.steps, random_start=o.random_start)


def _threat(o: _EpsByNorm) -> dict[str, Any]:
    """The keywords every component of AutoAttack in torchattacks takes: the threat model, its budget, the seed."""
    return {"norm": o.norm, "eps": o.eps, "seed": o.seed}


def _apgd_args(o: APGDOptions) -> dict[str, Any]:
    return {**_threat(o), "steps": o.steps, "n_restarts": o.restarts, "eot_iter": o.eot_iter, "rho": o.rho}


@_attack("apgd-ce", APGDOptions, "auto-PGD on cross-entropy, Linf or L2 (Croce & Hein 2020)")
def _apgd_ce(ta, view, o: APGDOptions, k: int):
    return ta.APGD(view, loss="ce", **_apgd_args(o))


@_attack("apgd-t", APGDTOptions, "targeted auto-PGD on the DLR loss (APGD-T of AutoAttack)")
@_attack("apgd-dlr", APGDDLROptions, "auto-PGD on the DLR loss, untargeted or targeted (Croce & Hein 2020)")
def _apgd_dlr(ta, view, o: APGDDLROptions, k: int):
    if o.targeted:
        _need_classes("apgd-t", k, 4)
        return ta.APGDT(view, n_classes=_target_classes(o, k), **_apgd_args(o))
    _need_classes("apgd-dlr", k, 3)
    return ta.APGD(view, loss="dlr", **_apgd_args(o))


@_attack("fab", FABOptions, "fast adaptive boundary attack, Linf/L2/L1, untargeted or FAB-T (Croce & Hein 2020)")
def _fab(ta, view, o: FABOptions, k: int):
    return ta.FAB(
        view,
        steps=o.steps,
        n_restarts=o.restarts,
        alpha_max=o.alpha_max,
        eta=o.eta,
        beta=o.beta,
        multi_targeted=o.targeted,
        n_classes=_target_classes(o, k),
        **_threat(o),
    )


@_attack(
    "square",
    SquareOptions,
    "Square attack: black-box random search, Linf or L2 (Andriushchenko et al. 2020)",
    black_box=True,
    effort="queries",
)
def _square(ta, view, o: SquareOptions, k: int):
    return ta.Square(view, n_queries=o.queries, n_restarts=o.restarts, p_init=o.p_init, loss=o.loss, **_threat(o))


@_attack("cw-l2", CWOptions, "Carlini-Wagner L2 (no fixed budget; perturbation sizes are recorded)", norm="none")
def _cw(ta, view, o: CWOptions, k: int):
    return ta.CW(view, c=o.c, kappa=o.kappa, steps=o.steps, lr=o.lr)


@_attack("deepfool", DeepFoolOptions, "DeepFool, minimal L2 perturbation (no fixed budget)", norm="none")
def _deepfool(ta, view, o: DeepFoolOptions, k: int):
    return ta.DeepFool(view, steps=o.steps, overshoot=o.overshoot)


@_attack("autoattack", AutoAttackOptions, "AutoAttack: APGD-CE, APGD-T, FAB-T, Square (standard), plus, or rand")
def _autoattack(ta, view, o: AutoAttackOptions, k: int):
    """AutoAttack (Croce & Hein 2020) composed from torchattacks' components with the
    original settings (100 iterations, 9 target classes, 5000 Square queries); each
    component runs only on the examples the previous ones did not break."""
    common = _threat(o)
    nt = _target_classes(o, k)

    def apgd(loss: str, restarts: int = 1, eot_iter: int = 1):
        return ta.APGD(view, loss=loss, steps=o.steps, n_restarts=restarts, eot_iter=eot_iter, **common)

    def apgd_t():
        return ta.APGDT(view, steps=o.steps, n_restarts=1, n_classes=nt, **common)

    def fab(restarts: int = 1, targeted: bool = True):
        return ta.FAB(view, steps=o.steps, n_restarts=restarts, multi_targeted=targeted, n_classes=nt, **common)

    def square():
        return ta.Square(view, n_queries=o.queries, n_restarts=1, **common)

    if o.version == "rand":
        _need_classes("autoattack (rand)", k, 3)
        parts = [apgd("ce", eot_iter=20), apgd("dlr", eot_iter=20)]
    elif o.version == "plus":
        _need_classes("autoattack (plus)", k, 4)
        parts = [apgd("ce", 5), apgd("dlr", 5), fab(5, targeted=False), square(), apgd_t(), fab()]
    else:
        _need_classes("autoattack", k, 4)
        parts = [apgd("ce"), apgd_t(), fab(), square()]
    from rtk.evaluation import ensemble

    return ensemble(parts, view)


rtk_attacks = components.hookimpl(rtk.AttackSpec)
