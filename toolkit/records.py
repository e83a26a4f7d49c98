"""The records that plugins yield from their hooks.

Each record names one component, documents its options as a pydantic model
(``extra="forbid"``), and carries the callable that builds it. Records are frozen
dataclasses; building is lazy, so listing plugins never imports heavy libraries.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from .errors import PluginError, RtkError
from .options import NoOptions, Norm, Options

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    """Common fields of every component record."""

    name: str
    summary: str
    options: type[Options] = NoOptions

    KIND: ClassVar[str] = "component"
    #: the hook that yields records of this kind
    HOOK: ClassVar[str] = ""
    #: the field holding the callable that makes the component (``build``, ``load`` or ``run``)
    MAKE: ClassVar[str] = "build"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "name": self.name,
            "summary": self.summary,
            "options": sorted(self.options.model_fields),
        }


@dataclass(frozen=True, kw_only=True)
class AttackSpec(ComponentSpec):
    """An adversarial attack.

    ``build(model, options)`` returns a callable ``attack(x, y) -> x_adv`` where ``x`` is a
    batch in [0, 1] on the model's device and ``x_adv`` has the same shape, in [0, 1].
    ``norm`` is the threat model the options' ``eps`` is measured in: "Linf", "L2", "L1",
    "L0", or "none" for attacks without a fixed budget (CW, DeepFool).

    Capabilities the evaluation's sanity checks use, so that any attack takes part on equal terms:
    ``black_box`` (it queries only the model's outputs, never its gradients: the ``black_box``
    check compares it with the white-box attacks, and runs one when the suite has none) and
    ``effort`` (the name of an integer option that scales the attack's work, such as ``steps``
    or ``queries``: the ``more_steps`` check doubles it; ``None`` when there is no such option).
    """

    build: Callable[[Any, Any], Callable[[Any, Any], Any]]
    norm: Norm | Literal["L0", "none"] = "Linf"
    black_box: bool = False
    effort: str | None = None
    KIND: ClassVar[str] = "attack"
    HOOK: ClassVar[str] = "rtk_attacks"


@dataclass(frozen=True, kw_only=True)
class TrainerSpec(ComponentSpec):
    """A training objective (standard, PGD-AT, TRADES, IBP, ...).

    ``build(options)`` returns an :class:`rtk.training.Objective`: a callable
    ``objective(model, x, y, *, progress) -> ObjectiveOutput`` used by the shared loop.
    """

    build: Callable[[Any], Any]
    KIND: ClassVar[str] = "trainer"
    HOOK: ClassVar[str] = "rtk_trainers"


@dataclass(frozen=True, kw_only=True)
class PrunerSpec(ComponentSpec):
    """A pruning rule. ``build(options)`` returns an object with the pruner protocol of
    :mod:`rtk.pruning`."""

    build: Callable[[Any], Any]
    structured: bool = False
    KIND: ClassVar[str] = "pruner"
    HOOK: ClassVar[str] = "rtk_pruners"


@dataclass(frozen=True, kw_only=True)
class SimilaritySpec(ComponentSpec):
    """A representation similarity metric. ``build(options)`` returns an object with the
    metric protocol of :mod:`rtk.similarity`."""

    build: Callable[[Any], Any]
    KIND: ClassVar[str] = "similarity"
    HOOK: ClassVar[str] = "rtk_similarity_metrics"


@dataclass(frozen=True, kw_only=True)
class CertifierSpec(ComponentSpec):
    """A verifier of robustness (IBP, CROWN, randomized smoothing). ``build(options)``
    returns an object with the certifier protocol of :mod:`rtk.certify`."""

    build: Callable[[Any], Any]
    KIND: ClassVar[str] = "certifier"
    HOOK: ClassVar[str] = "rtk_certifiers"


@dataclass(frozen=True, kw_only=True)
class _CheckedSpec(ComponentSpec):
    """The fields datasets and models share. ``check(options)``, when given, returns problems found
    before any work starts (missing files, an unknown callable), without loading or building
    anything. ``source``: for a *source* (``name = "python:<file.py>:<callable>"``,
    ``arch = "torchvision:<name>"``), the syntax after ``name:``, which the experiment file passes
    as the option ``source``."""

    check: Callable[[Any], Iterable[str]] | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **({"source": self.source} if self.source else {})}


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(_CheckedSpec):
    """A dataset. ``load(options)`` returns a :class:`rtk.data.DatasetBundle` whose images
    are float tensors in [0, 1]. ``check`` and ``source``: see :class:`_CheckedSpec`."""

    load: Callable[[Any], Any]
    KIND: ClassVar[str] = "dataset"
    HOOK: ClassVar[str] = "rtk_datasets"
    MAKE: ClassVar[str] = "load"


@dataclass(frozen=True, kw_only=True)
class ModelSpec(_CheckedSpec):
    """An architecture. ``build(info, options)`` returns an ``nn.Module`` for a dataset
    described by ``info`` (a :class:`rtk.data.DataInfo`). The module takes inputs in
    [0, 1] and normalizes them itself; it returns logits. ``check`` and ``source``: see
    :class:`_CheckedSpec`."""

    build: Callable[[Any, Any], Any]
    KIND: ClassVar[str] = "model"
    HOOK: ClassVar[str] = "rtk_models"


@dataclass(frozen=True, kw_only=True)
class StageSpec(ComponentSpec):
    """A kind of stage of ``rtk run`` (train, evaluate, prune, ...).

    ``run(ctx, options)`` does the work with a :class:`rtk.StageContext` and returns
    a :class:`rtk.StageResult`. ``check(options, planning)``, when given, returns
    problems found before any work starts (unknown model names, ...); ``planning`` is a
    :class:`rtk.Planning`.
    """

    run: Callable[[Any, Any], Any]
    check: Callable[[Any, Any], Iterable[str]] | None = None
    KIND: ClassVar[str] = "stage"
    HOOK: ClassVar[str] = "rtk_stages"
    MAKE: ClassVar[str] = "run"


@dataclass(frozen=True, kw_only=True)
class CommandSpec(ComponentSpec):
    """An extra ``rtk`` subcommand. ``build()`` returns a ``click.Command``."""

    build: Callable[[], Any]
    KIND: ClassVar[str] = "command"
    HOOK: ClassVar[str] = "rtk_commands"


@dataclass(frozen=True, kw_only=True)
class LoggerSpec(ComponentSpec):
    """An experiment tracker, chosen per experiment (``loggers = ["tensorboard"]``) or per run
    (``rtk run --logger NAME``).

    ``build(options, run)`` is called once per run (``run`` is a :class:`rtk.lifecycle.RunInfo`)
    and returns an object implementing any of the lifecycle hooks (``rtk_run_start``,
    ``rtk_epoch_metrics``, ``rtk_stage_finish``, ``rtk_run_finish``, ...) as plain methods.
    ``requires`` names the modules it imports; when one is missing, planning fails with
    ``install`` as the hint (for example ``pip install 'rtk[wandb]'``).
    """

    build: Callable[[Any, Any], Any]
    requires: tuple[str, ...] = ()
    install: str = ""
    KIND: ClassVar[str] = "logger"
    HOOK: ClassVar[str] = "rtk_loggers"


#: Every kind of component, keyed by its name in messages and in ``rtk plugins``: the one
#: table of kinds (each record class carries its kind, hook and title).
KINDS: dict[str, type[ComponentSpec]] = {
    cls.KIND: cls
    for cls in (
        DatasetSpec,
        ModelSpec,
        TrainerSpec,
        AttackSpec,
        PrunerSpec,
        SimilaritySpec,
        CertifierSpec,
        StageSpec,
        CommandSpec,
        LoggerSpec,
    )
}


@dataclass(frozen=True)
class Registration:
    """Where a component came from."""

    spec: ComponentSpec
    plugin: str
    distribution: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }


# ---------------------------------------------------------------------------- declaring components
R = TypeVar("R", bound=ComponentSpec)
F = TypeVar("F", bound=Callable[..., Any])


class Components:
    """The components one plugin declares, collected where each is written, and the hook
    implementations that yield them.

    ::

        components = rtk.Components()


        @components.register(rtk.StageSpec, "count", CountOptions, check=check)
        def run(ctx, opts):
            \"\"\"count parameters\"\"\"  # the record's summary
            ...


        components.table(rtk.AttackSpec, [("my-noise", NoiseOptions, build_noise, "uniform noise")])
        rtk_stages = components.hookimpl(rtk.StageSpec)
        rtk_attacks = components.hookimpl(rtk.AttackSpec)

    Records are plain records: the registry checks them as it checks any a hook yields.
    """

    def __init__(self) -> None:
        self._records: list[ComponentSpec] = []

    def add(self, record: R) -> R:
        """Collect one record; returns it."""
        self._records.append(record)
        return record

    def register(
        self,
        record: type[ComponentSpec],
        name: str,
        options: type[Options] = NoOptions,
        *,
        summary: str | None = None,
        **fields: Any,
    ) -> Callable[[F], F]:
        """Decorator: collect ``record(name=name, options=options, <MAKE>=the decorated callable,
        summary=..., **fields)``, where ``<MAKE>`` is the record's ``build``, ``load`` or ``run``.
        ``summary`` defaults to the first paragraph of the callable's docstring, its lines joined.
        Returns the callable unchanged."""

        def collect(make: F) -> F:
            text = summary if summary is not None else _first_paragraph(make.__doc__)
            if not text:
                raise PluginError(
                    f"the {record.KIND} {name!r} has no summary: give {make.__qualname__} a docstring, or summary=..."
                )
            self.add(record(name=name, summary=text, options=options, **{record.MAKE: make}, **fields))
            return make

        return collect

    def table(
        self,
        record: type[ComponentSpec],
        rows: Iterable[tuple[str, type[Options], Callable[..., Any] | str, str]],
        *,
        module: str | None = None,
        **fields: Any,
    ) -> None:
        """Collect one record per row ``(name, options, make, summary)``, each with ``**fields``.

        ``make`` is the record's ``build``/``load``/``run``, or the name of a function of ``module``
        that takes the options' keys as keywords (:meth:`rtk.Options.as_kwargs`): it is imported
        when the component is first built, so that listing imports nothing heavy, and called with
        the record's other arguments first (``function(info, **options)`` for a model)."""
        for name, options, make, summary in rows:
            if isinstance(make, str):
                if module is None:
                    raise PluginError(f"the {record.KIND} {name!r} names the function {make!r}: give its module=")
                make = _keyword_call(module, make)
            self.add(record(name=name, summary=summary, options=options, **{record.MAKE: make}, **fields))

    def hookimpl(self, record: type[ComponentSpec]) -> Callable[[], Iterator[ComponentSpec]]:
        """The implementation of ``record``'s hook (``rtk_attacks`` for :class:`AttackSpec`, ...):
        it yields the records of that kind collected by the time it is called. Assign it to the
        hook's name in the plugin module: ``rtk_attacks = components.hookimpl(rtk.AttackSpec)``."""
        from .hookspecs import hookimpl  # hookspecs imports this module

        def hook() -> Iterator[ComponentSpec]:
            yield from (r for r in self._records if isinstance(r, record))

        hook.__name__ = hook.__qualname__ = record.HOOK
        return hookimpl(hook)


