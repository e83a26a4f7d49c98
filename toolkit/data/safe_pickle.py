"""A restricted unpickler for data files that come as pickles (CIFAR's python batches).

Unpickling can run arbitrary code: a pickle names functions and classes that the
loader imports and calls. This unpickler resolves only the handful of globals that a
pickled dict of lists, strings, bytes and numpy arrays needs (numpy's array
reconstructor, ``ndarray``, ``dtype``, scalars, and ``_codecs.encode`` which Python 3
uses for bytes in protocol 2). Any other global, or an object array, is refused with a
:class:`DataError` naming it.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError


def _numpy_attr(module: str, name: str) -> Any:
    """Resolve numpy's private reconstructors under both their numpy 1 and numpy 2 homes."""
    core = getattr(np, "_core", None)
    for mod in (core, getattr(np, "core", None)) if core is not None else (getattr(np, "core", None),):
        sub = getattr(mod, module, None)
        if sub is not None and hasattr(sub, name):
            return getattr(sub, name)
    raise DataError(f"numpy {np.__version__} has no {module}.{name}")  # pragma: no cover


def _allowed() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr("multiarray", "_reconstruct")
    scalar = _numpy_attr("multiarray", "scalar")
    frombuffer = _numpy_attr("numeric", "_frombuffer")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, bytes, numbers and numeric numpy arrays only."""

    def __init__(self, file: BinaryIO, *, where: str, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding, fix_imports=False)
        self.where = where
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle's hook
        try:
            return self._table[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: refusing to unpickle the global {module}.{name}; data pickles may hold "
                "only dicts, lists, strings, bytes, numbers and numpy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle's hook
        raise DataError(f"{self.where}: refusing a pickle with persistent references")


def _check_plain(obj: Any, where: str, depth: int = 0) -> None:
    if depth > 50:
        raise DataError(f"{where}: the pickle is nested too deeply for a data file")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{where}: refusing a numpy array of Python objects (dtype {obj.dtype})")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where, depth + 1)
            _check_plain(v, where, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_plain(v, where, depth + 1)


def safe_load(source: str | Path | bytes | BinaryIO, *, where: str | None = None, encoding: str = "latin1") -> Any:
    """Unpickle a data file (path, bytes or binary file) with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR's) the way torchvision does.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = where or str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
        fh: BinaryIO = io.BytesIO(data)
    elif isinstance(source, (bytes, bytearray)):
        fh, where = io.BytesIO(bytes(source)), where or "<bytes>"
    else:
        fh, where = source, where or getattr(source, "name", "<file>")
    try:
        obj = RestrictedUnpickler(fh, where=where, encoding=encoding).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or corrupt pickles raise many kinds of errors
        raise DataError(f"{where}: not a readable data pickle: {type(exc).__name__}: {exc}") from None
    _check_plain(obj, where)
    return obj


def str_keys(d: Any, where: str) -> dict[str, Any]:
    """A dict with ``bytes`` keys (Python 2 pickles read with ``encoding='bytes'``) turned into ``str``."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
