"""Planning: an experiment resolved against the registry before any work.

``plan(experiment, registry)`` resolves every component (dataset, models, stages, loggers)
and validates every option, raising one :class:`~rtk.ConfigError` that lists every problem,
each naming the file and key path. ``experiment_from_dict`` and ``load_experiment`` read an
experiment (its structure is :mod:`rtk.config`'s) and, when the structure has problems, plan
what is usable, so one error lists every problem. Key-path overrides (``--set``, a study
point's values) are applied here, in one place, before validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Experiment, read_structure, read_toml
from .errors import ConfigError, RtkError, UnknownComponentError, suggest
from .options import validate_options
from .records import Registration, StageSpec
from .refs import ModelRef, resolve_refs
from .registry import Registry, default_registry
from .trust import name_problem


@dataclass
class PlannedStage:
    index: int
    id: str
    kind: str
    spec: StageSpec
    options: Any


@dataclass
class PlannedModel:
    name: str
    arch: str
    spec: Any
    options: Any
    raw_options: dict[str, Any]
    checkpoint: Path | None
    init: Path | None = None
    strict: bool = True


@dataclass
class PlannedLogger:
    name: str
    spec: Any
    options: Any
    plugin: str


@dataclass
class Plan:
    experiment: Experiment
    registry: Registry
    dataset_spec: Any
    dataset_options: Any
    models: dict[str, PlannedModel]
    stages: list[PlannedStage]
    loggers: list[PlannedLogger] = field(default_factory=list)

    def describe(self) -> str:
        e = self.experiment
        lines = [
            f"experiment {e.name!r} (seed {e.seed}, device {e.device})",
            f"  dataset: {self.dataset_spec.name} {_fmt_opts(self.dataset_options)}",
        ]
        for m in self.models.values():
            ck = f" from {m.checkpoint}" if m.checkpoint else ""
            lines.append(f"  model {m.name}: {m.arch} {_fmt_opts(m.options)}{ck}")
        for s in self.stages:
            lines.append(f"  stage {s.id}: {s.kind} {_fmt_opts(s.options)}")
        for lg in self.loggers:
            lines.append(f"  logger {lg.name} {_fmt_opts(lg.options)}")
        return "\n".join(lines)


def _fmt_opts(opts: Any) -> str:
    if opts is None:
        return ""
    data = opts.model_dump(exclude_defaults=True) if hasattr(opts, "model_dump") else dict(opts)
    return "(" + ", ".join(f"{k}={v}" for k, v in data.items()) + ")" if data else ""


@dataclass
class Planning:
    """What a stage's ``check`` sees: the registry, the models known at that point
    (declared ones plus those produced by earlier stages; a check may add the names its
    stage will produce), the dataset, and the key path of the stage for messages."""

    registry: Registry
    models: set[str]
    where: str
    experiment: Experiment
    tags: dict[str, set[str]] = field(default_factory=dict)

    def check_model(self, name: str, key: str) -> list[str]:
        """Problems if ``name`` (``model`` or ``model@tag``) is not known at this point."""
        base = ModelRef.parse(name).name
        if base in self.models:
            return []
        known = ", ".join(sorted(self.models)) or "(none declared)"
        return [f"{self.where}.{key}: unknown model {name!r}{suggest(base, self.models)}; models known here: {known}"]


def _relative_to_experiment(opts: Any, experiment: Experiment) -> Any:
    """Options that name files (``relative_to(base)``, e.g. ``python:net.py:Net``) resolved
    against the experiment file's folder."""
    rebase = getattr(opts, "relative_to", None)
    if callable(rebase) and experiment.base_dir:
        return rebase(Path(experiment.base_dir))
    return opts


