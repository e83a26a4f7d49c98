"""Options models: every component declares its options as a pydantic model with extra="forbid".

A typo in an experiment file (``epz = 0.03``) is then an error that names the key,
never a silent default.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError, model_validator

from .errors import ConfigError, suggest


class Options(BaseModel):
    """Base class of every options model (component options, stage options)."""

    # defer_build: a model's validator is built on its first validation, not when its class is defined;
    # listing components (`rtk plugins`, `rtk reference`) defines ~90 option models and validates none
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `epochs = true` as 1; a boolean where a number is expected is an error
        if isinstance(data, dict) and any(isinstance(v, bool) for v in data.values()):
            fields = cls.model_fields
            data = {
                k: (
                    str(v).lower() if isinstance(v, bool) and k in fields and _numbers_only(fields[k].annotation) else v
                )
                for k, v in data.items()
            }
        return data

    def as_kwargs(self, *, of: type[Options] | None = None, beyond: type[Options] | None = None) -> dict[str, Any]:
        """Every declared key and its value, for options whose keys are the keyword arguments of the
        function they configure, name for name (values as validated, not dumped). ``of``: only the
        keys a base class declares (stage options that embed a request:
        ``opts.as_kwargs(of=rtk.SimilarityRequest)``); ``beyond``: only the keys it does not (a
        dataset's own keys past the shared ones: ``opts.as_kwargs(beyond=DataOptions)``)."""
        keys = list(type(self).model_fields)
        if of is not None:
            keys = [k for k in keys if k in of.model_fields]
        if beyond is not None:
            keys = [k for k in keys if k not in beyond.model_fields]
        return {key: getattr(self, key) for key in keys}


class NoOptions(Options):
    """For components that take no options."""


def parse_fraction(value: Any) -> Any:
    """Accept ``0.03``, ``8``, or a string such as ``"8/255"`` and return a float."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction such as '8/255', got {value!r}") from None
    return value


#: The threat models (norms) an eps is measured in, in rtk's order: the one spelling of a norm in
#: options, records, tables and flags. :data:`Norm` is any of them; :data:`NormLinfL2` the two
#: that rtk's own PGD-style attacks and trainers implement.
NORMS = ("Linf", "L2", "L1")
Norm = Literal["Linf", "L2", "L1"]
NormLinfL2 = Literal["Linf", "L2"]


def check_norm(value: Any, where: str = "norm", allowed: tuple[str, ...] = NORMS) -> str:
    """``value`` if it names one of ``allowed`` (spelled as in :data:`NORMS`), else a
    :class:`~rtk.ConfigError` naming ``where`` and what is allowed."""
    if isinstance(value, str) and value in allowed:
        return value
    hint = ""
    if isinstance(value, str) and value.lower() in {a.lower() for a in allowed}:
        hint = f" (norms are spelled {', '.join(allowed)})"
    raise ConfigError(f"{where}: {value!r} is not a norm here{hint}; allowed: {', '.join(allowed)}")


#: A float that may be written as a fraction ("8/255") in experiment files.
Fraction_ = Annotated[float, BeforeValidator(parse_fraction)]
Eps = Fraction_


@dataclass(frozen=True)
class Span:
    """A stretch of a training run, in one of two units: epochs (``Span(3)``) or a share of the
    whole run (``Span(0.1, share=True)``). In an experiment file a number is epochs (``3``,
    ``0.5``) and a percentage is a share (``"10%"``); the eps warm-up and ramp of every trainer
    take it (:data:`TrainingSpan`)."""

    value: float
    share: bool = False

    def epochs(self, total: float) -> float:
        """The span in epochs, in a run of ``total`` epochs."""
        return self.value * total if self.share else self.value

    def fraction(self, total: float) -> float:
        """The span as a share of a run of ``total`` epochs."""
        if self.share:
            return self.value
        return self.value / total if total > 0 else (0.0 if self.value <= 0 else 1.0)

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.share else f"{self.value:g}"

    @classmethod
    def parse(cls, value: Any) -> Span:
        """``3`` / ``0.5`` / ``"3"`` (epochs) or ``"10%"`` (a share of the run) -> a Span; else ValueError."""
        if isinstance(value, Span):
            return value
        allowed = "allowed: a number of epochs (3, 0.5) or a share of the run as a percentage ('10%')"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a span of training, got {value!r}; {allowed}")
        text = value.strip() if isinstance(value, str) else value
        share = isinstance(text, str) and text.endswith("%")
        try:
            number = float(text[:-1] if share else text)  # type: ignore[index]
        except ValueError:
            raise ValueError(f"expected a span of training, got {value!r}; {allowed}") from None
        if share:
            number /= 100
        if not number >= 0 or (share and number > 1) or number == float("inf"):
            raise ValueError(f"{value!r} is out of range; {allowed}, at least 0 (a share at most '100%')")
        return cls(number, share)


def run_epochs(progress: float) -> float:
    """The length in epochs of the run ``progress`` (an :class:`rtk.training.Progress`) is a
    position in; a TypeError for a bare fraction, which does not know it."""
    total = getattr(progress, "epochs", None)
    if total is None:
        raise TypeError(
            "an eps warm-up or ramp in epochs needs an rtk.training.Progress (the training loop passes one; "
            "by hand use Progress.at_epoch(epoch, epochs))"
        )
    return float(total)


def _dump_span(span: Span) -> float | str:
    return str(span) if span.share else span.value


#: An options field holding a :class:`Span`: epochs (a number) or a share of the run ("10%").
TrainingSpan = Annotated[Span, BeforeValidator(Span.parse), PlainSerializer(_dump_span)]


def format_validation_error(err: ValidationError, where: str, model: type[BaseModel] | None = None) -> list[str]:
    """Turn a pydantic error into one line per problem: ``where.key.path: message``."""
    lines = []
    for e in _one_branch_per_union(err.errors()):
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        path = f"{where}.{loc}" if loc else where
        path = path.replace(".[", "[")
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and model is not None:
            allowed = _allowed_keys(model, e["loc"][:-1])
            key = str(e["loc"][-1])
            msg = f"unknown key{suggest(key, allowed)}; allowed keys: {', '.join(allowed) or '(none)'}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("missing",) and repr(e["input"]) not in msg:
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "tuple"})


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union it tried in the error location (``list[float]``,
    ``function-before[...]``, ``str``); those are not keys of the file."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def _one_branch_per_union(errors: list[Any]) -> list[Any]:
    """Errors with pydantic's union tags removed from the locations; of a union whose every
    member failed, only the member that got furthest into the value (the longest location) is
    reported, since the others failed on the shape alone (``eps: not a dictionary``)."""
    best: dict[tuple, int] = {}
    tagged = []
    for e in errors:
        loc = tuple(e["loc"])
        i = next((k for k, p in enumerate(loc) if _is_union_tag(p)), None)
        tagged.append((e, loc, i))
        if i is not None:
            best[loc[:i]] = max(best.get(loc[:i], 0), len(loc) - i)
    out = []
    for e, loc, i in tagged:
        if i is not None:
            if len(loc) - i < best[loc[:i]]:
                continue
            e = {**e, "loc": tuple(p for p in loc if not _is_union_tag(p))}
        out.append(e)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cur = _first_model(ann)
        if cur is None:
            return []
    return sorted(getattr(cur, "model_fields", {}).keys())


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _numbers_only(ann: Any) -> bool:
    """True when ``ann`` accepts numbers (int/float, optionally None) and no boolean."""
    if ann in (int, float):
        return True
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _numbers_only(typing.get_args(ann)[0])
    args = typing.get_args(ann)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        kinds = [a for a in args if a is not type(None)]
        return bool(kinds) and all(_numbers_only(a) for a in kinds)
    return False


def validate_options(model: type[BaseModel], data: dict[str, Any] | None, where: str, source: str | None = None) -> Any:
    """Validate ``data`` against ``model``; raise one ConfigError naming every bad key."""
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, model), source=source) from None
