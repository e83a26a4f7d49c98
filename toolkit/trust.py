"""Trust boundaries: names that become paths, writes kept inside a directory, untrusted options.

rtk trusts the user's own experiment file, command-line flags and the code the user names.
It does not trust checkpoints, run directories, zoo files or anything downloaded (see
``docs/security.md``). This module is the one home of the rules that follow from that:

- :func:`check_name`: one rule for every name that becomes a path (stage ids, model
  names, checkpoint tags, table and figure names);
- :func:`inside`: a path resolved (symlinks followed) and refused when it leaves its root;
- :func:`atomic_write`: a write through a temporary file created exclusively
  (``O_CREAT | O_EXCL | O_NOFOLLOW``), then renamed over the target, never following a
  planted symlink;
- :func:`untrusted_settings`: where a document read from an untrusted place asks for
  something only the user may ask for (``allow_unsafe_pickle = true``).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RtkError

#: The characters of a name (a regular-expression character class's body).
NAME_CHARS = r"A-Za-z0-9_.\-"
#: The name rule: a letter or digit first, then letters, digits, '-', '_' or '.'; no "..".
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][{NAME_CHARS}]*")
MAX_NAME_LENGTH = 128
NAME_RULE = (
    f"use 1 to {MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', starting with a letter or digit, without '..'"
)

#: Option keys that only the user's own experiment file or flags may turn on.
UNSAFE_KEYS = frozenset({"allow_unsafe_pickle"})


class UnsafePathError(RtkError):
    """A name or path would leave the directory it belongs to, or meets a planted symlink."""


class WriteError(RtkError, OSError):
    """A file could not be written (read-only folder, full disk, ...); names the file."""


def name_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid name (None when it is)."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__} {value!r}"
    if not value:
        return f"the name is empty; {NAME_RULE}"
    if len(value) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(value) or ".." in value:
        return f"invalid name {value!r}; {NAME_RULE}"
    return None


def slug(text: str, *, keep: str = "") -> str:
    """``text`` as a file name: each run of characters that a name does not allow (nor ``keep``)
    becomes one '_', and '_' at either end is dropped (the result may be empty)."""
    return re.sub(f"[^{NAME_CHARS}{re.escape(keep)}]+", "_", text).strip("_")


def check_name(value: Any, what: str) -> str:
    """Return ``value`` if it is a valid name, else raise :class:`UnsafePathError` naming ``what``."""
    problem = name_problem(value)
    if problem is not None:
        raise UnsafePathError(f"{what}: {problem}")
    return value


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` (relative paths are taken relative to ``root``) resolved, symlinks followed;
    raise :class:`UnsafePathError` when it is not inside ``root``."""
    base = Path(root).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else Path(root) / p).resolve()
    if full != base and base not in full.parents:
        raise UnsafePathError(
            f"{what} {str(path)!r} leads to {full}, outside {base}; rtk writes and reads run files only inside "
            "their directory (a symlink or '..' that leaves it is refused)"
        )
    return full


def atomic_write(path: str | os.PathLike, data: bytes | str, *, root: str | os.PathLike | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    The temporary file has a random name and is created with ``O_CREAT | O_EXCL |
    O_NOFOLLOW``, so an existing file or symlink is never opened; the rename replaces a
    symlink at ``path`` itself rather than its target. With ``root``, the folder must
    resolve inside ``root``.
    """
    given = Path(path)
    path = given.absolute()
    if root is not None:
        inside(root, path.parent, "folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    if root is not None:
        inside(root, path.parent, "folder")  # created folders may not have existed before
    payload = data.encode() if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # a 48-bit random name taken: someone planted it; do not touch it
        raise UnsafePathError(f"cannot create a temporary file beside {path}: {tmp.name} already exists") from None
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    return given


def _walk(doc: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            key = f"{where}.{k}" if where else str(k)
            yield key, k, v
            yield from _walk(v, key)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, f"{where}[{i}]")


def untrusted_settings(doc: Any) -> list[str]:
    """Key paths in ``doc`` (a parsed experiment, options table or checkpoint spec) that turn
    on an option only the user may turn on (``allow_unsafe_pickle = true``)."""
    return [path for path, key, value in _walk(doc, "") if key in UNSAFE_KEYS and value not in (False, None)]


__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_CHARS",
    "NAME_PATTERN",
    "NAME_RULE",
    "UNSAFE_KEYS",
    "UnsafePathError",
    "WriteError",
    "atomic_write",
    "check_name",
    "inside",
    "name_problem",
    "untrusted_settings",
]
