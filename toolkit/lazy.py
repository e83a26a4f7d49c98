"""Lazy package faces (PEP 562): a face names what it exports and the submodule each name
lives in; importing the face imports none of them, and each submodule is imported on the first
use of one of its names.

This is what keeps ``rtk --help``, ``rtk plugins`` and ``rtk reference`` free of torch and
pandas: a built-in plugin imports its option models (``rtk.evaluation.AttackSuiteOptions``,
``rtk.data.DataOptions``) from a face at import time, and those live in modules that import
neither; the engine (``rtk.evaluation.evaluate``) is imported when a component is built.

A face names its exports once, as the relative imports of its ``if TYPE_CHECKING:`` block (so
type checkers and editors see each export's own type), and hands itself to
:meth:`LazyFace.declared`, which reads that block from the source (nothing is imported) and
makes the module a face: its ``__all__`` (the names in the order imported), its missing
attributes (PEP 562's ``__getattr__``, each submodule imported on the first use of one of its
names) and its ``dir()``::

    from typing import TYPE_CHECKING

    from ..lazy import LazyFace

    LazyFace.declared(__name__)

    if TYPE_CHECKING:
        from .engine import evaluate
        from .request import AttackSuiteOptions, Norm
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any


class LazyFace:
    """The exports of package ``package``: submodule (relative to the package) -> its public names."""

    def __init__(self, package: str, exports: Mapping[str, Iterable[str]]) -> None:
        self.package = package
        self.where: dict[str, str] = {}
        for module, names in exports.items():
            for name in names:
                if name in self.where:
                    raise ValueError(f"{package}: {name!r} is exported by both .{self.where[name]} and .{module}")
                self.where[name] = module
        #: every exported name, in the order given (the face's ``__all__``)
        self.names: list[str] = list(self.where)
        face = sys.modules[package]
        face.__class__ = _FaceModule
        face.__all__ = self.names  # type: ignore[attr-defined]
        face._face = self  # type: ignore[attr-defined]

    @classmethod
    def declared(cls, package: str) -> LazyFace:
        """The face whose table is the relative imports of the ``if TYPE_CHECKING:`` block of
        package ``package``'s source (read, not run: nothing is imported)."""
        face = sys.modules[package]
        get_source = getattr(face.__spec__.loader, "get_source", None) if face.__spec__ else None
        source = get_source(package) if get_source is not None else None
        if source is None:
            raise ImportError(f"{package}: its source cannot be read, so its exports are unknown")
        exports: dict[str, list[str]] = {}
        for node in ast.parse(source).body:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for imp in node.body:
                    if not (
                        isinstance(imp, ast.ImportFrom)
                        and imp.level == 1
                        and imp.module
                        and not any(a.asname for a in imp.names)
                    ):
                        raise ImportError(
                            f"{package}, line {imp.lineno}: its TYPE_CHECKING block may hold only "
                            "'from .module import name, ...' (the face's exports, each under its own name)"
                        )
                    exports.setdefault(imp.module, []).extend(a.name for a in imp.names)
        return cls(package, exports)

    def attr(self, name: str) -> Any:
        """The face's attribute ``name``: an export (its submodule imported now, the value kept on
        the face so later look-ups skip this), else a submodule reached as an attribute."""
        module = self.where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f"{self.package}.{module}"), name)
            setattr(sys.modules[self.package], name, value)
            return value
        if not name.startswith("__"):
            try:  # subpackages and submodules: rtk.evaluation, rtk.evaluation.engine, ...
                return importlib.import_module(f"{self.package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.package}.{name}":
                    raise
        raise AttributeError(f"module {self.package!r} has no attribute {name!r}")

    def dir(self) -> list[str]:
        return sorted(set(vars(sys.modules[self.package])) | set(self.where))


class _FaceModule(types.ModuleType):
    """A face module: its ``dir()`` lists its exports too. An export named like a submodule
    (``rtk.models.vgg``, the function of ``rtk/models/vgg.py``) stays the export, as with an eager
    ``from .vgg import vgg``: importing the submodule does not bind it over the name."""

    def __getattr__(self, name: str) -> Any:  # what the module itself lacks (PEP 562's hook, on the class)
        face = self.__dict__.get("_face")
        if not isinstance(face, LazyFace):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return face.attr(name)

    def __dir__(self) -> list[str]:
        face = self.__dict__.get("_face")
        return face.dir() if isinstance(face, LazyFace) else super().__dir__()

    def __setattr__(self, name: str, value: Any) -> None:
        face = self.__dict__.get("_face")
        if (
            isinstance(face, LazyFace)
            and name in face.where
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{face.package}.{name}"
        ):
            return
        super().__setattr__(name, value)
