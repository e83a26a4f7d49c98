"""Lifecycle hooks: what a plugin sees of a run, and how the runner calls it.

The runner calls the lifecycle hooks of :mod:`rtk.hookspecs` at fixed points of a run:

- ``rtk_run_start(run)`` once the run directory holds the resolved config;
- ``rtk_stage_start(run, stage)`` before a stage runs;
- ``rtk_epoch_metrics(run, stage, epoch, metrics)`` after every epoch of the training loop
  (any stage that trains: train, fine-tune, prune's pre-training and fine-tuning);
- ``rtk_stage_finish(run, stage)`` after the stage's tables and figures are written (or after
  it failed);
- ``rtk_report_sections(run, stages)`` while the final ``report.md`` is written: each plugin
  yields :class:`ReportSection` records;
- ``rtk_run_finish(run, outcome)`` after the final report is written.

They receive the frozen records below. A hook implementation that raises is logged as a
warning naming its plugin and skipped: results already written are never lost. Under
``RTK_STRICT_PLUGINS=1`` it is an :class:`~rtk.errors.PluginError` instead (raised after the
results of the current step are on disk). Under torchrun only rank 0 calls the hooks.

Loggers (``rtk_loggers``) stand on these same hooks: a logger record builds, per run, an
object implementing some of them (see :mod:`rtk.plugins.loggers`).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import PluginError, suggest

if TYPE_CHECKING:  # only in annotations: the hook specs (and so `rtk plugins`) import no pandas
    import pandas as pd

log = logging.getLogger(__name__)

#: The lifecycle hooks, in the order a run calls them.
LIFECYCLE_HOOKS = (
    "rtk_run_start",
    "rtk_stage_start",
    "rtk_epoch_metrics",
    "rtk_stage_finish",
    "rtk_report_sections",
    "rtk_run_finish",
)


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


class _FreezeMappings:
    """Records hand plugins read-only views: mapping fields are frozen on construction."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, dict):
                object.__setattr__(self, name, _frozen(value))


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class RunInfo(_FreezeMappings):
    """The run a lifecycle hook is called for.

    ``path`` is the run directory (absolute); ``config`` the resolved experiment as written to
    ``config.json``; ``tags`` the experiment's ``tags`` (a study's point keys); ``resumed``
    whether this call continues an earlier run directory (``--resume``).
    """

    path: Path
    name: str
    config: Mapping[str, Any]
    tags: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    resumed: bool = False


@dataclass(frozen=True)
class StageInfo(_FreezeMappings):
    """One stage as a lifecycle hook sees it.

    ``status`` is ``"running"`` (``rtk_stage_start``, ``rtk_epoch_metrics``), ``"completed"``,
    ``"failed"``, or ``"not run"``. Once completed: ``tables`` (name -> DataFrame, as written
    to ``tables/<id>/<name>.csv``), ``figures`` (name -> path of the PNG), ``summary`` (the
    stage's report paragraph), ``metrics`` (its headline numbers) and ``seconds``. When
    failed: ``error``.
    """

    id: str
    kind: str
    index: int
    status: str = "running"
    tables: Mapping[str, pd.DataFrame] = field(default_factory=lambda: _frozen({}))
    figures: Mapping[str, Path] = field(default_factory=lambda: _frozen({}))
    summary: str = ""
    metrics: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class EpochMetrics(_FreezeMappings):
    """One epoch of the training loop: ``epoch`` as the loop counts it, ``round`` the how-many-th
    call of the loop within the stage (0 for the first; pruning trains more than once), and
    ``values``: every finite number of the epoch's history row (``train_loss``, ``lr``,
    ``test_clean_acc``, ``test_robust_acc``, ...)."""

    epoch: int
    values: Mapping[str, float]
    round: int = 0


