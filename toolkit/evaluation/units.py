"""Attack units: one attack at one budget, the thing the engine runs and records.

A suite is an ordered list of units. ``make_units`` expands every attack over a list of
eps (per threat model) and gives each unit a stable key (a hash of the attack's name, its
full options, its norm and its eps), so records written by one run are recognised by a
resumed run or merged with another run's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..options import NORMS, parse_fraction, validate_options
from .adapters import AttackFn


def attack_norm(spec: Any, opts: Any) -> str:
    """The norm an attack's ``eps`` is measured in: its ``norm`` option when it has one,
    else the record's ``norm``."""
    n = getattr(opts, "norm", None)
    if isinstance(n, str) and n in NORMS:
        return n
    return getattr(spec, "norm", "none") or "none"


def attack_eps(opts: Any, norm: str) -> float | None:
    if norm == "none":
        return None
    eps = getattr(opts, "eps", None)
    return float(eps) if eps is not None else None


def fmt_eps(eps: float | None) -> str:
    """``0.0313725`` -> ``"8/255"`` when it is a multiple of 1/255, else a short float."""
    if eps is None:
        return "-"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) != 0:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


@dataclass(frozen=True)
class AttackUnit:
    """One attack at one budget.

    ``spec``/``opts`` are the attack's record and validated options (``None`` for a plain
    callable given as ``fn``). ``eps`` is ``None`` for attacks without a budget.
    """

    label: str
    name: str
    norm: str
    eps: float | None
    spec: Any = None
    opts: Any = None
    fn: AttackFn | None = field(default=None, compare=False)

    @cached_property
    def key(self) -> str:
        payload = {
            "name": self.name,
            "norm": self.norm,
            "eps": self.eps,
            "options": self.opts.model_dump(mode="json") if self.opts is not None else None,
            "fn": None if self.fn is None else getattr(self.fn, "__qualname__", "fn"),
        }
        blob = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def budgeted(self) -> bool:
        return self.norm != "none" and self.eps is not None

    @property
    def display(self) -> str:
        return self.label

    @property
    def black_box(self) -> bool:
        """The attack queries only the model's outputs (its record says so)."""
        return bool(getattr(self.spec, "black_box", False))

    @property
    def effort(self) -> str | None:
        """The integer option that scales the attack's work (its record names it), if it has one here."""
        name = getattr(self.spec, "effort", None)
        return name if name is not None and isinstance(self.option(name), int) else None

    def build(self, model: nn.Module) -> AttackFn:
        if self.fn is not None:
            return self.fn
        return self.spec.build(model, self.opts)

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.opts, name, default) if self.opts is not None else default

    def with_options(self, **updates: Any) -> AttackUnit:
        """The same attack with some options changed (validated again)."""
        if self.opts is None:
            raise ConfigError(f"attack {self.label!r} is a plain function; its options cannot be changed")
        data = {**self.opts.model_dump(), **updates}
        opts = validate_options(type(self.opts), data, where=f"attack {self.name}")
        norm = attack_norm(self.spec, opts)
        return AttackUnit(self.label, self.name, norm, attack_eps(opts, norm), self.spec, opts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "attack": self.label,
            "name": self.name,
            "norm": self.norm,
            "eps": self.eps,
            "options": self.opts.model_dump(mode="json") if self.opts is not None else {},
        }


EpsList = Sequence[float | str] | Mapping[str, Sequence[float | str]] | None


