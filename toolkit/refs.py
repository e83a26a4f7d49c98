"""Component references inside stage options.

In an experiment file a component is written as a name, or as a table with ``name`` and
its options::

    trainer = "standard"
    attacks = ["pgd", { name = "fgsm", eps = "4/255" }]

A stage's options model declares such fields with the typed references below
(``AttackRef``, ``TrainerRef``, ...). Before any work starts, the runner resolves every
reference against the registry and validates its options; afterwards ``ref.spec`` is the
record and ``ref.opts`` the validated options object.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .errors import ConfigError, UnknownComponentError
from .options import validate_options


@functools.lru_cache(maxsize=256)
def _regex(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


@dataclass(frozen=True)
class NamePattern:
    """Which layers or parameters, by name: the one pattern language of rtk (similarity layers,
    pruning's ``layers``/``exclude``, a trainer's ``params``). A glob (``fnmatch``, case-sensitive:
    ``"layer1.*"``, ``"*conv*"``) or ``"re:"`` and a regular expression matched against the whole
    name (``"re:layer[0-9]+\\.conv1"``). ``NamePattern.parse(text, where)`` checks a regular
    expression once and names ``where`` (the key) when it is not one."""

    text: str

    @classmethod
    def parse(cls, text: str, where: str = "pattern") -> NamePattern:
        if text.startswith("re:"):
            try:
                _regex(text[3:])
            except re.error as exc:
                raise ConfigError(f"{where}: invalid regular expression {text!r}: {exc}") from None
        return cls(text)

    def matches(self, name: str) -> bool:
        if self.text.startswith("re:"):
            return _regex(self.text[3:]).fullmatch(name) is not None
        return fnmatch.fnmatchcase(name, self.text)


@dataclass(frozen=True)
class ModelRef:
    """A model of the run as stage options name it: ``name`` (its current state) or
    ``name@tag`` (one of its checkpoints: ``best``, ``last``, ...). The one parser of that
    notation: ``ModelRef.parse("net@best") == ModelRef("net", "best")``."""

    name: str
    tag: str | None = None

    @classmethod
    def parse(cls, text: str | ModelRef) -> ModelRef:
        if isinstance(text, ModelRef):
            return text
        name, sep, tag = str(text).partition("@")
        return cls(name.strip(), tag.strip() if sep else None)

    def __str__(self) -> str:
        return f"{self.name}@{self.tag}" if self.tag is not None else self.name


class ComponentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "component"

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    _spec: Any = PrivateAttr(default=None)
    _opts: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_name_or_table(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "options" not in value:
            rest = {k: v for k, v in value.items() if k != "name"}
            return {"name": value.get("name"), "options": rest} if "name" in value else value
        if isinstance(value, ComponentRef):
            return {"name": value.name, "options": dict(value.options)}
        return value

    @property
    def resolved(self) -> bool:
        """True once :meth:`resolve` succeeded (``spec`` and ``opts`` are then ready). A stage's
        ``check`` skips unresolved references: the planner reports them already."""
        return self._spec is not None

    @property
    def spec(self) -> Any:
        if self._spec is None:
            raise RuntimeError(f"{self.KIND} reference {self.name!r} has not been resolved against a registry")
        return self._spec

    @property
    def opts(self) -> Any:
        if self._spec is None:
            raise RuntimeError(f"{self.KIND} reference {self.name!r} has not been resolved against a registry")
        return self._opts

    def resolve(self, registry: Any, where: str = "") -> ComponentRef:
        """Look the component up and validate its options (raises ConfigError)."""
        try:
            spec = registry.get(self.KIND, self.name)
        except UnknownComponentError as exc:
            raise ConfigError(f"{where + '.' if where else ''}name: {exc}") from None
        self._spec = spec
        self._opts = validate_options(spec.options, self.options, where=where or self.name)
        return self

    def describe(self) -> str:
        if not self.options:
            return self.name
        inner = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({inner})"


class AttackRef(ComponentRef):
    KIND: ClassVar[str] = "attack"


class TrainerRef(ComponentRef):
    KIND: ClassVar[str] = "trainer"


class PrunerRef(ComponentRef):
    KIND: ClassVar[str] = "pruner"


class SimilarityRef(ComponentRef):
    KIND: ClassVar[str] = "similarity"


class CertifierRef(ComponentRef):
    KIND: ClassVar[str] = "certifier"


def resolve_refs(obj: Any, registry: Any, where: str) -> list[str]:
    """Resolve every reference inside ``obj`` (an options model, list, or dict).

    Returns the problems found, each naming its key path.
    """
    problems: list[str] = []
    if isinstance(obj, ComponentRef):
        try:
            obj.resolve(registry, where)
        except ConfigError as exc:
            problems.extend(exc.problems)
    elif isinstance(obj, BaseModel):
        for fname in type(obj).model_fields:
            problems.extend(resolve_refs(getattr(obj, fname), registry, f"{where}.{fname}"))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            problems.extend(resolve_refs(item, registry, f"{where}[{i}]"))
    elif isinstance(obj, dict):
        for k, item in obj.items():
            problems.extend(resolve_refs(item, registry, f"{where}.{k}"))
    return problems
