"""The plugin manager and the component registry.

``plugin_manager()`` builds a fresh :class:`pluggy.PluginManager` (never at import time):
the built-in plugins named in :data:`BUILTIN_PLUGINS`, then third-party plugins from the
entry-point group ``rtk``. ``Registry.from_plugin_manager(pm)`` collects every component
record.

Isolation: outside strict mode, a plugin that fails to import, implements a hook rtk does
not have (``rtk_atacks``), raises in a hook, yields a malformed record or registers a name
another plugin already has is skipped with one warning naming the plugin, its distribution
and the fix; every other plugin keeps working. Skipped plugins are listed in
``pm.failures`` (``rtk plugins`` prints them). At run time, an exception escaping a
component (its ``build``/``run``/``load``/``check``, and the attack or objective an attack or
trainer builds) becomes a :class:`ComponentError` naming the component, its kind and its
plugin: records are guarded once, when the registry stores them.

Environment switches:

- ``RTK_DISABLE_PLUGINS=a,b``: skip plugins by plugin name (built-ins are named
  ``rtk.<module>``, e.g. ``rtk.attacks``) or by distribution name (``rtk-example``; ``rtk``
  is the distribution of every built-in). A name that matches nothing gets a warning.
- ``RTK_STRICT_PLUGINS=1``: each of the isolation cases above (and an unknown name in
  ``RTK_DISABLE_PLUGINS``) is a :class:`PluginError` instead of a warning. Use it in CI.
- ``RTK_NO_ENTRY_POINTS=1``: load only the built-in plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

import pluggy

from . import hookspecs, records
from .errors import ComponentError, PluginError, RtkError, UnknownComponentError, suggest
from .options import Options
from .records import KINDS, ComponentSpec, Registration

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rtk"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped: its name, what was wrong, its distribution and the fix."""

    name: str
    error: str
    distribution: str | None = None
    fix: str = ""


class RtkPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers distributions and skipped plugins."""

    def __init__(self) -> None:
        super().__init__("rtk")
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.distributions: dict[str, tuple[str | None, str | None]] = {}


def _strict() -> bool:
    return os.environ.get("RTK_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _blocked_names() -> set[str]:
    raw = os.environ.get("RTK_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _dist_key(name: str | None) -> str:
    """A distribution name as pip compares them (case, ``-``, ``_`` and ``.`` alike)."""
    return re.sub(r"[-_.]+", "-", name or "").lower()


#: The built-in plugins, loaded like any other plugin (by module name: the engine never
#: imports ``rtk.plugins`` itself). A new module in ``plugins/`` is listed here; a test
#: checks that this tuple and the package agree.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rtk.plugins.attacks",
    "rtk.plugins.certified_training",
    "rtk.plugins.certifiers",
    "rtk.plugins.datasets",
    "rtk.plugins.evaluation",
    "rtk.plugins.loggers",
    "rtk.plugins.models",
    "rtk.plugins.pruners",
    "rtk.plugins.similarity",
    "rtk.plugins.sources",
    "rtk.plugins.trainers",
    "rtk.plugins.unforeseen",
    "rtk.plugins.zoo",
)


def builtin_plugin_modules() -> list[str]:
    """Module names of the built-in plugins (:data:`BUILTIN_PLUGINS`)."""
    return list(BUILTIN_PLUGINS)


def _rtk_version() -> str | None:
    try:
        return importlib.metadata.version("rtk")
    except importlib.metadata.PackageNotFoundError:
        return None


def _describe(name: str, dist: str | None, version: str | None) -> str:
    where = (
        f"distribution {dist} {version}" if dist and version else f"distribution {dist}" if dist else "no distribution"
    )
    return f"plugin {name!r} ({where})"


def _skip(
    failures: list[PluginFailure] | None, name: str, dist: str | None, version: str | None, problem: str, fix: str
) -> None:
    """One skipped plugin: a warning (or, in strict mode, a PluginError) naming plugin,
    distribution, what was wrong and the fix."""
    message = f"{_describe(name, dist, version)} {problem}. Fix: {fix}"
    if _strict():
        raise PluginError(f"{message} (RTK_STRICT_PLUGINS is set; unset it to skip the plugin instead)")
    if failures is not None:
        failures.append(PluginFailure(name, problem, dist, fix))
    log.warning("%s; the plugin was skipped", message)


def _disable_hint(name: str, dist: str | None) -> str:
    return f"RTK_DISABLE_PLUGINS={name}"


def _known_hooks() -> list[str]:
    return sorted(n for n in vars(hookspecs) if n.startswith("rtk_") and callable(getattr(hookspecs, n)))


def _register(pm: RtkPluginManager, name: str, obj: Any, dist: str | None, version: str | None) -> None:
    """Register one loaded plugin; skip it (with one warning) when pluggy rejects it or it
    implements a hook that has no specification."""
    fix_code = f"fix the plugin, upgrade or uninstall {dist or 'it'}, or disable it with {_disable_hint(name, dist)}"
    try:
        pm.register(obj, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        _skip(pm.failures, name, dist, version, f"could not be registered: {exc}", fix_code)
        return
    pm.distributions[name] = (dist, version)
    unknown = [c.name for c in pm.get_hookcallers(obj) or () if not c.has_spec()]
    if unknown:
        pm.unregister(obj)
        del pm.distributions[name]
        known = _known_hooks()
        named = ", ".join(f"{h!r}{suggest(h, known, n=1)}" for h in sorted(unknown))
        _skip(
            pm.failures,
            name,
            dist,
            version,
            f"implements hooks rtk does not have: {named}",
            f"rename the hook (rtk's hooks: {', '.join(known)}), or disable the plugin with "
            f"{_disable_hint(name, dist)}",
        )


def _load(
    pm: RtkPluginManager,
    name: str,
    load: Callable[[], Any],
    dist: str | None,
    version: str | None,
    blocked: set[str],
    matched: set[str],
) -> None:
    hits = {b for b in blocked if b == name or (dist and _dist_key(b) == _dist_key(dist))}
    if hits:
        matched |= hits
        log.info("%s is disabled by RTK_DISABLE_PLUGINS", _describe(name, dist, version))
        return
    if pm.has_plugin(name):
        return
    try:
        obj = load()
    except Exception as exc:  # a broken plugin is reported, not fatal
        _skip(
            pm.failures,
            name,
            dist,
            version,
            f"failed to import: {type(exc).__name__}: {exc}",
            f"fix the plugin, install what it needs, upgrade or uninstall {dist or 'it'}, "
            f"or disable it with {_disable_hint(name, dist)}",
        )
        return
    _register(pm, name, obj, dist, version)


def plugin_manager(
    *, builtins: bool = True, entry_points: bool | None = None, extra: Iterable[tuple[str, Any]] = ()
) -> RtkPluginManager:
    """Build a plugin manager.

    ``extra`` registers more plugins by ``(name, object)``, exactly as an installed one
    would be (used by tests and notebooks).
    """
    pm = RtkPluginManager()
    blocked = _blocked_names()
    matched: set[str] = set()
    seen: set[str] = set()
    if builtins:
        version = _rtk_version()
        for modname in BUILTIN_PLUGINS:
            short = "rtk." + modname.rsplit(".", 1)[-1]
            seen |= {short, "rtk"}
            _load(pm, short, functools.partial(importlib.import_module, modname), "rtk", version, blocked, matched)
    if entry_points is None:
        entry_points = os.environ.get("RTK_NO_ENTRY_POINTS", "") not in ("1", "true", "yes")
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dname, dversion = getattr(dist, "name", None), getattr(dist, "version", None)
            seen |= {ep.name, dname or ep.name}
            _load(pm, ep.name, ep.load, dname, dversion, blocked, matched)
    for name, obj in extra:
        seen.add(name)
        _load(pm, name, lambda obj=obj: obj, None, None, blocked, matched)
    _check_blocked(blocked, matched, seen)
    pm.check_pending()
    return pm


def _check_blocked(blocked: set[str], matched: set[str], seen: set[str]) -> None:
    seen_keys = {_dist_key(s) for s in seen}
    for name in sorted(blocked - matched):
        if name in seen or _dist_key(name) in seen_keys:
            continue
        message = (
            f"RTK_DISABLE_PLUGINS names {name!r}, which is neither a plugin nor a distribution of one"
            f"{suggest(name, sorted(seen))}; known: {', '.join(sorted(seen)) or '(none)'}"
        )
        if _strict():
            raise PluginError(message + " (RTK_STRICT_PLUGINS is set)")
        log.warning(message)


# ---------------------------------------------------------------------------- records
_CALLABLE_FIELDS = ("build", "run", "load", "check")


def record_problem(record: Any, expected: type[ComponentSpec]) -> str | None:
    """What is wrong with a record a hook yielded (None when it is well formed)."""
    if not isinstance(record, expected):
        return f"expected {expected.__name__} records, got {type(record).__name__}"
    if not isinstance(record.name, str) or not record.name.strip() or record.name != record.name.strip():
        return f"{expected.__name__}.name must be a non-empty string without surrounding spaces, got {record.name!r}"
    if not isinstance(record.summary, str):
        return f"{expected.__name__} {record.name!r}: summary must be a string, got {type(record.summary).__name__}"
    if not (isinstance(record.options, type) and issubclass(record.options, Options)):
        return f"{expected.__name__} {record.name!r}: options must be a subclass of rtk.Options, got {record.options!r}"
    for f in dataclasses.fields(record):
        if f.name in _CALLABLE_FIELDS:
            value = getattr(record, f.name)
            if not callable(value) and not (f.name == "check" and value is None):
                return f"{expected.__name__} {record.name!r}: {f.name} must be callable, got {type(value).__name__}"
    return None


@dataclass(frozen=True)
class Origin:
    """Which component a piece of work belongs to: kind, name, plugin, distribution."""

    kind: str
    name: str
    plugin: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        dist = f", {self.distribution} {self.version}" if self.distribution and self.version else ""
        return f"{self.kind} {self.name!r} (plugin {self.plugin!r}{dist})"

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Re-raise an exception escaping the component as a ComponentError naming it; rtk's
        own errors (already clear) pass through unchanged."""
        try:
            yield
        except RtkError:
            raise
        except Exception as exc:
            raise ComponentError(self.describe(), exc) from exc


