"""Built-in loggers: TensorBoard, MLflow and Weights & Biases.

Each logger stands on the lifecycle hooks (:mod:`rtk.lifecycle`): the record's ``build``
returns, per run, an object whose methods are named like the hooks. Every logger receives
the resolved config at ``rtk_run_start`` (with the experiment's ``tags``), each training
epoch's numbers at ``rtk_epoch_metrics``, each stage's tables, figures and headline metrics
at ``rtk_stage_finish``, and the final report at ``rtk_run_finish``.

Names, as logged by all three:

- per-epoch training numbers: ``<stage-id>/<column>`` at step = epoch (a stage that trains
  more than once, e.g. prune's pre-training then fine-tuning, logs round ``r > 0`` as
  ``<stage-id>/round<r>/<column>``);
- a stage's headline metrics: ``<stage-id>/metrics/<name>``;
- tables: ``tables/<stage-id>/<table>``; figures: ``figures/<stage-id>/<name>``;
  the report: ``report.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator

import rtk
from rtk import EpochMetrics, RunInfo, RunOutcome, StageInfo
from rtk.lifecycle import finite_numbers

log = logging.getLogger(__name__)


def metric_key(stage: StageInfo, metrics: EpochMetrics, column: str) -> str:
    """The name every logger gives a per-epoch number."""
    middle = f"round{metrics.round}/" if metrics.round else ""
    return f"{stage.id}/{middle}{column}"


def _inside_run(run: RunInfo, rel: str, what: str) -> Path:
    """``rel`` under the run directory; a path that leaves it is refused."""
    root = run.path.resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise rtk.ConfigError(f"{what} = {rel!r} leaves the run directory {root}; give a path inside it")
    return path


def _relative_dir(v: str) -> str:
    if Path(v).is_absolute() or ".." in Path(v).parts:
        raise ValueError("give a directory relative to the run directory, without '..'")
    return v


# ---------------------------------------------------------------------------- TensorBoard
class TensorBoardOptions(rtk.Options):
    dir: str = Field("tensorboard", description="event-file directory, relative to the run directory")
    images: bool = Field(True, description="log each stage's figures as images")

    @field_validator("dir")
    @classmethod
    def _dir_ok(cls, v: str) -> str:
        return _relative_dir(v)


class TensorBoardLogger:
    """Event files under ``<run>/tensorboard`` (``tensorboard --logdir <run>`` shows them):
    scalars for epochs and headline metrics, text for the config, tags, tables (markdown) and
    the report, images for figures."""

    def __init__(self, options: TensorBoardOptions, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.options = options
        self.dir = _inside_run(run, options.dir, "loggers.tensorboard.dir")
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def rtk_run_start(self, run: RunInfo) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(dict(run.config), indent=2, default=str) + "\n```")
        if run.tags:
            self.writer.add_text("tags", "\n".join(f"- `{k}` = `{v}`" for k, v in run.tags.items()))

    def rtk_epoch_metrics(self, stage: StageInfo, epoch: int, metrics: EpochMetrics) -> None:
        for col, value in metrics.values.items():
            self.writer.add_scalar(metric_key(stage, metrics, col), value, global_step=epoch)
        self.writer.flush()

    def rtk_stage_finish(self, stage: StageInfo) -> None:
        from rtk import markdown_table  # pandas, imported when a run reports, not to list the loggers

        if stage.status != "completed":
            return
        for name, value in finite_numbers(stage.metrics).items():
            self.writer.add_scalar(f"{stage.id}/metrics/{name}", value, global_step=0)
        for name, df in stage.tables.items():
            self.writer.add_text(f"tables/{stage.id}/{name}", markdown_table(df))
        if self.options.images:
            for name, path in stage.figures.items():
                if Path(path).exists():
                    self.writer.add_image(f"figures/{stage.id}/{name}", _read_png(path), dataformats="HWC")
        self.writer.flush()

    def rtk_run_finish(self, outcome: RunOutcome) -> None:
        self.writer.add_text("report.md", Path(outcome.report).read_text())
        self.writer.close()


def _read_png(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------------------- MLflow
class MLflowOptions(rtk.Options):
    tracking_uri: str | None = Field(
        None,
        description="where runs are tracked; default $MLFLOW_TRACKING_URI, else a local file store "
        "mlruns beside the run directory, or in the study directory for a study's points (no server needed)",
    )
    experiment: str | None = Field(None, description="MLflow experiment name; default the rtk experiment's name")
    run_name: str | None = Field(None, description="MLflow run name; default the run directory's name")


def _runs_root(run: RunInfo) -> Path:
    """Where runs side by side live: the study directory for a study's point
    (``<study>/points/<point>``), else the run directory's parent (``runs/``)."""
    parent = run.path.parent
    if parent.name == "points" and (parent.parent / "study.json").exists():
        return parent.parent
    return parent


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = d
    return out