@dataclass(frozen=True)
class RunOutcome(_FreezeMappings):
    """How a run ended: ``status`` (``"completed"`` or ``"failed"``), the ``report`` path,
    every ``tables`` entry (keyed ``"<stage-id>/<table>"``), every stage, and for a failed
    run the stage that ``failed`` and its ``error``."""

    status: str
    report: Path
    tables: Mapping[str, pd.DataFrame]
    stages: Sequence[StageInfo]
    failed: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ReportSection:
    """A section a plugin adds to ``report.md`` (``rtk_report_sections``): a ``## title``
    heading followed by ``body`` (markdown). Sections follow the stages, in plugin order."""

    title: str
    body: str


# ---------------------------------------------------------------------------- dispatch
@dataclass
class _Impl:
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]


class Lifecycle:
    """Calls one lifecycle hook on every plugin that implements it, each in isolation.

    ``plugin_manager`` supplies the installed plugins' implementations (through pluggy);
    ``observers`` adds per-run objects as ``(name, object)`` (the run's loggers), whose
    methods named like the hooks are called the same way. An implementation may accept any
    subset of the hook's arguments, as with pluggy.
    """

    def __init__(self, plugin_manager: Any = None, observers: Sequence[tuple[str, object]] = ()) -> None:
        self._pm = plugin_manager
        self._observers = list(observers)
        self._cache: dict[str, list[_Impl]] = {}

    def add_observer(self, name: str, obj: object) -> None:
        """Add a per-run observer; a method named like a hook that rtk does not have
        (``rtk_run_finsh``) is a problem naming it, since it would never be called."""
        for bad in unknown_hook_methods(obj):
            plugin_problem(
                f"{name!r} has a method {bad!r}, which is not a lifecycle hook{suggest(bad, LIFECYCLE_HOOKS)}"
            )
        self._observers.append((name, obj))
        self._cache.clear()

    def _impls(self, hook: str) -> list[_Impl]:
        if hook in self._cache:
            return self._cache[hook]
        impls: list[_Impl] = []
        caller = getattr(getattr(self._pm, "hook", None), hook, None)
        skipped = {f.name for f in getattr(self._pm, "failures", ())}  # the registry skipped them as a whole
        if caller is not None:  # pluggy's call order: last registered first
            for impl in reversed(caller.get_hookimpls()):
                if impl.plugin_name in skipped:
                    continue
                if impl.hookwrapper or getattr(impl, "wrapper", False):
                    log.warning("plugin %r: %s as a hook wrapper is not supported; ignored", impl.plugin_name, hook)
                    continue
                impls.append(_Impl(impl.plugin_name, impl.function, tuple(impl.argnames)))
        for name, obj in self._observers:
            fn = getattr(obj, hook, None)
            if callable(fn):
                impls.append(_Impl(name, fn, tuple(inspect.signature(fn).parameters)))
        self._cache[hook] = impls
        return impls

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call ``hook`` on every implementation; returns the results of those that
        succeeded (``None`` results dropped). A failure is a warning naming the plugin, or
        a :class:`PluginError` under ``RTK_STRICT_PLUGINS=1``."""
        results = []
        for impl in self._impls(hook):
            ok, out = self._call_one(impl, hook, kwargs)
            if ok and out is not None:
                results.append(out)
        return results

    @staticmethod
    def _call_one(impl: _Impl, hook: str, kwargs: dict[str, Any]) -> tuple[bool, Any]:
        try:
            out = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            if inspect.isgenerator(out):
                out = list(out)
            return True, out
        except Exception as exc:
            plugin_problem(f"plugin {impl.plugin!r} failed in {hook}: {type(exc).__name__}: {exc}", exc)
            return False, None

    def report_sections(self, run: RunInfo, stages: Sequence[StageInfo]) -> list[ReportSection]:
        """Every :class:`ReportSection` the plugins yield; anything else is a warning (or an
        error in strict mode) naming the plugin."""
        hook = "rtk_report_sections"
        sections: list[ReportSection] = []
        for impl in self._impls(hook):
            ok, out = self._call_one(impl, hook, {"run": run, "stages": stages})
            if not ok or out is None:
                continue
            items = [out] if isinstance(out, ReportSection | str) or not hasattr(out, "__iter__") else list(out)
            for item in items:
                if isinstance(item, ReportSection):
                    sections.append(item)
                else:
                    plugin_problem(
                        f"plugin {impl.plugin!r}: {hook} must yield ReportSection records, got {type(item).__name__}"
                    )
        return sections


def unknown_hook_methods(obj: object) -> list[str]:
    """Methods of ``obj`` named ``rtk_*`` that are not lifecycle hooks (misspellings)."""
    return sorted(
        n for n in dir(obj) if n.startswith("rtk_") and n not in LIFECYCLE_HOOKS and callable(getattr(obj, n))
    )


def call_hook(obj: object, hook: str, **kwargs: Any) -> Any:
    """Call ``obj``'s method ``hook`` (if it has one) with the arguments it accepts; errors
    propagate (the runner's calls go through :class:`Lifecycle`, which isolates them)."""
    fn = getattr(obj, hook, None)
    if not callable(fn):
        return None
    names = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in names})


