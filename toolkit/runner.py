"""Plan and execute experiments.

``plan(experiment, registry)`` resolves every component and validates every option
before any work starts. ``execute(plan, ...)`` runs the stages in order, writing each
stage's tables, figures and checkpoints to the run directory and recording completion
after each stage, so ``resume`` skips what is done. ``run(...)`` does both.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError
from torch import nn

from . import distributed as _dist
from .config import Experiment, experiment_from_dict, load_experiment
from .data.core import DataInfo, DatasetBundle, apply_limits
from .errors import CheckpointError, ConfigError, RtkError, StageError, UnknownComponentError
from .lifecycle import Lifecycle, RunInfo, RunOutcome, StageEpochs, StageInfo, epoch_listener, plugin_problem
from .models.checkpoint import ModelRecipe, check_data_matches, load_checkpoint, read_spec, save_checkpoint
from .options import format_validation_error, validate_options
from .records import Registration, StageSpec
from .refs import ModelRef, resolve_refs
from .registry import Registry, default_registry
from .report import write_report
from .rundir import RunDir, environment_record
from .runtime import resolve_device, seed_everything
from .trust import check_name, name_problem, untrusted_settings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- records
@dataclass
class StageResult:
    """What a stage hands back: tables (one row per model x attack x eps, ...), figures
    already written (name -> path), a markdown paragraph for the report, headline metrics."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


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
        from .errors import suggest

        known = ", ".join(sorted(self.models)) or "(none declared)"
        return [f"{self.where}.{key}: unknown model {name!r}{suggest(base, self.models)}; models known here: {known}"]


# ---------------------------------------------------------------------------- planning
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


#: The fields of a stage's record in state.json and their types.
_STAGE_FIELDS: dict[str, Any] = {
    "status": str,
    "kind": str,
    "seconds": (int, float),
    "figures": dict,
    "summary": str,
    "metrics": dict,
    "error": str,
    "traceback": str,
}


def check_state(state: Any, where: str | os.PathLike) -> dict[str, Any]:
    """``state`` (a parsed state.json) if it has the shape rtk writes, else a clear :class:`RtkError`."""
    problems = []
    if not isinstance(state, dict):
        problems.append(f"expected an object, got {type(state).__name__}")
    else:
        stages = state.setdefault("stages", {})
        if not isinstance(stages, dict) or not isinstance(state.setdefault("models", {}), dict):
            problems.append("'stages' and 'models' must be objects")
        else:
            for sid, rec in stages.items():
                if not isinstance(rec, dict):
                    problems.append(f"stages.{sid}: expected an object")
                    continue
                for key, kind in _STAGE_FIELDS.items():
                    if key in rec and (not isinstance(rec[key], kind) or isinstance(rec[key], bool)):
                        problems.append(f"stages.{sid}.{key}: expected {getattr(kind, '__name__', 'a number')}")
    if problems:
        raise RtkError(
            f"{where}: not a state record rtk wrote ({'; '.join(problems[:5])}); the run directory is damaged. "
            "Start a new run with --out NEWDIR"
        )
    return state


def saved_checkpoints(rundir: RunDir, name: str, info: Any) -> dict[str, Path]:
    """The checkpoints a run directory's state.json records for model ``name`` (``info`` is its
    entry), each checked to lie inside the run directory: paths are relative to it, so a copied
    run directory uses its own files, and a symlink or path that leaves it is refused."""
    check_name(name, "state.json: model name")
    raw = info.get("checkpoints", {}) if isinstance(info, dict) else None
    if not isinstance(raw, dict):
        raise RtkError(f"{rundir.path}/state.json: models.{name}.checkpoints is not an object")
    out = {}
    for tag, rel in raw.items():
        check_name(tag, f"state.json: models.{name}.checkpoints tag")
        if not isinstance(rel, str):
            raise RtkError(f"{rundir.path}/state.json: models.{name}.checkpoints.{tag} is not a path")
        rel_path = Path(rel)
        if rel_path.is_absolute() or (rel_path.parts and rel_path.parts[0] != "checkpoints"):
            parts = rel_path.parts  # written by an older rtk: relative to the working directory of that run
            if "checkpoints" in parts:
                rel_path = Path(*parts[len(parts) - 1 - parts[::-1].index("checkpoints") :])
        stem = rundir.resolve(rel_path, f"state.json: checkpoint {name}@{tag}")
        for suffix in (".json", ".safetensors"):
            rundir.resolve(stem.with_name(stem.name + suffix), f"state.json: checkpoint {name}@{tag}")
        out[tag] = rundir.path / rel_path
    return out