class GuardedCall:
    """What a guarded attack or trainer builds: the component's callable, called under its
    :meth:`Origin.errors`; every attribute is the wrapped object's (``eps_at``, ...)."""

    __slots__ = ("_target", "_origin")

    def __init__(self, target: Callable[..., Any], origin: Origin) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_origin", origin)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._origin.errors():
            return self._target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in GuardedCall.__slots__:  # not yet set (copying): no recursion
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "_target"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return repr(self._target)

    def __reduce__(self) -> tuple[Any, ...]:  # copy, deepcopy and pickle rebuild the guard
        return (GuardedCall, (self._target, self._origin))


#: kinds whose ``build`` returns a callable the engine calls later (guarded too)
_CALLABLE_RESULTS = ("attack", "trainer")


def _guarded(fn: Callable[..., Any], origin: Origin, wrap_result: bool) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with origin.errors():
            result = fn(*args, **kwargs)
        if wrap_result and callable(result) and not isinstance(result, GuardedCall):
            return GuardedCall(result, origin)
        return result

    call.rtk_origin = origin  # type: ignore[attr-defined]
    return call


def guard(spec: ComponentSpec, origin: Origin) -> ComponentSpec:
    """The record with its callables guarded by ``origin`` (idempotent)."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name in _CALLABLE_FIELDS and callable(value) and not hasattr(value, "rtk_origin"):
            wrap = f.name == "build" and spec.KIND in _CALLABLE_RESULTS
            changes[f.name] = _guarded(value, origin, wrap)
    return dataclasses.replace(spec, **changes) if changes else spec


class Registry:
    """Every registered component, by kind and name, with where it came from."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        #: the manager the records came from; the runner calls its lifecycle hooks
        self.plugin_manager: pluggy.PluginManager | None = None
        for reg in registrations:
            self.add(reg)

    def add(self, reg: Registration) -> None:
        kind = reg.spec.KIND
        table = self._by_kind.setdefault(kind, {})
        other = table.get(reg.spec.name)
        if other is not None:
            raise PluginError(
                f"two plugins register the {kind} {reg.spec.name!r}: {other.plugin!r} and {reg.plugin!r}; "
                f"disable one with RTK_DISABLE_PLUGINS={reg.plugin}"
            )
        origin = Origin(kind, reg.spec.name, reg.plugin, reg.distribution, reg.version)
        table[reg.spec.name] = dataclasses.replace(reg, spec=guard(reg.spec, origin))

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager | None = None) -> Registry:
        """Collect the records of every plugin, plugin by plugin in registration order
        (built-ins first). A plugin whose hook raises, yields a malformed record or claims a
        name that is taken is skipped as a whole (see the module docstring)."""
        pm = pm if pm is not None else plugin_manager()
        dists: dict[str, tuple[str | None, str | None]] = getattr(pm, "distributions", {})
        failures: list[PluginFailure] | None = getattr(pm, "failures", None)
        impls: dict[str, list[tuple[str, str, Any]]] = {}
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            caller = getattr(pm.hook, hook_name, None)
            for impl in caller.get_hookimpls() if caller is not None else ():
                impls.setdefault(impl.plugin_name, []).append((hook_name, kind, impl))
        order = [name for name, _ in pm.list_name_plugin()]
        order += [name for name in impls if name not in order]
        reg = cls()
        reg.plugin_manager = pm
        for plugin in order:
            dist, version = dists.get(plugin, (None, None))
            found, problem = _collect(plugin, impls.get(plugin, []))
            fix = (
                f"fix the plugin, upgrade or uninstall {dist or 'it'}, or disable it with {_disable_hint(plugin, dist)}"
            )
            if problem is None:
                problem, fix = reg._conflict(plugin, dist, found) or (None, fix)
            if problem is not None:
                _skip(failures, plugin, dist, version, problem, fix)
                continue
            for record in found:
                reg.add(Registration(record, plugin, dist, version))
        return reg

    def _conflict(self, plugin: str, dist: str | None, found: list[ComponentSpec]) -> tuple[str, str] | None:
        names: set[tuple[str, str]] = set()
        for record in found:
            key = (record.KIND, record.name)
            other = self._by_kind.get(record.KIND, {}).get(record.name)
            if other is not None:
                return (
                    f"registers the {record.KIND} {record.name!r}, which {_describe(other.plugin, other.distribution, other.version)} "
                    f"already registers",
                    f"rename the {record.KIND} in {plugin!r}, or disable one of the two plugins with "
                    f"{_disable_hint(plugin, dist)} or {_disable_hint(other.plugin, other.distribution)}",
                )
            if key in names:
                return (
                    f"registers the {record.KIND} {record.name!r} twice",
                    f"give each {record.KIND} of {plugin!r} its own name",
                )
            names.add(key)
        return None

    # lookups -----------------------------------------------------------------
    @overload
    def get(self, kind: Literal["dataset"], name: str) -> records.DatasetSpec: ...
    @overload
    def get(self, kind: Literal["model"], name: str) -> records.ModelSpec: ...
    @overload
    def get(self, kind: Literal["trainer"], name: str) -> records.TrainerSpec: ...
    @overload
    def get(self, kind: Literal["attack"], name: str) -> records.AttackSpec: ...
    @overload
    def get(self, kind: Literal["pruner"], name: str) -> records.PrunerSpec: ...
    @overload
    def get(self, kind: Literal["similarity"], name: str) -> records.SimilaritySpec: ...
    @overload
    def get(self, kind: Literal["certifier"], name: str) -> records.CertifierSpec: ...
    @overload
    def get(self, kind: Literal["stage"], name: str) -> records.StageSpec: ...
    @overload
    def get(self, kind: Literal["command"], name: str) -> records.CommandSpec: ...
    @overload
    def get(self, kind: Literal["logger"], name: str) -> records.LoggerSpec: ...
    @overload
    def get(self, kind: str, name: str) -> ComponentSpec: ...
    def get(self, kind: str, name: str) -> ComponentSpec:
        """The record of the component ``name`` of ``kind`` (:class:`UnknownComponentError` with
        suggestions when there is none)."""
        return self.registration(kind, name).spec

    def registration(self, kind: str, name: str) -> Registration:
        table = self._by_kind.get(kind)
        if table is None:
            raise UnknownComponentError("kind", kind, KINDS)
        try:
            return table[name]
        except KeyError:
            raise UnknownComponentError(kind, name, table) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind.get(kind, {}))

    def specs(self, kind: str) -> list[ComponentSpec]:
        return [self._by_kind[kind][n].spec for n in self.names(kind)]

    def registrations(self, kind: str | None = None) -> list[Registration]:
        kinds = [kind] if kind else list(self._by_kind)
        return [self._by_kind[k][n] for k in kinds for n in sorted(self._by_kind.get(k, {}))]

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._by_kind.get(kind, {})


def _collect(plugin: str, impls: list[tuple[str, str, Any]]) -> tuple[list[ComponentSpec], str | None]:
    """Call a plugin's collection hooks: its records, or the first problem found."""
    found: list[ComponentSpec] = []
    for hook_name, kind, impl in impls:
        try:
            produced = list(impl.function() or ())
        except Exception as exc:
            return [], f"raised {type(exc).__name__} in its hook {hook_name}: {exc}"
        for record in produced:
            bad = record_problem(record, KINDS[kind])
            if bad is not None:
                return [], f"yielded a malformed record from {hook_name}: {bad}"
            found.append(record)
    return found, None


_DEFAULT: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """A registry over ``plugin_manager()``, built once per process on first use."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = Registry.from_plugin_manager(plugin_manager())
    return _DEFAULT