def eps_by_norm(eps: EpsList, norms: Sequence[str]) -> dict[str, list[float]]:
    """Normalise the ``eps`` setting: a list applies to the one norm of the suite's bounded
    attacks; a mapping gives one list per norm."""
    if eps is None:
        return {}
    if isinstance(eps, Mapping):
        bad = [k for k in eps if k not in NORMS]
        if bad:
            raise ConfigError(f"eps: unknown norm {bad[0]!r}; allowed: {', '.join(NORMS)}")
        empty = [k for k, v in eps.items() if not v]
        if empty:
            raise ConfigError(f"eps.{empty[0]}: the list is empty; give at least one eps, or remove the norm")
        return {k: sorted({_eps_value(e) for e in v}) for k, v in eps.items()}
    if not eps:
        raise ConfigError("eps: the list is empty; give at least one eps, or remove eps to use each attack's own")
    bounded = sorted({n for n in norms if n != "none"})
    if len(bounded) > 1:
        raise ConfigError(
            f"eps: the attack suite mixes norms ({', '.join(bounded)}); give eps per norm, "
            f'for example eps = {{ Linf = ["8/255"], L2 = [0.5] }}'
        )
    if not bounded:
        return {}
    return {bounded[0]: sorted({_eps_value(e) for e in eps})}


def _eps_value(e: float | str) -> float:
    try:
        v = float(parse_fraction(e))
    except ValueError as exc:
        raise ConfigError(f"eps: {exc}") from None
    if v < 0:
        raise ConfigError(f"eps: must be >= 0, got {e!r}")
    return v


def make_units(attacks: Sequence[tuple[Any, Any, str]], eps: EpsList = None) -> list[AttackUnit]:
    """Expand ``(spec, opts, label)`` triples into units, attack by attack in the order given,
    each at every eps of its norm (smallest first) when ``eps`` is set."""
    norms = [attack_norm(s, o) for s, o, _ in attacks]
    table = eps_by_norm(eps, norms)
    units: list[AttackUnit] = []
    for (spec, opts, label), norm in zip(attacks, norms):
        sweep = table.get(norm) if norm != "none" else None
        if sweep and hasattr(opts, "eps"):
            for e in sweep:
                o = validate_options(type(opts), {**opts.model_dump(), "eps": e}, where=f"attack {spec.name}")
                units.append(AttackUnit(label, spec.name, norm, float(e), spec, o))
        else:
            units.append(AttackUnit(label, spec.name, norm, attack_eps(opts, norm), spec, opts))
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        dup = next(u.label for u in units if keys.count(u.key) > 1)
        raise ConfigError(f"attacks: {dup!r} appears twice with the same options; give each attack once")
    return units


def function_units(attacks: Sequence[tuple[str, AttackFn]]) -> list[AttackUnit]:
    """Units for plain ``(name, attack(x, y) -> x_adv)`` pairs (no budget known)."""
    return [AttackUnit(name, name, "none", None, fn=fn) for name, fn in attacks]


def threats(units: Sequence[AttackUnit], eps: EpsList = None) -> list[tuple[str, float | None]]:
    """The threat models (norm, eps) the worst case is reported for: the budget of every
    bounded unit, that is every eps at which an attack ran (an eps of the ``eps`` setting that
    no attack of its norm ran at has no row); ``("none", None)`` when no attack is bounded."""
    eps_by_norm(eps, [u.norm for u in units])  # the setting is checked even where it adds nothing
    found = {(u.norm, float(u.eps)) for u in units if u.budgeted}
    if not found:
        return [("none", None)]
    return sorted(found, key=lambda t: (NORMS.index(t[0]), t[1]))


def delta_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example L-inf, L2 and L1 norms of ``x_adv - x`` (float32)."""
    d = (x_adv.float() - x.float()).flatten(1)
    a = d.abs()
    return {"Linf": a.amax(1), "L2": d.norm(dim=1), "L1": a.sum(1)}


def within(norm_value: torch.Tensor, eps: float, tol: float) -> torch.Tensor:
    """``norm_value <= eps + tol`` with an absolute and a relative slack for float32."""
    return norm_value <= eps + tol + tol * eps


__all__ = [
    "AttackUnit",
    "NORMS",
    "attack_eps",
    "attack_norm",
    "delta_norms",
    "eps_by_norm",
    "fmt_eps",
    "function_units",
    "make_units",
    "threats",
    "within",
]
