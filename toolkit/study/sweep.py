"""Sweeps: a ``[sweep]`` table turns one experiment file into a study of many points.

::

    [sweep]
    "models.net.width" = [1, 2, 4, 8]     # key path -> values: the cross product of every key
    seed = [0, 1, 2]

    [[sweep.zip]]                          # keys that vary together (lists of one length)
    "stages.train.trainer" = ["standard", "pgd-at"]
    "models.net.depth" = [2, 4]

The points are the cross product of every plain key and every zip group (a zip group is
one axis). Each point is the file with its values set as overrides (see
:mod:`rtk.study.overrides`), and every point is validated, against the registry too,
before the first one starts.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Experiment, read_toml
from ..errors import ConfigError
from ..trust import slug
from .overrides import apply_overrides, format_key_path, parse_key_path


@dataclass(frozen=True)
class StudyPoint:
    """One point of a study: its index, directory name, swept values and experiment."""

    index: int
    id: str
    values: dict[str, Any]
    experiment: Experiment

    @property
    def tags(self) -> dict[str, str | int | float | bool]:
        return tag_values(self.values)

    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.values.items())


@dataclass
class Study:
    """A validated study: the file, the overrides given for every point, the swept key
    paths (in order) and the points."""

    name: str
    source: str | None
    base_dir: str | None
    keys: list[str]
    overrides: dict[str, Any]
    points: list[StudyPoint]
    description: str = ""
    axes: list[list[str]] = field(default_factory=list)

    def point(self, point_id: str) -> StudyPoint:
        for p in self.points:
            if p.id == point_id:
                return p
        raise ConfigError(f"study {self.name!r} has no point {point_id!r}; points: {', '.join(self.ids())}")

    def ids(self) -> list[str]:
        return [p.id for p in self.points]

    def describe(self) -> str:
        axes = " x ".join("(" + ", ".join(a) + ")" if len(a) > 1 else a[0] for a in self.axes) or "(no sweep)"
        lines = [f"study {self.name!r}: {len(self.points)} points over {axes}"]
        for p in self.points:
            lines.append(f"  {p.id}: {p.label()}")
        return "\n".join(lines)


def has_sweep(path: str | os.PathLike) -> bool:
    """Whether an experiment file declares a ``[sweep]`` table."""
    return "sweep" in read_toml(path)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def tag_values(values: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """Swept values as tracker tags: scalars kept, tables and arrays as compact JSON."""
    return {k: v if isinstance(v, (str, int, float, bool)) else _show(v) for k, v in values.items()}


def _flatten(table: dict[str, Any], prefix: tuple[str, ...], where: str) -> dict[str, list[Any]]:
    """``{"models.net.width": [...]}`` or nested ``{models: {net: {width: [...]}}}`` -> key path -> values."""
    out: dict[str, list[Any]] = {}
    for raw_key, values in table.items():
        parts = prefix + parse_key_path(raw_key)
        key = format_key_path(parts)
        if isinstance(values, dict):
            out.update(_flatten(values, parts, where))
            continue
        if not isinstance(values, list):
            raise ConfigError(
                f"{where}.{key}: expected a list of values to sweep, got {type(values).__name__} {values!r}"
            )
        if not values:
            raise ConfigError(f"{where}.{key}: the list of values is empty; give at least one value")
        out[key] = values
    return out


def sweep_axes(sweep: Any) -> list[dict[str, list[Any]]]:
    """The axes of a ``[sweep]`` table: one per plain key, one per zip group."""
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: expected a table of key paths and lists, got {type(sweep).__name__}")
    plain = {k: v for k, v in sweep.items() if k != "zip"}
    axes: list[dict[str, list[Any]]] = [{k: v} for k, v in _flatten(plain, (), "sweep").items()]
    zips = sweep.get("zip", [])
    if isinstance(zips, dict):
        zips = [zips]
    if not isinstance(zips, list):
        raise ConfigError("sweep.zip: expected a table (or an array of tables) of key paths and equal-length lists")
    for i, group in enumerate(zips):
        where = f"sweep.zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: expected a non-empty table of key paths and equal-length lists")
        flat = _flatten(group, (), where)
        lengths = {k: len(v) for k, v in flat.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"{where}: keys that vary together need lists of one length; got "
                + ", ".join(f"{k}: {n}" for k, n in lengths.items())
            )
        axes.append(flat)
    seen: set[str] = set()
    for axis in axes:
        for k in axis:
            if k in seen:
                raise ConfigError(f"sweep: key {k} is swept twice; sweep each key path once")
            seen.add(k)
    if not axes:
        raise ConfigError("sweep: the table is empty; give at least one key path and its values")
    return axes


def _point_id(index: int, values: dict[str, Any]) -> str:
    """``p003-width=4-seed=1``: the last part of each key path (longer where two keys with
    different values share it); keys that vary together with one value appear once."""
    named: list[tuple[str, str]] = []
    for k, v in values.items():
        parts = parse_key_path(k)
        item = (parts[-1], _show(v))
        clash = [n for n, val in named if n == item[0] and val != item[1]]
        if clash:
            item = (".".join(parts[-2:]), item[1])
        if item not in named:
            named.append(item)
    named_values = slug("-".join(f"{n}={v}" for n, v in named), keep="=")[:60]
    return f"p{index:03d}" + (f"-{named_values}" if named_values else "")


def experiment_from_file(
    path: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
    registry: Any = None,
) -> Experiment:
    """One experiment from a file, leaving out its ``[sweep]`` table, with ``overrides``
    applied and ``tags`` added (a study point, or a run of one rebuilt for ``--resume``):
    :func:`rtk.load_experiment` with ``without_sweep=True``."""
    from ..planning import load_experiment

    return load_experiment(path, registry, overrides=overrides, tags=tags, base_dir=base_dir, without_sweep=True)


def load_study(
    path: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    registry: Any = None,
    base_dir: str | os.PathLike | None = None,
) -> Study:
    """Read an experiment file with a ``[sweep]`` table and validate every point.

    ``overrides`` apply to every point (they may also replace the sweep itself:
    ``{"sweep.seed": [0, 1]}``). ``base_dir`` is where relative paths in the file point
    (default: the file's folder). A file without a sweep is a study of one point. Raises one
    :class:`~rtk.ConfigError` listing every problem, each naming the points it concerns.
    """
    from ..planning import experiment_from_dict, plan
    from ..registry import default_registry

    p = Path(path)
    original = read_toml(p)
    src = str(p)
    data = apply_overrides(original, overrides, source=src) if overrides else dict(original)
    sweep = data.pop("sweep", None)
    try:
        axes = sweep_axes(sweep) if sweep is not None else []
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=src) from None
    registry = registry if registry is not None else default_registry()
    combos = list(itertools.product(*[list(zip(*axis.values())) for axis in axes])) if axes else [()]
    keys = [k for axis in axes for k in axis]
    clash = [k for k in (overrides or {}) if format_key_path(parse_key_path(k)) in keys]
    if clash:
        raise ConfigError(
            [f'{k}: this key is swept; change its values with the sweep itself (sweep."{k}" = [...])' for k in clash],
            source=src,
        )
    points: list[StudyPoint] = []
    problems: dict[str, list[str]] = {}
    base_dir = Path(base_dir) if base_dir is not None else p.parent.resolve()
    for index, combo in enumerate(combos):
        values: dict[str, Any] = {}
        for axis, chosen in zip(axes, combo):
            values.update(dict(zip(axis.keys(), chosen)))
        pid = _point_id(index, values)
        try:
            exp = experiment_from_dict(
                original,
                source=src,
                base_dir=base_dir,
                registry=registry,
                overrides={**(overrides or {}), **values},
                tags=tag_values(values),
                without_sweep=True,
            )
            plan(exp, registry)
        except ConfigError as exc:
            for problem in exc.problems:
                problems.setdefault(problem, []).append(pid)
            continue
        points.append(StudyPoint(index, pid, values, exp))
    if problems:
        every = len(combos)
        lines = []
        for problem, pids in problems.items():
            which = "every point" if len(pids) == every and every > 1 else "point " + ", ".join(pids[:5])
            if len(pids) > 5 and len(pids) != every:
                which += f" and {len(pids) - 5} more"
            lines.append(f"{problem} ({which})" if axes else problem)
        raise ConfigError(lines, source=src)
    first = points[0].experiment
    return Study(
        name=first.name,
        source=src,
        base_dir=str(base_dir),
        keys=keys,
        overrides=dict(overrides or {}),
        points=points,
        description=first.description,
        axes=[list(a) for a in axes],
    )
