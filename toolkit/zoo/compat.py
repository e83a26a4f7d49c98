"""Importing robustbench 1.1.1 as released, without patching site-packages.

robustbench 1.1.1 imports ``autoattack`` (``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``), but the package PyPI installs for it,
``pyautoattack``, holds the same code under the module name ``pyautoattack``. Its
``loaders`` module also imports ``pkg_resources`` (setuptools < 81).

:func:`import_robustbench` registers the ``pyautoattack`` modules under the names
``autoattack`` and ``autoattack.<sub>`` in :data:`sys.modules` (only when no genuine
``autoattack`` package is importable), then imports robustbench. It is idempotent: a
second call returns the module already imported.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import logging
import sys
import warnings
from types import ModuleType

from ..errors import RtkError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rtk[zoo]'"


class ZooError(RtkError):
    """A problem with the RobustBench zoo (unknown entry, unsupported entry, data mismatch)."""


class ZooUnavailableError(ZooError):
    """robustbench (the optional extra ``rtk[zoo]``) is not installed or cannot be imported."""


def _alias_pyautoattack() -> bool:
    """Make ``import autoattack`` resolve to ``pyautoattack``. Returns True when aliased."""
    existing = sys.modules.get("autoattack")
    if existing is not None:
        return getattr(existing, "__name__", "") == "pyautoattack"
    try:
        genuine = importlib.util.find_spec("autoattack")
    except (ImportError, ValueError):
        genuine = None
    if genuine is not None:  # the GitHub package named autoattack is installed: use it as is
        return False
    try:
        package = importlib.import_module("pyautoattack")
        importlib.import_module("pyautoattack.state")
    except ImportError:
        return False
    sys.modules["autoattack"] = package
    for name, module in list(sys.modules.items()):
        if name.startswith("pyautoattack.") and module is not None:
            sys.modules.setdefault("autoattack." + name[len("pyautoattack.") :], module)
    return True


def import_robustbench() -> ModuleType:
    """Import and return ``robustbench`` (with ``robustbench.model_zoo`` and ``.utils`` loaded).

    Raises :class:`ZooUnavailableError` naming ``pip install 'rtk[zoo]'`` when it is absent
    or does not import.
    """
    module = sys.modules.get("robustbench")
    if module is not None and "robustbench.model_zoo" in sys.modules and "robustbench.utils" in sys.modules:
        return module
    aliased = _alias_pyautoattack()
    if aliased:
        log.debug("registered pyautoattack as 'autoattack' for robustbench")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", category=UserWarning)  # pkg_resources is deprecated
            warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.interface
            warnings.simplefilter("ignore", category=DeprecationWarning)
            module = importlib.import_module("robustbench")
            importlib.import_module("robustbench.model_zoo")
            importlib.import_module("robustbench.utils")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        hint = ""
        if missing == "pkg_resources":
            hint = " (robustbench imports pkg_resources, which needs setuptools<81)"
        elif missing in ("autoattack", "pyautoattack"):
            hint = " (robustbench needs the pyautoattack package)"
        raise ZooUnavailableError(
            f"the RobustBench zoo needs robustbench 1.1.1, which could not be imported: {exc}{hint}. "
            f"It is an optional extra of rtk: install it with {INSTALL_HINT}"
        ) from exc
    return module


def robustbench_available() -> bool:
    """True when :func:`import_robustbench` succeeds."""
    try:
        import_robustbench()
    except ZooUnavailableError:
        return False
    return True


def robustbench_version() -> str | None:
    try:
        return importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return None
