"""Options models: every component declares its options as a pydantic model with extra="forbid".

A typo in an experiment file (``epz = 0.03``) is then an error that names the key,
never a silent default.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from .errors import ConfigError, suggest


class Options(BaseModel):
    """Base class of every options model (component options, stage options)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


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


#: A float that may be written as a fraction ("8/255") in experiment files.
Fraction_ = Annotated[float, BeforeValidator(parse_fraction)]
Eps = Fraction_


def format_validation_error(err: ValidationError, where: str, model: type[BaseModel] | None = None) -> list[str]:
    """Turn a pydantic error into one line per problem: ``where.key.path: message``."""
    lines = []
    for e in err.errors():
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
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


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


def validate_options(model: type[BaseModel], data: dict[str, Any] | None, where: str, source: str | None = None) -> Any:
    """Validate ``data`` against ``model``; raise one ConfigError naming every bad key."""
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, model), source=source) from None