class MLflowLogger:
    """One MLflow run per rtk run, through :class:`mlflow.MlflowClient` (no global state):
        the config as params, tags as tags (``rtk.run_dir`` too: ``--resume`` continues the same
    MLflow run), epochs and headline metrics as metrics, tables as CSV
        artifacts ``tables/<stage>/<table>.csv``, figures and ``report.md`` as artifacts; the run
        ends FINISHED or FAILED."""

    def __init__(self, options: MLflowOptions, run: RunInfo) -> None:
        from mlflow import MlflowClient

        uri = options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (_runs_root(run) / "mlruns").as_uri()
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a local
            # store that needs no database or server is the point of this default
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = options.experiment or run.name
        exp_id = self._experiment_id(name)
        tags = {str(k): str(v) for k, v in run.tags.items()}
        tags["rtk.run_dir"] = str(run.path)
        earlier = self._earlier_run(exp_id, run) if run.resumed else None
        self.continued = earlier is not None
        if earlier is not None:  # --resume continues the MLflow run of this run directory
            self.run_id = earlier
            self.client.update_run(earlier, status="RUNNING")
        else:
            self.run_id = self.client.create_run(
                exp_id, run_name=options.run_name or run.path.name, tags=tags
            ).info.run_id
        log.info("mlflow: run %s in experiment %r at %s", self.run_id, name, uri)

    def _experiment_id(self, name: str) -> str:
        """The MLflow experiment's id, created if needed (study points may race to create it)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _earlier_run(self, exp_id: str, run: RunInfo) -> str | None:
        quoted = str(run.path).replace("'", "\\'")
        found = self.client.search_runs([exp_id], filter_string=f"tags.`rtk.run_dir` = '{quoted}'", max_results=1)
        return found[0].info.run_id if found else None

    def rtk_run_start(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        if self.continued:  # params were logged by the first start, and MLflow params are immutable
            return
        params = [
            Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in _flat(run.config).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, dict(run.config), "config.json")

    def rtk_epoch_metrics(self, stage: StageInfo, epoch: int, metrics: EpochMetrics) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(metric_key(stage, metrics, c), v, now, epoch) for c, v in metrics.values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def rtk_stage_finish(self, stage: StageInfo) -> None:
        if stage.status != "completed":
            return
        for name, value in finite_numbers(stage.metrics).items():
            self.client.log_metric(self.run_id, f"{stage.id}/metrics/{name}", value)
        for name, df in stage.tables.items():
            self.client.log_text(self.run_id, df.to_csv(index=False), f"tables/{stage.id}/{name}.csv")
        for path in stage.figures.values():
            if Path(path).exists():
                self.client.log_artifact(self.run_id, str(path), f"figures/{stage.id}")

    def rtk_run_finish(self, outcome: RunOutcome) -> None:
        self.client.log_artifact(self.run_id, str(outcome.report))
        self.client.set_terminated(self.run_id, "FINISHED" if outcome.status == "completed" else "FAILED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# ---------------------------------------------------------------------------- Weights & Biases
class WandbOptions(rtk.Options):
    project: str | None = Field(None, description="W&B project; default the rtk experiment's name")
    entity: str | None = Field(None, description="W&B entity (user or team); default your default entity")
    mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="auto: online when an API key is configured and the W&B server answers, "
        "else offline (files under <run>/wandb, upload later with `wandb sync`)",
    )


def _wandb_reachable(timeout: float = 2.0) -> bool:
    """An API key is configured and the W&B host accepts a connection."""
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = Path.home() / ".netrc"
        has_key = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    if not has_key:
        return False
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


class WandbLogger:
    """One W&B run per rtk run, written under ``<run>/wandb``: the config as the run's
    config, tags as ``key=value`` tags (and ``config.tags``), epochs and headline metrics in
    the history (each stage's numbers against ``<stage-id>/epoch``), tables as
    ``wandb.Table``, figures as images, ``report.md`` among the run's files."""

    def __init__(self, options: WandbOptions, run: RunInfo) -> None:
        import wandb

        # $WANDB_MODE is read here and passed explicitly: wandb caches its settings once per
        # process, so a later change of the variable would otherwise be lost
        mode: Literal["online", "offline", "disabled"]
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if options.mode != "auto":
            mode = options.mode
        elif env in ("offline", "dryrun"):
            mode = "offline"
        elif env in ("online", "run"):
            mode = "online"
        elif env == "disabled":
            mode = "disabled"
        else:
            mode = "online" if _wandb_reachable() else "offline"
            if mode == "offline":
                log.info("wandb: no API key or no connection; logging offline under %s/wandb", run.path)
        self.wandb = wandb
        self._steps: set[str] = set()  # prefixes whose numbers are plotted against their epoch
        self.run = wandb.init(
            project=options.project or run.name,
            entity=options.entity,
            name=run.path.name,
            dir=str(run.path),
            mode=mode,
            config={**dict(run.config), "tags": dict(run.tags)},
            tags=[f"{k}={v}"[:64] for k, v in run.tags.items()],
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def rtk_epoch_metrics(self, stage: StageInfo, epoch: int, metrics: EpochMetrics) -> None:
        prefix = metric_key(stage, metrics, "")
        step = f"{prefix}epoch"
        if prefix not in self._steps:
            self.run.define_metric(f"{prefix}*", step_metric=step)
            self._steps.add(prefix)
        self.run.log({step: epoch, **{metric_key(stage, metrics, c): v for c, v in metrics.values.items()}})

    def rtk_stage_finish(self, stage: StageInfo) -> None:
        if stage.status != "completed":
            return
        row: dict[str, Any] = {f"{stage.id}/metrics/{k}": v for k, v in finite_numbers(stage.metrics).items()}
        for name, df in stage.tables.items():
            row[f"tables/{stage.id}/{name}"] = self.wandb.Table(dataframe=df.reset_index(drop=True))
        for name, path in stage.figures.items():
            if Path(path).exists():
                row[f"figures/{stage.id}/{name}"] = self.wandb.Image(str(path))
        if row:
            self.run.log(row)

    def rtk_run_finish(self, outcome: RunOutcome) -> None:
        shutil.copy(outcome.report, Path(self.run.dir) / "report.md")  # the run's files dir is synced at the end
        self.run.finish(exit_code=0 if outcome.status == "completed" else 1)


# ---------------------------------------------------------------------------- records
#: The built-in loggers: name, options, logger class, the module it needs, how to install that, summary.
_LOGGERS = (
    (
        "tensorboard",
        TensorBoardOptions,
        TensorBoardLogger,
        "tensorboard",
        "pip install tensorboard",
        "TensorBoard event files in the run directory (tensorboard --logdir RUN_DIR)",
    ),
    (
        "mlflow",
        MLflowOptions,
        MLflowLogger,
        "mlflow",
        "pip install mlflow-skinny (in its own pip call: see docs/tracking.md)",
        "MLflow tracking (a local file store beside the run directory unless tracking_uri is given)",
    ),
    (
        "wandb",
        WandbOptions,
        WandbLogger,
        "wandb",
        "pip install 'rtk[wandb]'",
        "Weights & Biases (offline files under the run directory when there is no key or network)",
    ),
)


@rtk.hookimpl
def rtk_loggers():
    for name, options, logger, module, install, summary in _LOGGERS:
        yield rtk.LoggerSpec(
            name=name, summary=summary, options=options, build=logger, requires=(module,), install=install
        )