def plan(experiment: Experiment, registry: Registry | None = None) -> Plan:
    """Resolve every component and validate every option. Raises one ConfigError listing
    every problem found, each naming the file and key path."""
    registry = registry if registry is not None else default_registry()
    src = experiment.source
    problems: list[str] = []

    dataset_spec = dataset_opts = None
    try:
        dataset_spec = registry.get("dataset", experiment.dataset.name)
        dataset_opts = validate_options(dataset_spec.options, experiment.dataset.options, "dataset")
        root = getattr(dataset_opts, "root", None)
        if isinstance(root, str) and root and not Path(root).expanduser().is_absolute() and experiment.base_dir:
            # a relative data root is relative to the experiment file, not to the working directory
            dataset_opts = dataset_opts.model_copy(update={"root": str(experiment.resolve_path(root))})
        dataset_opts = _relative_to_experiment(dataset_opts, experiment)
        check = getattr(dataset_spec, "check", None)
        if check is not None:
            problems.extend(f"dataset: {p}" for p in check(dataset_opts) or ())
    except UnknownComponentError as exc:
        problems.append(f"dataset.name: {exc}")
    except ConfigError as exc:
        problems.extend(exc.problems)

    models: dict[str, PlannedModel] = {}
    for name, decl in experiment.models.items():
        where = f"models.{name}"
        found = _resolve(registry, "model", decl.arch, decl.options, f"{where}.arch", where, problems)
        if found is None:
            continue
        mspec, mopts = registry.get("model", decl.arch), found[1]  # the typed record
        mopts = _relative_to_experiment(mopts, experiment)
        check = getattr(mspec, "check", None)
        if check is not None:  # model sources: file, callable, return type (before any work)
            try:
                problems.extend(f"{where}: {p}" for p in check(mopts) or ())
            except RtkError as exc:
                problems.append(f"{where}: {exc}")
        ckpt = None
        if decl.checkpoint:
            ckpt = experiment.resolve_path(decl.checkpoint)
            if not ckpt.with_suffix(".json").exists() and not Path(str(ckpt) + ".json").exists():
                problems.append(f"{where}.checkpoint: file not found: {ckpt}.json / .safetensors")
            else:
                problems += _checkpoint_arch_problems(ckpt, decl.arch, where)
        init = experiment.resolve_path(decl.init) if decl.init else None
        if init is not None and not init.is_file():
            problems.append(f"{where}.init: file not found: {init} (a state dict: .safetensors, or .pt/.pth)")
        models[name] = PlannedModel(name, decl.arch, mspec, mopts, dict(decl.options), ckpt, init, decl.strict)

    planning = Planning(registry, set(experiment.models), "", experiment)
    stages: list[PlannedStage] = []
    for i, decl in enumerate(experiment.stages):
        where = f"stages[{i}]"
        found = _resolve(registry, "stage", decl.kind, decl.options, f"{where}.kind", where, problems)
        if found is None:
            continue
        sspec, sopts = registry.get("stage", decl.kind), found[1]  # the typed record
        problems.extend(resolve_refs(sopts, registry, where))
        if sspec.check is not None:
            planning.where = where
            known = set(planning.models)
            try:
                problems.extend(sspec.check(sopts, planning) or ())
            except RtkError as exc:
                problems.append(f"{where}: {exc}")
            for created in sorted(set(planning.models) - known, key=str):  # names of models the stage creates
                problem = name_problem(created)
                if problem:
                    problems.append(f"{where}: the stage would create a model named {created!r}: {problem}")
        stages.append(PlannedStage(i, decl.id, decl.kind, sspec, sopts))

    loggers = _plan_loggers(experiment, registry, problems)
    if not experiment.stages:
        problems.append("stages: the experiment has no stages; add at least one [[stages]] table")
    if problems:
        raise ConfigError(problems, source=src)
    assert dataset_spec is not None
    return Plan(experiment, registry, dataset_spec, dataset_opts, models, stages, loggers)


def _plan_loggers(experiment: Experiment, registry: Registry, problems: list[str]) -> list[PlannedLogger]:
    """Resolve ``loggers``: known names, valid options, the modules each needs installed."""
    import importlib.util

    planned: list[PlannedLogger] = []
    for i, decl in enumerate(getattr(experiment, "loggers", None) or []):
        where = f"loggers[{i}]"
        found = _resolve(registry, "logger", decl.name, decl.options, f"{where}.name", where, problems)
        if found is None:
            continue
        reg, opts = found
        spec = reg.spec
        missing = [m for m in getattr(spec, "requires", ()) if importlib.util.find_spec(m) is None]
        if missing:
            install = getattr(spec, "install", "")
            hint = f"; install it with {install}" if install else ""
            problems.append(f"{where}: logger {decl.name!r} needs {', '.join(missing)}, which is not installed{hint}")
            continue
        planned.append(PlannedLogger(decl.name, spec, opts, reg.plugin))
    return planned


