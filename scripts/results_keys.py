"""The values a results page was last rendered with, kept beside its template.

    from results_keys import carry_over

A results page (``docs/results/paperN.md``) is its template with every ``{key}`` replaced by a
number or a table computed from run directories. Run directories are large and do not travel
with the repository, so a later session that reruns only some experiments (say the designed
studies) would otherwise lose every section whose runs are no longer on disk. Each render
therefore stores its values in ``<out>/paperN/keys.json``; :func:`carry_over` takes the values a
render could not compute (their run directory is absent) from that file, names them, and writes
the merged set back. A value computed from runs always replaces a stored one.

:func:`recover` rebuilds the stored values of a page rendered before this file existed, by
matching the rendered page against its template (every literal part of the template must appear
in the page in order; a value is what stands between two of them).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path

# A template's pieces: (literal text, the key that follows it or None at the end).
Pieces = list[tuple[str, "str | None"]]


def brace_pieces(template: str) -> Pieces:
    """Pieces of a template whose keys are ``{name}`` (results_paper1.py's renderer)."""
    out: Pieces = []
    pos = 0
    for m in re.finditer(r"\{([A-Za-z0-9_./|@ -]+)\}", template):
        out.append((template[pos : m.start()], m.group(1)))
        pos = m.end()
    out.append((template[pos:], None))
    return out


def format_pieces(template: str) -> Pieces:
    """Pieces of a ``str.format`` template (results_paper2.py's renderer; ``{{`` is a brace)."""
    return [(lit, field) for lit, field, _spec, _conv in string.Formatter().parse(template)]


def recover(pieces: Pieces, rendered: str) -> dict[str, str] | None:
    """The values that turn the template into ``rendered``, or None if it was not rendered from it."""
    pattern, names = "^", []
    for literal, key in pieces:
        pattern += re.escape(literal)
        if key is not None:
            pattern += "(.*?)"
            names.append(key)
    m = re.match(pattern + "$", rendered, flags=re.S)
    if m is None:
        return None
    values: dict[str, str] = {}
    for key, value in zip(names, m.groups(), strict=True):
        if values.setdefault(key, value) != value:
            return None  # one key rendered two ways: not this template
    return values


def carry_over(
    computed: Mapping[str, str],
    template: str,
    pieces: Callable[[str], Pieces],
    store: Path,
    page: Path,
) -> tuple[dict[str, str], list[str]]:
    """``computed`` completed with the stored values of the keys it lacks; writes ``store``.

    Returns the merged values and the sorted names of the keys taken from earlier renders. The
    stored values come from ``store`` (JSON) or, the first time, from the page as last rendered.
    """
    stored: dict[str, str] = {}
    if store.exists():
        stored = json.loads(store.read_text())
    elif page.exists():
        stored = recover(pieces(template), page.read_text()) or {}
    wanted = {key for _, key in pieces(template) if key is not None}
    carried = sorted(k for k in wanted if k not in computed and k in stored)
    merged = {**{k: stored[k] for k in carried}, **computed}
    store.write_text(json.dumps({k: merged[k] for k in sorted(merged) if k in wanted}, indent=1) + "\n")
    return merged, carried