# ---------------------------------------------------------------------------- context
@dataclass
class ModelEntry:
    name: str
    module: nn.Module
    recipe: ModelRecipe
    checkpoints: dict[str, Path] = field(default_factory=dict)


class StageContext:
    """What a running stage sees and uses.

    - ``data``: the :class:`~rtk.data.DatasetBundle` (loaded once per run).
    - ``model(name)``: the current module of a named model; ``name@tag`` loads that
      checkpoint (for example ``robust@best``) as a fresh module.
    - ``save_model(name, module, tag)``: write a checkpoint and make it the model's
      current state (``tag="last"`` by convention); returns its path.
    - ``add_model(name, module, recipe)``: register a model produced by this stage.
    - ``tables``: tables of earlier stages, keyed ``"<stage-id>/<table>"``.
    - ``figure_path(name)``, ``artifact_dir``: where to write files.
    """

    def __init__(self, runner: _Runner, stage: PlannedStage) -> None:
        self._runner = runner
        self.stage = stage
        self.stage_id = stage.id
        self.registry = runner.plan.registry
        self.experiment = runner.plan.experiment
        self.rundir = runner.rundir
        self.device = runner.device
        self.seed = runner.plan.experiment.seed + stage.index
        self.amp = runner.plan.experiment.amp
        self.resume = runner.resuming
        self.log = logging.getLogger(f"rtk.stage.{stage.kind}")

    @property
    def data(self) -> DatasetBundle:
        return self._runner.data

    @property
    def info(self) -> DataInfo:
        return self._runner.data.info

    @property
    def models(self) -> dict[str, ModelEntry]:
        return self._runner.models

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return self._runner.tables

    def entry(self, name: str) -> ModelEntry:
        base = ModelRef.parse(name).name
        if base not in self._runner.models:
            raise RtkError(
                f"stage {self.stage_id}: unknown model {base!r}; known: {', '.join(sorted(self._runner.models))}"
            )
        return self._runner.models[base]

    def model(self, name: str) -> nn.Module:
        ref = ModelRef.parse(name)
        base, tag = ref.name, ref.tag
        entry = self.entry(base)
        if not tag:
            return entry.module
        if tag not in entry.checkpoints:
            raise RtkError(
                f"stage {self.stage_id}: model {base!r} has no checkpoint tagged {tag!r}; "
                f"available: {', '.join(sorted(entry.checkpoints)) or '(none)'}"
            )
        module, _, _ = load_checkpoint(entry.checkpoints[tag], self.registry, device=self.device)
        return module

    def save_model(
        self,
        name: str,
        module: nn.Module,
        tag: str = "last",
        *,
        metadata: dict[str, Any] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        make_current: bool = True,
        recipe: ModelRecipe | None = None,
    ) -> Path:
        entry = self.entry(name)
        recipe = recipe or entry.recipe
        module = _dist.unwrap(module)  # checkpoints hold the bare module, never a DDP wrapper
        target = self.rundir.checkpoint_path(name, tag)
        if _dist.is_main():
            path = save_checkpoint(
                target,
                module,
                recipe,
                metadata={"stage": self.stage_id, **(metadata or {})},
                tensors=tensors,
                dataset=self._runner.dataset_record(module),
            )
        else:  # under torchrun only rank 0 writes; every rank calls save_model, so the barrier is met
            path = target
        _dist.barrier()  # the other ranks may read the checkpoint next (model@tag, restore_best)
        entry.checkpoints[tag] = path
        if make_current:
            entry.module = module
            entry.recipe = recipe
            entry.checkpoints["current"] = path
        self._runner.save_state()
        return path

    def add_model(
        self,
        name: str,
        module: nn.Module,
        recipe: ModelRecipe,
        *,
        tag: str = "last",
        metadata: dict[str, Any] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        self._runner.models[name] = ModelEntry(name, module, recipe)
        return self.save_model(name, module, tag, metadata=metadata, tensors=tensors, recipe=recipe)

    def build_model(self, arch: str, options: dict[str, Any] | None = None) -> tuple[nn.Module, ModelRecipe]:
        mspec = self.registry.get("model", arch)
        opts = validate_options(mspec.options, options or {}, where=f"stage {self.stage_id}: model {arch}")
        module = mspec.build(self.info, opts).to(self.device)
        return module, ModelRecipe(arch, opts.model_dump(), self.info)

    def figure_path(self, name: str) -> Path:
        """Where to write a figure. Under torchrun, ranks other than 0 get a scratch path
        outside the run directory (they draw the same figure; only rank 0's is kept)."""
        if not _dist.is_main():
            p = _scratch_dir() / self.stage_id / (name if name.endswith(".png") else f"{name}.png")
            p.parent.mkdir(parents=True, exist_ok=True)
            return p
        return self.rundir.figure_path(self.stage_id, name)

    @property
    def artifact_dir(self) -> Path:
        return self.rundir.stage_dir(self.stage_id)


def _scratch_dir() -> Path:
    """A per-process directory outside the run directory for files of ranks other than 0."""
    import tempfile

    p = Path(tempfile.gettempdir()) / f"rtk-rank{_dist.rank()}-{os.getpid()}"
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------------------- execution
@dataclass
class RunResult:
    """The outcome of ``rtk.run``: the run directory, every table, each stage's result."""

    path: Path
    tables: dict[str, pd.DataFrame]
    stages: dict[str, StageResult]
    report: Path

    def table(self, key: str) -> pd.DataFrame:
        """A table by ``"<stage-id>/<table>"`` or by its bare name when that is unique; a bare
        name two stages write is an :class:`RtkError` listing the stage-qualified names."""
        return table_by_key(self.tables, key)


def table_by_key(tables: dict[str, pd.DataFrame], key: str) -> pd.DataFrame:
    """``tables[key]`` for ``"<stage-id>/<table>"``, or the one table whose bare name is ``key``
    (:class:`RtkError` when several stages write it, listing their stage-qualified names)."""
    if key in tables:
        return tables[key]
    hits = [k for k in tables if k.split("/", 1)[1] == key]
    if len(hits) == 1:
        return tables[hits[0]]
    if hits:
        raise RtkError(f"table {key!r} is written by {len(hits)} stages; name one of: {', '.join(hits)}")
    raise KeyError(f"no table {key!r}; tables: {', '.join(tables)}")


class _Runner:
    def __init__(self, plan_: Plan, rundir: RunDir, device: torch.device, resuming: bool) -> None:
        self.plan = plan_
        self.rundir = rundir
        self.device = device
        self.resuming = resuming
        self._data: DatasetBundle | None = None
        self.models: dict[str, ModelEntry] = {}
        self.tables: dict[str, pd.DataFrame] = {}
        self.results: dict[str, StageResult] = {}
        self.state: dict[str, Any] = check_state(
            rundir.read_json("state.json", default=None) or {"stages": {}, "models": {}}, rundir.path / "state.json"
        )
        exp = plan_.experiment
        self.info = RunInfo(
            rundir.path.resolve(),
            exp.name,
            dict(exp.model_dump(mode="json")),
            dict(getattr(exp, "tags", None) or {}),
            resuming,
        )
        # lifecycle hooks (installed plugins, then this run's loggers); under torchrun rank 0 only
        self.lifecycle = Lifecycle(plan_.registry.plugin_manager if _dist.is_main() else None)

    @property
    def data(self) -> DatasetBundle:
        if self._data is None:
            p = self.plan
            bundle = p.dataset_spec.load(p.dataset_options)
            opts = p.dataset_options
            if hasattr(opts, "limit_train"):
                bundle = apply_limits(bundle, opts)
            self._data = bundle
        return self._data

    def dataset_record(self, module: nn.Module) -> dict[str, Any]:
        """What a checkpoint remembers of its data: the dataset's name and options as planned (so
        ``rtk evaluate CHECKPOINT`` rebuilds the same data), and the per-channel normalization
        the module applies to its [0, 1] inputs (its first layer, when that is a Normalize)."""
        from .models.layers import Normalize

        p = self.plan
        opts = p.dataset_options
        options = opts.model_dump(mode="json", exclude_defaults=True) if hasattr(opts, "model_dump") else {}
        first = next(iter(module.children()), None)
        normalize = None
        if isinstance(first, Normalize):
            mean, std = torch.as_tensor(first.mean), torch.as_tensor(first.std)
            normalize = {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
        return {
            "name": p.dataset_spec.name,
            "options": options,
            "normalize": normalize,
            "rebuildable": p.dataset_spec.name != "in-memory",
        }

    def save_state(self) -> None:
        self.state["models"] = {
            name: {"checkpoints": {t: self._relative(p) for t, p in e.checkpoints.items()}}
            for name, e in self.models.items()
        }
        self.rundir.write_json("state.json", self.state)

    def _relative(self, p: Path) -> str:
        """A path inside the run directory as stored in state.json: relative to the run directory."""
        try:
            return Path(os.path.relpath(Path(p).resolve(), self.rundir.path.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return str(p)

    def _saved_checkpoints(self, name: str, info: Any) -> dict[str, Path]:
        return saved_checkpoints(self.rundir, name, info)

    def _saved_figures(self, rec: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for k, v in (rec.get("figures") or {}).items():
            try:
                out[k] = self.rundir.resolve(str(v), "state.json: figure")
            except RtkError as exc:
                log.warning("figure %s of the run directory is not shown: %s", k, exc)
        return out

    def _load(self, path: Path, where: str) -> tuple[nn.Module, ModelRecipe]:
        module, recipe, _ = load_checkpoint(path, self.plan.registry, device=self.device)
        check_data_matches(recipe.info, self.data.info, f"{where} (checkpoint {path})")
        return module, recipe

    def build_models(self) -> None:
        saved = self.state.get("models", {})
        if not isinstance(saved, dict):
            raise RtkError(f"{self.rundir.path}/state.json: 'models' is not an object; the run directory is damaged")
        for name, pm in self.plan.models.items():
            ckpts = self._saved_checkpoints(name, saved[name]) if name in saved else {}
            if "current" in ckpts:
                module, recipe = self._load(ckpts["current"], f"models.{name}")
            elif pm.checkpoint is not None:
                module, recipe = self._load(pm.checkpoint, f"models.{name}")
            else:
                module = pm.spec.build(self.data.info, pm.options).to(self.device)
                recipe = ModelRecipe(pm.arch, pm.options.model_dump(), self.data.info)
                if pm.init is not None:  # a plain state dict; the key-by-key report is a table of the run
                    from .models.sources import apply_init

                    report = apply_init(module, pm.init, strict=pm.strict, where=f"models.{name}.init")
                    self.rundir.write_table("init", name, report)
            if recipe.arch != pm.arch:
                raise CheckpointError(
                    f"models.{name}: arch = {pm.arch!r} is declared but its checkpoint holds a {recipe.arch!r} model"
                )
            self.models[name] = ModelEntry(name, module, recipe, ckpts)
        # models produced by completed stages (pruned variants, ...)
        for name, info in saved.items():
            if name in self.models:
                continue
            ckpts = self._saved_checkpoints(name, info)
            if "current" in ckpts:
                module, recipe = self._load(ckpts["current"], f"model {name}")
                self.models[name] = ModelEntry(name, module, recipe, ckpts)

    def stage_info(self, stage: PlannedStage) -> StageInfo:
        """A stage as the lifecycle hooks and the report see it, from state.json and results."""
        st = self.state["stages"].get(stage.id, {})
        res = self.results.get(stage.id)
        status = st.get("status", "not run")
        if res is None or status != "completed":
            return StageInfo(
                stage.id, stage.kind, stage.index, status, seconds=st.get("seconds"), error=st.get("error")
            )
        return StageInfo(
            stage.id,
            stage.kind,
            stage.index,
            status,
            dict(res.tables),
            dict(res.figures),
            res.summary,
            dict(res.metrics),
            st.get("seconds"),
        )

    def write_report(self, failed: str | None = None, *, final: bool = False) -> Path:
        """Rewrite report.md; the final one also holds the plugins' report sections."""
        stages = [self.stage_info(s) for s in self.plan.stages]
        sections = self.lifecycle.report_sections(self.info, stages) if final else []
        return write_report(
            self.rundir, self.plan.experiment, stages, device=self.device, failed=failed, sections=sections
        )

    def _start_loggers(self) -> None:
        """Build this run's loggers and add them to the lifecycle observers; a logger that
        fails to start is a warning naming it (an error under RTK_STRICT_PLUGINS=1)."""
        if not _dist.is_main():
            return
        for lg in self.plan.loggers:
            try:
                obj = lg.spec.build(lg.options, self.info)
            except Exception as exc:
                plugin_problem(
                    f"logger {lg.name!r} (plugin {lg.plugin!r}) failed to start: {type(exc).__name__}: {exc}", exc
                )
                continue
            self.lifecycle.add_observer(f"{lg.plugin}:{lg.name}", obj)

    def _finish(self, failed: str | None = None, error: str | None = None) -> Path:
        """The final report, then ``rtk_run_finish``."""
        report = self.write_report(failed, final=True)
        outcome = RunOutcome(
            "failed" if failed else "completed",
            report,
            dict(self.tables),
            tuple(self.stage_info(s) for s in self.plan.stages),
            failed,
            error,
        )
        self.lifecycle.call("rtk_run_finish", run=self.info, outcome=outcome)
        return report

    def run(self) -> RunResult:
        exp = self.plan.experiment
        seed_everything(exp.seed)
        self._start_loggers()
        self.lifecycle.call("rtk_run_start", run=self.info)
        self.build_models()
        total = len(self.plan.stages)
        for index, stage in enumerate(self.plan.stages, 1):
            done = self.state["stages"].get(stage.id, {}).get("status") == "completed"
            if done and self.resuming:
                log.info("stage %d/%d %s already completed; skipped (resume)", index, total, stage.id)
                for tname, df in self.rundir.read_tables(stage.id).items():
                    self.tables[f"{stage.id}/{tname}"] = df
                rec = self.state["stages"][stage.id]
                self.results[stage.id] = StageResult(
                    tables={k.split("/", 1)[1]: v for k, v in self.tables.items() if k.startswith(stage.id + "/")},
                    figures=self._saved_figures(rec),
                    summary=rec.get("summary", ""),
                    metrics=rec.get("metrics", {}),
                )
                continue
            self._run_stage(stage, f"{index}/{total}")
        report = self._finish()
        return RunResult(self.rundir.path, dict(self.tables), dict(self.results), report)

    def _run_stage(self, stage: PlannedStage, position: str = "") -> None:
        ctx = StageContext(self, stage)
        self.lifecycle.call("rtk_stage_start", run=self.info, stage=StageInfo(stage.id, stage.kind, stage.index))
        seed_everything(ctx.seed)
        self.state["stages"][stage.id] = {"status": "running", "kind": stage.kind}
        self.save_state()
        t0 = time.perf_counter()
        log.info("stage %s %s (%s) started", position, stage.id, stage.kind)
        listener = StageEpochs(self.lifecycle, self.info, StageInfo(stage.id, stage.kind, stage.index))
        try:
            with epoch_listener(listener if _dist.is_main() else None):
                result = stage.spec.run(ctx, stage.options)
            if result is None:
                result = StageResult()
            if not isinstance(result, StageResult):
                raise RtkError(f"stage kind {stage.kind!r} returned {type(result).__name__}, expected StageResult")
        except BaseException as exc:
            self.state["stages"][stage.id] = {
                "status": "failed",
                "kind": stage.kind,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=20),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            self.save_state()
            self.lifecycle.call("rtk_stage_finish", run=self.info, stage=self.stage_info(stage))
            self._finish(failed=stage.id, error=self.state["stages"][stage.id]["error"])
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise StageError(stage.id, exc) from exc
        seconds = time.perf_counter() - t0
        for tname, df in result.tables.items():
            self.rundir.write_table(stage.id, tname, df)
            self.tables[f"{stage.id}/{tname}"] = df
        self.results[stage.id] = result
        self.state["stages"][stage.id] = {
            "status": "completed",
            "kind": stage.kind,
            "seconds": round(seconds, 3),
            "figures": {k: self._relative(v) for k, v in result.figures.items()},
            "summary": result.summary,
            "metrics": _jsonable(result.metrics),
        }
        self.save_state()
        self.write_report()
        log.info("stage %s %s completed in %.1f s", position, stage.id, seconds)
        self.lifecycle.call("rtk_stage_finish", run=self.info, stage=self.stage_info(stage))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        elif hasattr(v, "item") and callable(v.item):
            try:
                v = v.item()
            except (ValueError, TypeError):
                v = str(v)
        out[k] = v
    return out


def execute(
    plan_: Plan,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
) -> RunResult:
    """Run a planned experiment. ``resume`` continues an earlier run directory.

    Under torchrun the process group is created from the environment first (and destroyed
    at the end if this call created it); rank 0 creates the run directory and tells the
    others its path; only rank 0 writes files (see :mod:`rtk.distributed`).
    """
    with _dist.session():
        return _execute(plan_, out=out, resume=resume, runs_root=runs_root)


def _execute(
    plan_: Plan, *, out: str | os.PathLike | None, resume: str | os.PathLike | None, runs_root: str | os.PathLike
) -> RunResult:
    exp = plan_.experiment
    device = resolve_device(exp.device)  # "auto" on CUDA picks cuda:<LOCAL_RANK>
    if resume is not None:
        rundir = RunDir(resume)
        rundir.check_links()
        if not any((rundir.path / f).is_file() for f in ("state.json", "config.json", "experiment.toml")):
            raise ConfigError(
                f"--resume {rundir.path}: not a run directory (no state.json, config.json or experiment.toml); "
                "start a new run with --out pointing at a new or empty directory"
            )
    else:
        create = _dist.main_process_only(broadcast=True)(
            lambda: str(RunDir.create(exp.name, out=out, root=runs_root).path)
        )
        rundir = RunDir(create())
        if _dist.is_main():  # from now on the directory is resumable, even if the first stage never starts
            rundir.write_json("state.json", {"stages": {}, "models": {}})
    if _dist.is_main():
        if exp.source and Path(exp.source).exists() and resume is None:
            rundir.write_text("experiment.toml", Path(exp.source).read_text())
        rundir.write_json("config.json", exp.model_dump(mode="json"))
        if resume is None or not (rundir.path / "environment.json").exists():
            env = environment_record(seed=exp.seed, device=str(device), registry=plan_.registry, source=exp.source)
            if _dist.is_distributed():
                env["distributed"] = {"world_size": _dist.world_size(), "backend": _dist.backend()}
            rundir.write_json("environment.json", env)
    _dist.barrier()  # every rank reads state.json next
    runner = _Runner(plan_, rundir, device, resuming=resume is not None)
    try:
        return runner.run()
    finally:
        if not _dist.is_main():  # the figures other ranks drew are not kept
            import shutil

            shutil.rmtree(_scratch_dir(), ignore_errors=True)


def run(
    experiment: str | os.PathLike | dict[str, Any] | Experiment,
    *,
    registry: Registry | None = None,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Validate and run an experiment given as a TOML path, a dict, or an Experiment.

    ``overrides`` maps key paths to values (``{"stages.train.epochs": 30}``), applied to
    the file or dict before validation (see :mod:`rtk.study.overrides`). Returns a
    :class:`RunResult` with every table as a pandas DataFrame.
    """
    if isinstance(experiment, Experiment):
        if overrides:
            raise ConfigError("overrides apply to an experiment file or dict, not to a validated Experiment")
        exp = experiment
    elif isinstance(experiment, dict):
        if overrides:
            from .study.overrides import apply_overrides

            experiment = apply_overrides(experiment, overrides, source="<dict>")
        exp = experiment_from_dict(experiment, source="<dict>", base_dir=Path.cwd())
        if overrides:
            exp = exp.model_copy(update={"overrides": dict(overrides)})
    else:
        exp = load_experiment(experiment, overrides=overrides)
    return execute(plan(exp, registry), out=out, resume=resume, runs_root=runs_root)


def resumed_experiment(rundir: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> Experiment:
    """The experiment of an earlier run directory (for ``rtk run --resume DIR``).

    A run directory is not trusted: when its experiment turns on unsafe loading
    (``allow_unsafe_pickle = true``) it is refused unless the user allows it here
    (``rtk run --resume DIR --allow-unsafe-pickle``).
    """
    import tomllib

    rd = RunDir(rundir)
    toml = rd.path / "experiment.toml"
    if toml.is_file():  # the file as given, with the overrides and tags the run had (a study point's)
        from .study.sweep import experiment_from_file

        rd.resolve("experiment.toml", "experiment.toml")
        cfg = rd.read_json("config.json", {}) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"--resume {rd.path}: config.json is not an object; the run directory is damaged")
        base_dir = cfg.get("base_dir") if isinstance(cfg.get("base_dir"), str) else None
        overrides = cfg.get("overrides") if isinstance(cfg.get("overrides"), dict) else None
        tags = cfg.get("tags") if isinstance(cfg.get("tags"), dict) else None
        exp = experiment_from_file(toml, overrides=overrides or None, tags=tags or None, base_dir=base_dir)
        # the file and what the run made of it (its overrides, from config.json, are untrusted too)
        raw: Any = {"file": tomllib.loads(toml.read_text()), "overrides": exp.model_dump()}
    else:
        raw = rd.read_json("config.json")
        if raw is None:
            raise ConfigError(
                f"--resume {rd.path}: not a run directory (no experiment.toml or config.json); start a new run "
                "with --out pointing at a new or empty directory"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"--resume {rd.path}: config.json is not an object; the run directory is damaged")
        try:
            exp = Experiment.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(err, "", Experiment), source=str(rd.path / "config.json")
            ) from None
    unsafe = untrusted_settings(raw)
    if unsafe and not allow_unsafe_pickle:
        raise ConfigError(
            f"--resume {rd.path}: the run directory's experiment turns on unsafe loading at "
            f"{', '.join(unsafe)}; rtk does not unpickle on the word of a run directory. Read its experiment.toml; "
            "if you trust every file it loads, pass --allow-unsafe-pickle",
            source=str(toml if toml.is_file() else rd.path / "config.json"),
        )
    return exp


__all__ = [
    "Plan",
    "Planning",
    "StageContext",
    "StageResult",
    "RunResult",
    "plan",
    "execute",
    "run",
    "resumed_experiment",
    "read_spec",
    "saved_checkpoints",
    "check_state",
]