def _resolve(
    registry: Registry, kind: str, name: str, options: dict[str, Any], name_key: str, where: str, problems: list[str]
) -> tuple[Registration, Any] | None:
    """A component's registration and validated options, or None with the problems appended
    (an unknown name at ``name_key``, bad options under ``where``)."""
    try:
        reg = registry.registration(kind, name)
    except UnknownComponentError as exc:
        problems.append(f"{name_key}: {exc}")
        return None
    try:
        return reg, validate_options(reg.spec.options, options, where)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _checkpoint_arch_problems(ckpt: Path, arch: str, where: str) -> list[str]:
    """The checkpoint's own architecture must be the declared one (else the plan would lie)."""
    from .models.checkpoint import read_spec

    try:
        spec = read_spec(ckpt)
    except RtkError as exc:
        return [f"{where}.checkpoint: {exc}"]
    if spec.get("arch") != arch:
        return [
            f"{where}: arch = {arch!r} is declared but the checkpoint {ckpt} holds a {spec.get('arch')!r} model; "
            f"declare arch = {spec.get('arch')!r} or point checkpoint at a {arch!r} checkpoint"
        ]
    return []


def experiment_from_dict(
    data: dict[str, Any],
    *,
    source: str | None = None,
    base_dir: str | os.PathLike | None = None,
    registry: Any = None,
    overrides: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    without_sweep: bool = False,
) -> Experiment:
    """Validate the structure of an experiment given as a dict (as parsed from TOML).

    ``overrides`` maps key paths to values (``{"stages.train.epochs": 30}``, see
    :func:`rtk.study.apply_overrides`); they are applied to the table before it is validated, so
    a bad value gets the same error, naming the key path, as in the file, and the experiment
    records them (``overrides``). ``without_sweep`` then leaves out a ``[sweep]`` table (one
    point of a study) and ``tags`` are added to the file's own. This is the one place overrides
    are applied: :func:`load_experiment`, :func:`rtk.study.experiment_from_file`, the points of
    :func:`rtk.study.load_study` and ``rtk.run(dict, overrides=...)`` all come here.

    When the structure has problems, the parts that are usable are also planned against
    ``registry`` (default: every installed plugin), so one error lists every problem.
    """
    if overrides and isinstance(data, dict):
        from .study.overrides import apply_overrides

        data = apply_overrides(data, overrides, source=source)
    if isinstance(data, dict) and (without_sweep and "sweep" in data or tags):
        data = dict(data)
        if without_sweep:
            data.pop("sweep", None)
        if tags:
            data["tags"] = {**(data.get("tags") or {}), **tags}
    exp, problems = read_structure(data, source=source, base_dir=base_dir)
    if problems:
        if exp is not None and exp.stages:
            try:
                plan(exp, registry)
            except ConfigError as exc:
                problems.extend(p.lstrip(".") for p in exc.problems)
            except Exception:  # noqa: BLE001 - the structural problems are the ones to report
                pass
        raise ConfigError(problems, source=source)
    assert exp is not None
    return exp.model_copy(update={"overrides": dict(overrides)}) if overrides else exp


def load_experiment(
    path: str | os.PathLike,
    registry: Any = None,
    *,
    overrides: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
    without_sweep: bool = False,
) -> Experiment:
    """Read and structurally validate an experiment TOML file, with ``overrides`` applied (and,
    for one point of a study, its ``[sweep]`` left out and ``tags`` added; see
    :func:`experiment_from_dict`). Relative paths in the file point from ``base_dir``
    (default: the file's folder)."""
    p = Path(path)
    return experiment_from_dict(
        read_toml(p),
        source=str(p),
        base_dir=base_dir or p.parent.resolve(),
        registry=registry,
        overrides=overrides,
        tags=tags,
        without_sweep=without_sweep,
    )
