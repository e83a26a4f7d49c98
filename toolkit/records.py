"""The records that plugins yield from their hooks.

Each record names one component, documents its options as a pydantic model
(``extra="forbid"``), and carries the callable that builds it. Records are frozen
dataclasses; building is lazy, so listing plugins never imports heavy libraries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .errors import RtkError
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
class DatasetSpec(ComponentSpec):
    """A dataset. ``load(options)`` returns a :class:`rtk.data.DatasetBundle` whose images
    are float tensors in [0, 1]. ``check(options)``, when given, returns problems found
    before any work starts (missing files), without loading the data."""

    load: Callable[[Any], Any]
    check: Callable[[Any], Iterable[str]] | None = None
    #: for a *source* (``name = "python:<file.py>:<callable>"``): the syntax after ``name:``,
    #: which the experiment file passes as the option ``source``
    source: str | None = None
    KIND: ClassVar[str] = "dataset"
    HOOK: ClassVar[str] = "rtk_datasets"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **({"source": self.source} if self.source else {})}


@dataclass(frozen=True, kw_only=True)
class ModelSpec(ComponentSpec):
    """An architecture. ``build(info, options)`` returns an ``nn.Module`` for a dataset
    described by ``info`` (a :class:`rtk.data.DataInfo`). The module takes inputs in
    [0, 1] and normalizes them itself; it returns logits. ``check(options)``, when given,
    returns problems found before any work starts (a missing file, an unknown callable).
    ``source``: see :class:`DatasetSpec` (``arch = "torchvision:<name>"``)."""

    build: Callable[[Any, Any], Any]
    check: Callable[[Any], Iterable[str]] | None = None
    source: str | None = None
    KIND: ClassVar[str] = "model"
    HOOK: ClassVar[str] = "rtk_models"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **({"source": self.source} if self.source else {})}


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
    "StageResult",
    "RunResult",
    "table_by_key",
    "field",
]