def _first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph, its lines joined by single spaces ("" for none)."""
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _keyword_call(module: str, function: str) -> Callable[..., Any]:
    """``module.function(*args, **options.as_kwargs())``, ``options`` being the last argument."""

    def make(*args: Any) -> Any:
        *leading, options = args
        return getattr(importlib.import_module(module), function)(*leading, **options.as_kwargs())

    make.__qualname__ = f"{module}.{function}"
    return make


# ---------------------------------------------------------------------------- results
# What a stage's ``run`` returns, and what a run hands back.
@dataclass
class StageResult:
    """What a stage hands back: tables (one row per model x attack x eps, ...), figures
    already written (name -> path), a markdown paragraph for the report, headline metrics."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """The outcome of ``rtk.run``: the run directory, every table, each stage's result."""

    path: Path
    tables: dict[str, pd.DataFrame]
    stages: dict[str, StageResult]
    report: Path

    def table(self, key: str) -> pd.DataFrame:
        """A table by ``"<stage-id>/<table>"`` or by its bare name when that is unique; a bare
        name two stages write is an :class:`RtkError` listing the stage-qualified names."""
        return table_by_key(self.tables, key)


def table_by_key(tables: dict[str, pd.DataFrame], key: str) -> pd.DataFrame:
    """``tables[key]`` for ``"<stage-id>/<table>"``, or the one table whose bare name is ``key``
    (:class:`RtkError` when several stages write it, listing their stage-qualified names)."""
    if key in tables:
        return tables[key]
    hits = [k for k in tables if k.split("/", 1)[1] == key]
    if len(hits) == 1:
        return tables[hits[0]]
    if hits:
        raise RtkError(f"table {key!r} is written by {len(hits)} stages; name one of: {', '.join(hits)}")
    raise KeyError(f"no table {key!r}; tables: {', '.join(tables)}")


__all__ = [
    "ComponentSpec",
    "AttackSpec",
    "TrainerSpec",
    "PrunerSpec",
    "SimilaritySpec",
    "CertifierSpec",
    "DatasetSpec",
    "ModelSpec",
    "StageSpec",
    "CommandSpec",
    "LoggerSpec",
    "KINDS",
    "Registration",
    "Components",
    "StageResult",
    "RunResult",
    "table_by_key",
    "field",
]