def plugin_problem(msg: str, exc: BaseException | None = None) -> None:
    """A misbehaving hook implementation: a warning, or an error under ``RTK_STRICT_PLUGINS``."""
    from .registry import _strict

    if _strict():
        raise PluginError(msg + " (RTK_STRICT_PLUGINS is set)") from exc
    log.warning("%s; skipped, the run goes on", msg)


# ---------------------------------------------------------------------------- epochs
T = TypeVar("T")


@contextlib.contextmanager
def installed(var: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """``var`` set to ``value`` inside the block (what the runner or the CLI installs for the
    library code run inside it: an epoch listener, a progress display), restored after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


EpochListener = Callable[[EpochMetrics], None]
_EPOCH_LISTENER: contextvars.ContextVar[EpochListener | None] = contextvars.ContextVar(
    "rtk_epoch_listener", default=None
)


def finite_numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The entries of a history row that are finite real numbers (bools excluded)."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
                try:
                    v = v.item()
                except (ValueError, TypeError):
                    continue
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
            else:
                continue
        if math.isfinite(v):
            out[str(k)] = float(v)
    return out


def report_epoch(epoch: int, row: Mapping[str, Any]) -> None:
    """Called by the training loop after each epoch's history row is recorded; passes the
    row on to the listener the runner installed for the current stage (none outside a run)."""
    listener = _EPOCH_LISTENER.get()
    if listener is not None:
        listener(EpochMetrics(epoch, finite_numbers(row)))


def epoch_listener(listener: EpochListener | None) -> contextlib.AbstractContextManager[None]:
    """Install ``listener`` for the training loops run inside the block."""
    return installed(_EPOCH_LISTENER, listener)


class StageEpochs:
    """The runner's listener for one stage: numbers the rounds (a new round starts when the
    loop's epoch does not increase) and calls ``rtk_epoch_metrics``."""

    def __init__(self, lifecycle: Lifecycle, run: RunInfo, stage: StageInfo) -> None:
        self.lifecycle, self.run, self.stage = lifecycle, run, stage
        self.round = -1
        self._last: int | None = None

    def __call__(self, m: EpochMetrics) -> None:
        if self._last is None or m.epoch <= self._last:
            self.round += 1
        self._last = m.epoch
        metrics = EpochMetrics(m.epoch, m.values, self.round)
        self.lifecycle.call("rtk_epoch_metrics", run=self.run, stage=self.stage, epoch=m.epoch, metrics=metrics)


__all__ = [
    "EpochMetrics",
    "LIFECYCLE_HOOKS",
    "Lifecycle",
    "ReportSection",
    "RunInfo",
    "RunOutcome",
    "StageInfo",
    "epoch_listener",
    "finite_numbers",
    "installed",
    "plugin_problem",
    "call_hook",
    "unknown_hook_methods",
    "report_epoch",
]
