"""Execution: a planned experiment run stage by stage into its run directory.

``execute(plan, ...)`` runs the stages in order, writing each stage's tables, figures and
checkpoints to the run directory and recording completion after each stage in state.json,
so ``resume`` skips what is done; it calls the lifecycle hooks and rewrites report.md as it
goes. ``run(...)`` plans and executes; ``resumed_experiment(dir)`` rebuilds the experiment
of an earlier run directory.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError
from torch import nn

from . import distributed as _dist
from .config import Experiment
from .context import ModelEntry, StageContext, _scratch_dir
from .data.core import DatasetBundle, apply_limits
from .errors import CheckpointError, ConfigError, RtkError, StageError
from .lifecycle import Lifecycle, RunInfo, RunOutcome, StageEpochs, StageInfo, epoch_listener, plugin_problem
from .models.checkpoint import ModelRecipe, check_data_matches, load_checkpoint
from .options import format_validation_error
from .planning import Plan, PlannedStage, experiment_from_dict, load_experiment, plan
from .records import RunResult, StageResult
from .registry import Registry
from .report import write_report
from .rundir import RunDir, check_state, environment_record, saved_checkpoints
from .runtime import resolve_device, seed_everything
from .trust import untrusted_settings

log = logging.getLogger(__name__)


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
        exp = experiment_from_dict(experiment, source="<dict>", base_dir=Path.cwd(), overrides=overrides)
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
