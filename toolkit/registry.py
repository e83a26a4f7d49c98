"""The plugin manager and the component registry.

``plugin_manager()`` builds a fresh :class:`pluggy.PluginManager` (never at import time):
the built-in plugins named in :data:`BUILTIN_PLUGINS`, then third-party plugins from the entry-point
group ``rtk``. ``Registry.from_plugin_manager(pm)`` collects every component record.

Environment switches:

- ``RTK_DISABLE_PLUGINS=a,b``: block plugins by name (built-ins are named ``rtk.<module>``).
- ``RTK_STRICT_PLUGINS=1``: a plugin that fails to load is fatal instead of skipped.
- ``RTK_NO_ENTRY_POINTS=1``: load only the built-in plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, overload

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownComponentError
from .records import (
    KINDS,
    AttackSpec,
    CertifierSpec,
    CommandSpec,
    ComponentSpec,
    DatasetSpec,
    ModelSpec,
    PrunerSpec,
    Registration,
    SimilaritySpec,
    StageSpec,
    TrainerSpec,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rtk"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    error: str


class RtkPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers distributions and load failures."""

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


#: The built-in plugins, loaded like any other plugin (by module name: the engine never
#: imports ``rtk.plugins`` itself). A new module in ``plugins/`` is listed here; a test
#: checks that this tuple and the package agree.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rtk.plugins.attacks",
    "rtk.plugins.certified_training",
    "rtk.plugins.certifiers",
    "rtk.plugins.datasets",
    "rtk.plugins.evaluation",
    "rtk.plugins.models",
    "rtk.plugins.pruners",
    "rtk.plugins.similarity",
    "rtk.plugins.trainers",
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


def _fail(pm: RtkPluginManager, name: str, exc: BaseException) -> None:
    if _strict():
        raise PluginError(
            f"plugin {name!r} failed to load: {type(exc).__name__}: {exc} (RTK_STRICT_PLUGINS is set)"
        ) from exc
    pm.failures.append(PluginFailure(name, f"{type(exc).__name__}: {exc}"))
    log.warning("plugin %r failed to load and was skipped: %s: %s", name, type(exc).__name__, exc)


def plugin_manager(
    *, builtins: bool = True, entry_points: bool | None = None, extra: Iterable[tuple[str, Any]] = ()
) -> RtkPluginManager:
    """Build a plugin manager.

    ``extra`` registers more plugins by ``(name, object)``, exactly as an installed one
    would be (used by tests and notebooks).
    """
    pm = RtkPluginManager()
    blocked = _blocked_names()
    for name in blocked:
        pm.set_blocked(name)
    if builtins:
        version = _rtk_version()
        for modname in builtin_plugin_modules():
            short = "rtk." + modname.rsplit(".", 1)[-1]
            if short in blocked:
                continue
            try:
                module = importlib.import_module(modname)
            except Exception as exc:  # a broken plugin is reported, not fatal
                _fail(pm, short, exc)
                continue
            pm.register(module, name=short)
            pm.distributions[short] = ("rtk", version)
    if entry_points is None:
        entry_points = os.environ.get("RTK_NO_ENTRY_POINTS", "") not in ("1", "true", "yes")
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                _fail(pm, ep.name, exc)
                continue
            pm.register(obj, name=ep.name)
            dist = getattr(ep, "dist", None)
            pm.distributions[ep.name] = (getattr(dist, "name", None), getattr(dist, "version", None))
    for name, obj in extra:
        if name in blocked:
            continue
        pm.register(obj, name=name)
        pm.distributions.setdefault(name, (None, None))
    pm.check_pending()
    return pm


class Registry:
    """Every registered component, by kind and name, with where it came from."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
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
        table[reg.spec.name] = reg

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager | None = None) -> Registry:
        pm = pm if pm is not None else plugin_manager()
        dists = getattr(pm, "distributions", {})
        reg = cls()
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                try:
                    produced = impl.function()
                    records = list(produced or ())
                except Exception as exc:
                    _fail_hook(pm, impl.plugin_name, hook_name, exc)
                    continue
                expected = KINDS[kind]
                for record in records:
                    if not isinstance(record, expected):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r}: hook {hook_name} must yield {expected.__name__} records, "
                            f"got {type(record).__name__}"
                        )
                    dist, version = dists.get(impl.plugin_name, (None, None))
                    reg.add(Registration(record, impl.plugin_name, dist, version))
        return reg

    # lookups -----------------------------------------------------------------
    @overload
    def get(self, kind: Literal["dataset"], name: str) -> DatasetSpec: ...
    @overload
    def get(self, kind: Literal["model"], name: str) -> ModelSpec: ...
    @overload
    def get(self, kind: Literal["trainer"], name: str) -> TrainerSpec: ...
    @overload
    def get(self, kind: Literal["attack"], name: str) -> AttackSpec: ...
    @overload
    def get(self, kind: Literal["pruner"], name: str) -> PrunerSpec: ...
    @overload
    def get(self, kind: Literal["similarity"], name: str) -> SimilaritySpec: ...
    @overload
    def get(self, kind: Literal["certifier"], name: str) -> CertifierSpec: ...
    @overload
    def get(self, kind: Literal["stage"], name: str) -> StageSpec: ...
    @overload
    def get(self, kind: Literal["command"], name: str) -> CommandSpec: ...
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


def _fail_hook(pm: pluggy.PluginManager, plugin: str, hook: str, exc: BaseException) -> None:
    if _strict():
        raise PluginError(f"plugin {plugin!r} failed in {hook}: {type(exc).__name__}: {exc}") from exc
    failures = getattr(pm, "failures", None)
    if failures is not None:
        failures.append(PluginFailure(plugin, f"{hook}: {type(exc).__name__}: {exc}"))
    log.warning("plugin %r failed in %s and was skipped: %s", plugin, hook, exc)


_DEFAULT: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """A registry over ``plugin_manager()``, built once per process on first use."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = Registry.from_plugin_manager(plugin_manager())
    return _DEFAULT
