"""What a running stage sees: :class:`StageContext` (data, models by name and tag,
checkpoints, tables of earlier stages, where to write figures and files)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from . import distributed as _dist
from .data.core import DataInfo, DatasetBundle
from .errors import RtkError
from .models.checkpoint import ModelRecipe, load_checkpoint, save_checkpoint
from .options import validate_options
from .refs import ModelRef

if TYPE_CHECKING:
    from .execution import _Runner
    from .planning import PlannedStage


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
