"""Key-path overrides of an experiment file: ``--set stages.train.epochs=30``.

A key path is written like a TOML key (``models.net.width``, ``models."a.b".width``). Its
parts walk the experiment's table as read from the file:

- ``stages.<ref>`` picks a stage by its ``id``, its implicit id (``01-train``), its index
  (``stages.0``) or its ``kind`` when one stage has that kind;
- ``models.<name>`` must name a declared model;
- a number picks an element of any other array (``stages.evaluate.attacks.1.steps``);
- descending into a component given by name (``trainer = "pgd-at"``) turns it into a table
  (``{name = "pgd-at", eps = ...}``), so ``stages.train.trainer.eps=0.2`` works.

Overrides change the table *before* validation, so a bad value gets the error a file would
get, naming the key path. (``rtk run --set KEY=VALUE`` reads VALUE with the CLI's one reader
of command-line values: a TOML value, else the text.)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import tomllib

from ..errors import ConfigError, suggest


def parse_key_path(key: str) -> tuple[str, ...]:
    """``'models."a.b".width'`` -> ``("models", "a.b", "width")``."""
    text = key.strip()
    if not text:
        raise ConfigError("empty key path; write it like a TOML key, for example stages.train.epochs")
    try:
        table = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f'{key!r}: not a key path; write it like a TOML key (stages.train.epochs, models."a.b".width)'
        ) from None
    parts: list[str] = []
    node: Any = table
    while isinstance(node, dict):
        (name, node), *_ = node.items()
        parts.append(name)
    return tuple(parts)


def format_key_path(parts: tuple[str, ...] | list[str]) -> str:
    """The inverse of :func:`parse_key_path` (quotes the parts that need it)."""
    return ".".join(p if re.match(r"^[A-Za-z0-9_\-]+$", p) else f'"{p}"' for p in parts)


def stage_index(stages: list[Any], ref: str) -> int | None:
    """The index of the stage ``ref`` names (id, implicit id, index, or a unique kind)."""
    if re.fullmatch(r"\d+", ref):
        i = int(ref)
        return i if i < len(stages) else None
    ids = [_stage_id(st, i) for i, st in enumerate(stages)]
    if ref in ids:
        return ids.index(ref)
    kinds = [i for i, st in enumerate(stages) if isinstance(st, dict) and st.get("kind") == ref]
    return kinds[0] if len(kinds) == 1 else None


def _stage_id(st: Any, i: int) -> str:
    if not isinstance(st, dict):
        return str(i)
    sid = st.get("id")
    return str(sid) if sid is not None else f"{i + 1:02d}-{st.get('kind')}"


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """A copy of an experiment table with every ``key path -> value`` of ``overrides`` set.

    Raises one :class:`~rtk.ConfigError` listing every key path that leads nowhere (an
    unknown stage or model, an index out of range).
    """
    out = copy.deepcopy(data)
    problems: list[str] = []
    for key, value in overrides.items():
        try:
            _set(out, parse_key_path(key), copy.deepcopy(value), key)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, source=source)
    return out


def _set(root: dict[str, Any], parts: tuple[str, ...], value: Any, key: str) -> None:
    node: Any = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = format_key_path(parts[: depth + 1])
        if isinstance(node, list):
            if depth == 1 and parts[0] == "stages":
                idx = stage_index(node, part)
                if idx is None:
                    known = ", ".join(_stage_id(st, i) for i, st in enumerate(node)) or "(none)"
                    raise ConfigError(
                        f"{key}: no stage {part!r}{suggest(part, [_stage_id(s, i) for i, s in enumerate(node)])}; "
                        f"name a stage by id, index or unique kind; stages: {known}"
                    )
            elif re.fullmatch(r"\d+", part) and int(part) < len(node):
                idx = int(part)
            else:
                raise ConfigError(f"{key}: {where} must be an index below {len(node)} (the array there)")
            if last:
                node[idx] = value
                return
            if isinstance(node[idx], str):
                node[idx] = {"name": node[idx]}
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {format_key_path(parts[:depth])} holds a value, not a table")
        if depth == 1 and parts[0] == "models" and part not in node:
            raise ConfigError(
                f"{key}: no model {part!r}{suggest(part, node)}; models: {', '.join(node) or '(none declared)'}"
            )
        if last:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = [] if (depth == 0 and part == "stages") else {}
            node[part] = child
        elif isinstance(child, str):  # a component by name becomes a table: trainer = "pgd-at" -> {name = ...}
            child = {"name": child}
            node[part] = child
        node = child
