"""Lazy package faces (PEP 562): a face names what it exports and the submodule each name
lives in; importing the face imports none of them, and each submodule is imported on the first
use of one of its names.

This is what keeps ``rtk --help``, ``rtk plugins`` and ``rtk reference`` free of torch and
pandas: a built-in plugin imports its option models (``rtk.evaluation.AttackSuiteOptions``,
``rtk.data.DataOptions``) from a face at import time, and those live in modules that import
neither; the engine (``rtk.evaluation.evaluate``) is imported when a component is built.

A face::

    _face = LazyFace(__name__, {"request": ("AttackSuiteOptions", "Norm"), "engine": ("evaluate",)})
    __all__ = _face.names
    __getattr__ = _face.attr  # PEP 562; type checkers read a module's __getattr__ this way too
    __dir__ = _face.dir
"""

from __future__ import annotations

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
        sys.modules[package].__class__ = _FaceModule

    @classmethod
    def of_names(cls, package: str, where: Mapping[str, str]) -> LazyFace:
        """A face from ``name -> submodule``."""
        by_module: dict[str, list[str]] = {}
        for name, module in where.items():
            by_module.setdefault(module, []).append(name)
        return cls(package, by_module)

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
    """A face module. An export named like a submodule (``rtk.models.vgg``, the function of
    ``rtk/models/vgg.py``) stays the export, as with an eager ``from .vgg import vgg``: importing
    the submodule does not bind it over the name."""

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
