"""The shared training loop.

:func:`train_model` trains a model in place with any :class:`~rtk.training.Objective` and
returns a :class:`TrainResult` (the per-epoch history, the best epoch, why it stopped,
where the checkpoints are); :func:`fit` is the same returning only the history.

Per step: the objective (under autocast on CUDA when ``amp``), backward (through a
``GradScaler``), optional gradient clipping, the optimiser step, the per-step LR schedule,
and the callbacks' hooks. Metrics are accumulated on the device; the host reads them once
per epoch, so the loop adds no per-batch synchronisation (a NaN/inf loss is detected in the
same read, with its batch number).

Per epoch: clean accuracy on the test split, clean and PGD accuracy on a fixed held-out
(test) subset and on a fixed training subset, checkpoints (``last``; ``best`` by the
monitored column; ``epoch-N`` every N epochs), the exact-resume state (written atomically),
and early stopping.

Extension points: ``parameters=`` (train only these, e.g. HYDRA scores with frozen
weights), ``callbacks=`` (:class:`Callback` hooks before/after each step, e.g. to re-apply
pruning masks; ``on_epoch_end`` may add columns), ``epoch_indices=`` (the training examples
of this process per epoch, for sharding), and ``progress`` (a :class:`Progress`) passed to
the objective for eps/kappa schedules.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import distributed as _dist
from ..data.augment import augment_batch, check_crop_padding
from ..data.core import DatasetBundle, batches, subset
from ..errors import ConfigError, TrainingDivergedError
from ..lifecycle import report_epoch
from ..runtime import amp_context
from ..runtime import progress as _progress
from .attacks import default_alpha, max_eps, perturb
from .config import HISTORY_COLUMNS, MONITORABLE, LoopConfig
from .objectives import EpsSchedule, Objective, ObjectiveOutput, Progress
from .schedules import make_optimizer, make_scheduler
from .state import (
    TrainingState,
    _cpu_tensors,
    capture_rng,
    flatten_optimizer_state,
    load_latest,
    restore_rng,
    unflatten_optimizer_state,
    write_state,
)

log = logging.getLogger(__name__)

#: ``checkpoint(tag, model, metadata) -> path`` writes a model checkpoint tagged
#: "last", "best" or "epoch-N" (stages pass ``ctx.save_model``).
Checkpointer = Callable[[str, nn.Module, dict[str, Any]], Any]

_EVAL_SEED_OFFSET = 7919  # the evaluation PGD's random start has its own generator


# ---------------------------------------------------------------------------- records
@dataclass
class LoopState:
    """What callbacks see (mutable; the loop updates it in place)."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: LoopConfig
    device: torch.device
    epoch: int = 0
    batch: int = 0
    step: int = 0
    progress: Progress | None = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    output: ObjectiveOutput | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    """Hooks into the loop. Override what you need; every hook is optional.

    - ``on_train_start(state)``: after setup (and after a resume restored the state).
    - ``on_batch_start(state)``: before the objective; ``state.x``/``state.y`` are set.
    - ``before_step(state)``: after backward, before ``optimizer.step()`` (gradients exist).
    - ``after_step(state)``: after ``optimizer.step()`` (e.g. re-apply pruning masks).
    - ``on_epoch_end(state, row)``: after evaluation; may add columns to ``row``.
    - ``state_dict()`` / ``load_state_dict(d)``: JSON-able state kept for exact resume.

    ``metrics``: names of columns this callback adds (so ``monitor`` may name them).
    """

    metrics: Sequence[str] = ()

    def on_train_start(self, state: LoopState) -> None: ...
    def on_batch_start(self, state: LoopState) -> None: ...
    def before_step(self, state: LoopState) -> None: ...
    def after_step(self, state: LoopState) -> None: ...
    def on_epoch_end(self, state: LoopState, row: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train_model`."""

    history: pd.DataFrame
    best_epoch: int | None
    best_value: float | None
    monitor: str
    stop_reason: str  # "completed" | "early-stopped"
    epochs_run: int
    checkpoints: dict[str, str]
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.to_dict(orient="records"),
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "stop_reason": self.stop_reason,
            "epochs_run": self.epochs_run,
            "checkpoints": dict(self.checkpoints),
            "resumed_from": self.resumed_from,
        }


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def accuracy(model: nn.Module, split, *, batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Clean accuracy of ``model`` on ``split`` (model in eval mode; its mode is restored)."""
    clean, _ = evaluate(model, split, batch_size=batch_size, device=device)
    return clean


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "Linf",
    seed: int = 0,
    amp: bool = False,
) -> tuple[float, float | None]:
    """``(clean accuracy, PGD accuracy)`` on ``split``; the second is None without ``eps``.

    The PGD starts from a uniform random point drawn from a generator seeded with ``seed``,
    so repeated evaluations (every epoch) attack with the same noise. Counts stay on the
    device until the end.
    """
    device = torch.device(device)
    was = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = torch.zeros((), dtype=torch.long, device=device)
    robust = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    attack = eps is not None and eps > 0
    step = alpha if alpha is not None else (default_alpha(eps, steps) if attack else 0.0)
    try:
        for x, y in batches(split, batch_size, device=device):
            with amp_context(device, amp):
                clean += (model(x).argmax(1) == y).sum()
                if attack:
                    x_adv = perturb(
                        model, x, y, eps=eps, alpha=step, steps=steps, norm=norm, init="uniform", generator=gen
                    )
                    robust += (model(x_adv).argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train(was)
    if n == 0:
        return float("nan"), (float("nan") if attack else None)
    c, r = torch.stack([clean, robust]).tolist()
    return c / n, (r / n if attack else None)


# ---------------------------------------------------------------------------- the run
def _describe(objective: Any) -> str:
    """A stable description (dataclass repr, else the type name) for resume checks."""
    if dataclasses.is_dataclass(objective):
        return repr(objective)
    t = type(objective)
    return f"{t.__module__}.{t.__qualname__}"


def _input_shape(split) -> tuple[int, ...]:
    x = getattr(split, "x", None)
    if isinstance(x, torch.Tensor):
        return tuple(x.shape[1:])
    return tuple(split[0][0].shape)


def _jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        out[k] = v
    return out


class _TrainingRun:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        data: DatasetBundle,
        cfg: LoopConfig,
        *,
        device: torch.device | str,
        seed: int,
        parameters: Iterable[Any] | None,
        callbacks: Sequence[Any],
        out: str | os.PathLike | None,
        recipe: Any,
        checkpoint: Checkpointer | None,
        state_dir: str | os.PathLike | None,
        resume: bool,
        plot: bool,
        epoch_indices: Callable[[int], torch.Tensor] | None,
        on_epoch: Callable[[int, dict], None] | None,
        batch_weights: Callable[[int], Sequence[float]] | None = None,
    ) -> None:
        self.model = model  # possibly DDP-wrapped: the objective trains through it
        self.bare = _dist.unwrap(model)  # checkpoints, state and evaluation use the bare module
        self.objective = objective
        self.data = data
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = seed
        self.callbacks = list(callbacks)
        self.out = Path(out) if out is not None else None
        self.plot = plot
        self.epoch_indices = epoch_indices
        self.batch_weights = batch_weights
        self.on_epoch = on_epoch
        self.state_dir = Path(state_dir) if state_dir is not None else (self.out / "state" if self.out else None)
        self.checkpoint = checkpoint or self._file_checkpointer(recipe)
        self.resume = resume

        self._preflight()
        model.to(self.device)
        groups = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(groups, cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        if cfg.amp and not self.amp:
            log.warning("amp was requested but the device is %s; training in float32", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp) if self.amp else None
        # shuffles the training data and draws the augmentation; under torchrun (epoch_indices)
        # the sampler shuffles, and each rank draws its own augmentation (rank 0 keeps the seed)
        self.generator = torch.Generator().manual_seed(seed if epoch_indices is None else _dist.rank_seed(seed))
        self.test_subset = subset(data.test, cfg.eval_size, seed) if cfg.eval_size > 0 else None
        self.train_subset = subset(data.train, cfg.train_eval_size, seed + 1) if cfg.train_eval_size > 0 else None

        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_evals = 0
        self.stop_reason = "completed"
        self.start_epoch = 0
        self.step = 0
        self.checkpoints: dict[str, str] = {}
        self.resumed_from: int | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.state = LoopState(model, objective, self.optimizer, self.scheduler, cfg, self.device, history=self.history)

    # -- setup ---------------------------------------------------------------
    def _file_checkpointer(self, recipe: Any) -> Checkpointer | None:
        if self.out is None:
            return None
        if recipe is None:
            raise ConfigError(
                "out= writes rtk checkpoints, which need recipe= (a ModelRecipe(arch, options, info) "
                "to rebuild the model); pass recipe=, or checkpoint= to save them yourself"
            )
        from ..models.checkpoint import save_checkpoint

        root = self.out / "checkpoints"

        def save(tag: str, model: nn.Module, metadata: dict[str, Any]) -> Path:
            path = save_checkpoint(root / tag, model, recipe, metadata=metadata) if _dist.is_main() else root / tag
            _dist.barrier()  # under torchrun only rank 0 writes; the others may read it next
            return path

        return save

    def _preflight(self) -> None:
        """Everything that can be wrong with data, radii and options, before any work."""
        cfg, obj, problems = self.cfg, self.objective, []
        n_train = len(self.data.train)  # type: ignore[arg-type]
        n_test = len(self.data.test)  # type: ignore[arg-type]
        if n_train == 0:
            problems.append(
                f"the training split of dataset {self.data.info.name!r} is empty (check limit_train and the "
                "dataset's files)"
            )
        if n_test == 0:
            problems.append(
                f"the test split of dataset {self.data.info.name!r} is empty; the loop evaluates on it every "
                "epoch (check limit_test)"
            )
        if self.epoch_indices is not None and n_train:
            self._n_epoch = len(self.epoch_indices(1))
            if self._n_epoch == 0:
                problems.append("epoch_indices returned no training examples for this process")
        else:
            self._n_epoch = n_train
        shape = _input_shape(self.data.train) if n_train else None
        if cfg.augment and shape is not None:
            if len(shape) != 3:
                problems.append(
                    f"augment = {cfg.augment} needs images [C, H, W]; the training inputs are {list(shape)}"
                )
            elif "crop" in cfg.augment:
                problems += [p for p in [check_crop_padding(cfg.crop_padding, shape[1], shape[2])] if p]
        norm = getattr(obj, "norm", "Linf")
        eps = getattr(obj, "eps", None)
        if eps is not None and shape is not None:
            limit = max_eps(norm, shape)
            if not 0 < eps <= limit:
                problems.append(
                    f"trainer eps = {eps:g} is out of range for {norm} on inputs of shape {list(shape)} in "
                    f"[0, 1]: allowed 0 < eps <= {limit:g}"
                )
        schedule = getattr(obj, "schedule", None)
        if isinstance(schedule, EpsSchedule) and schedule.end(cfg.epochs) > cfg.epochs:
            problems.append(
                f"the eps warm-up + ramp ends at epoch {schedule.end(cfg.epochs):g}, after training ends "
                f"({cfg.epochs} epochs): shorten eps_warmup/eps_ramp or train longer"
            )
        self.eval_norm = cfg.eval_norm or norm
        self.eval_eps = cfg.eval_eps if cfg.eval_eps is not None else eps
        if self.eval_eps is not None and shape is not None:
            limit = max_eps(self.eval_norm, shape)
            if not 0 <= self.eval_eps <= limit:
                problems.append(
                    f"eval_eps = {self.eval_eps:g} is out of range for {self.eval_norm}: allowed 0..{limit:g}"
                )
        self.eval_alpha = (
            cfg.eval_alpha
            if cfg.eval_alpha is not None
            else (default_alpha(self.eval_eps, cfg.eval_steps) if self.eval_eps else None)
        )
        robust = bool(self.eval_eps) and cfg.eval_size > 0
        self.robust_eval = robust
        self.monitor = cfg.monitor
        extra = {m for cb in self.callbacks for m in getattr(cb, "metrics", ())}
        if cfg.monitor not in MONITORABLE and cfg.monitor not in extra:
            problems.append(
                f"monitor = {cfg.monitor!r} is not a history column; allowed: "
                f"{', '.join(MONITORABLE + tuple(sorted(extra)))}"
            )
        elif "monitor" not in cfg.model_fields_set and (not robust or eps is None):
            # the default, robust test accuracy, only where there is a robust evaluation and a
            # robust objective: a standard model's robust accuracy is near 0 and would pick its
            # best epoch by noise
            self.monitor = "test_clean_acc"
        elif cfg.monitor in ("test_robust_acc", "train_robust_acc") and not robust:
            problems.append(
                f"monitor = {cfg.monitor!r} needs a robust evaluation: set eval_eps (the trainer "
                "has no eps) and keep eval_size > 0"
            )
        elif cfg.monitor in ("train_clean_acc", "train_robust_acc") and cfg.train_eval_size == 0:
            problems.append(f"monitor = {cfg.monitor!r} needs eval_train_size > 0")
        if problems:
            raise ConfigError(problems)
        self.steps_per_epoch = math.ceil(self._n_epoch / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "trajectory": self.cfg.trajectory(),
            "objective": _describe(self.objective),
            "seed": self.seed,
            "steps_per_epoch": self.steps_per_epoch,
        }

    # -- resume ---------------------------------------------------------------
    def _restore(self, st: TrainingState) -> None:
        from ..models.checkpoint import load_state_strict

        saved, now = st.meta.get("fingerprint", {}), self._fingerprint()
        if saved != now:
            diffs = []
            for key in sorted(set(saved) | set(now)):
                a, b = saved.get(key), now.get(key)
                if isinstance(a, dict) and isinstance(b, dict):
                    diffs += [
                        f"{k}: saved {a.get(k)!r}, now {b.get(k)!r}"
                        for k in sorted(set(a) | set(b))
                        if a.get(k) != b.get(k)
                    ]
                elif a != b:
                    diffs.append(f"{key}: saved {a!r}, now {b!r}")
            raise ConfigError([f"cannot resume from {st.path}: the training options differ from the saved run"] + diffs)
        load_state_strict(self.bare, st.model_state(), where=f"training state {st.path}")
        self.optimizer.load_state_dict(unflatten_optimizer_state(st.meta["optimizer"], st.tensors))
        self.scheduler.load_state_dict(st.meta["scheduler"])
        if self.scaler is not None and st.meta.get("scaler"):
            self.scaler.load_state_dict(st.meta["scaler"])
        restore_rng(st.meta["rng"], st.tensors, self.generator)
        self.history[:] = st.meta["history"]
        self.best_value, self.best_epoch = st.meta["best_value"], st.meta["best_epoch"]
        self.bad_evals = st.meta["bad_evals"]
        self.stop_reason = st.meta["stop_reason"]
        self.start_epoch = st.epoch
        self.step = st.meta["step"]
        self.checkpoints = dict(st.meta.get("checkpoints", {}))
        for cb, cb_state in zip(self.callbacks, st.meta.get("callbacks", [])):
            if hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)
        self.resumed_from = st.epoch
        log.info("resumed from %s (epoch %d of %d)", st.path, st.epoch, self.cfg.epochs)

    def _save_state(self, epoch: int) -> None:
        if self.state_dir is None or not _dist.is_main():  # under torchrun rank 0 keeps the resume state
            return
        tensors: dict[str, torch.Tensor] = {}
        _cpu_tensors("model/", self.bare.state_dict(), tensors)
        meta = {
            "epoch": epoch,
            "step": self.step,
            "fingerprint": self._fingerprint(),
            "optimizer": flatten_optimizer_state(self.optimizer.state_dict(), tensors),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng(tensors, self.generator),
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "stop_reason": self.stop_reason,
            "monitor": self.monitor,
            "checkpoints": self.checkpoints,
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else {} for cb in self.callbacks],
        }
        write_state(self.state_dir, epoch, tensors, meta)

    # -- one epoch ------------------------------------------------------------
    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The only place that iterates the training data (a distributed run shards here), and
        so the only place training batches are augmented (never the evaluation's)."""
        if self.epoch_indices is not None:
            it = batches(self.data.train, self.cfg.batch_size, indices=self.epoch_indices(epoch), device=self.device)
        else:
            it = batches(
                self.data.train, self.cfg.batch_size, shuffle=True, generator=self.generator, device=self.device
            )
        if not self.cfg.augment:
            return it
        cfg = self.cfg
        return (
            (
                augment_batch(
                    x,
                    cfg.augment,
                    padding=cfg.crop_padding,
                    padding_mode=cfg.crop_padding_mode,
                    generator=self.generator,
                ),
                y,
            )
            for x, y in it
        )

    def _hook(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(self.state, *args)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, dev, st = self.cfg, self.device, self.state
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        batch_no = torch.zeros((), dtype=torch.long, device=dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        bad_value = torch.zeros((), dtype=torch.float32, device=dev)
        seen = 0
        has_logits = False
        lr_start = self.optimizer.param_groups[0]["lr"]
        eps_now = None
        it = _progress(self._batches(epoch), total=self.steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}")
        weights = list(self.batch_weights(epoch)) if self.batch_weights is not None else None
        for b, (x, y) in enumerate(it):
            prog = Progress(self.step, self.total_steps, self.steps_per_epoch)
            st.epoch, st.batch, st.step, st.progress, st.x, st.y = epoch, b, self.step, prog, x, y
            self._hook("on_batch_start")
            with amp_context(dev, self.amp):
                out = self.objective(self.model, x, y, progress=prog)
            st.output = out
            # under DDP, the weight makes the averaged gradient that of the mean over an uneven last global batch
            step_loss = out.loss * weights[b] if weights is not None and weights[b] != 1.0 else out.loss
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(step_loss).backward()
                if cfg.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self._hook("before_step")
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                step_loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self._hook("before_step")
                self.optimizer.step()
            self.scheduler.step()
            self._hook("after_step")
            self.step += 1
            # metrics stay on the device
            loss = out.loss.detach().float()
            newly_bad = (~torch.isfinite(loss)) & (first_bad < 0)
            first_bad = torch.where(newly_bad, batch_no, first_bad)
            bad_value = torch.where(newly_bad, loss, bad_value)
            batch_no += 1
            loss_sum += loss * len(y)
            logits = out.adv_logits if out.adv_logits is not None else out.logits
            if logits is not None:
                correct += (logits.detach().argmax(1) == y).sum()
                has_logits = True
            seen += len(y)
        eps_fn = getattr(self.objective, "eps_at", None)
        if eps_fn is not None:
            eps_now = float(eps_fn(Progress(max(self.step - 1, 0), self.total_steps, self.steps_per_epoch)))
        # the one host read of the epoch
        total_loss, n_correct, bad_batch, bad_loss = torch.stack(
            [loss_sum, correct.float(), first_bad.float(), bad_value]
        ).tolist()
        if _dist.is_distributed():  # every rank reports the epoch over all ranks, so they decide alike
            sums = _dist.all_reduce_sum(
                torch.tensor([total_loss, n_correct, float(seen), float(bad_batch >= 0)], dtype=torch.float64)
            )
            total_loss, n_correct, seen, any_bad = sums[0].item(), sums[1].item(), int(sums[2].item()), sums[3].item()
            if any_bad > 0 and bad_batch < 0:
                bad_batch, bad_loss = 0.0, float("nan")  # another rank diverged: stop together
        if bad_batch >= 0:
            self._diverged(epoch, int(bad_batch), bad_loss)
        return {
            "epoch": epoch,
            "lr": lr_start,
            "eps": eps_now,
            "train_loss": total_loss / max(seen, 1),
            "train_acc": n_correct / max(seen, 1) if has_logits else None,
        }

    def _diverged(self, epoch: int, batch: int, value: float) -> None:
        good = self.history[-1]["epoch"] if self.history else None
        where = self.checkpoints.get("last")
        restored = ""
        if self.state_dir is not None:
            st = load_latest(self.state_dir)
            if st is not None:
                from ..models.checkpoint import load_state_strict

                load_state_strict(self.bare, st.model_state(), where=f"training state {st.path}")
                restored = f"; the model was reset to the weights of epoch {st.epoch}"
        keep = (
            (f"the last good checkpoint is epoch {good}" + (f" ({where})" if where else ""))
            if good
            else "no epoch completed, so there is no good checkpoint"
        )
        raise TrainingDivergedError(
            f"the training loss became {value} at epoch {epoch}, batch {batch + 1} of {self.steps_per_epoch}: "
            f"training stopped; {keep}{restored}. Lower the learning rate, clip gradients (grad_clip) "
            f"or check the data."
        )

    def _evaluate(self, row: dict[str, Any]) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        kw = {"batch_size": cfg.eval_batch_size, "device": self.device, "amp": self.amp}
        adv = {
            "eps": self.eval_eps if self.robust_eval else None,
            "alpha": self.eval_alpha,
            "steps": cfg.eval_steps,
            "norm": self.eval_norm,
            "seed": self.seed + _EVAL_SEED_OFFSET,
        }
        if self.train_subset is not None:
            row["train_clean_acc"], row["train_robust_acc"] = evaluate(self.bare, self.train_subset, **kw, **adv)
        row["test_clean_acc"], _ = evaluate(self.bare, self.data.test, **kw)
        if self.test_subset is not None and self.robust_eval:
            _, row["test_robust_acc"] = evaluate(self.bare, self.test_subset, **kw, **adv)
        row["eval_time_s"] = time.perf_counter() - t0

    # -- bookkeeping ----------------------------------------------------------
    def _save(self, tag: str, epoch: int, row: dict[str, Any]) -> None:
        if self.checkpoint is None:
            if tag == "best" and self.cfg.restore_best:
                self._best_weights = {k: v.detach().clone() for k, v in self.bare.state_dict().items()}
            return
        meta = {
            "epoch": epoch,
            "tag": tag,
            "monitor": self.monitor,
            "metrics": _jsonable_row(row),
            "objective": _describe(self.objective),
        }
        path = self.checkpoint(tag, self.bare, meta)
        if path is not None:
            self.checkpoints[tag] = str(path)

    def _update_best(self, row: dict[str, Any]) -> bool:
        value = row.get(self.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best_value is None or value > self.best_value + self.cfg.min_delta:
            self.best_value, self.best_epoch, self.bad_evals = float(value), row["epoch"], 0
            return True
        self.bad_evals += 1
        return False

    def _write_history(self) -> None:
        if self.out is None or not _dist.is_main():
            return
        from ..trust import atomic_write

        atomic_write(self.out / "history.csv", self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        cols = list(HISTORY_COLUMNS)
        df = pd.DataFrame(self.history)
        if df.empty:
            return pd.DataFrame(columns=cols)
        extra = [c for c in df.columns if c not in cols]
        df = df.reindex(columns=cols + extra)
        numeric = [c for c in cols if c != "epoch"]
        df[numeric] = df[numeric].astype(float)  # missing values (not evaluated, no eps) become NaN
        df["epoch"] = df["epoch"].astype(int)
        return df

    def _restore_best(self) -> None:
        if self.best_epoch is None or (self.history and self.history[-1]["epoch"] == self.best_epoch):
            return
        from ..models.checkpoint import load_state_strict, read_tensors

        if self._best_weights is not None:
            state = self._best_weights
        elif "best" in self.checkpoints:
            state = {k: v for k, v in read_tensors(self.checkpoints["best"]).items() if not k.startswith("extra/")}
        else:
            log.warning("restore_best: no weights of the best epoch were kept; the model keeps the last epoch's")
            return
        load_state_strict(self.bare, state, where="the best checkpoint")
        log.info("restored the weights of the best epoch (%s)", self.best_epoch)

    # -- main -----------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.resume and self.state_dir is not None:
            st = load_latest(self.state_dir)
            if st is not None:
                self._restore(st)
            else:
                log.info("resume: no saved training state in %s; starting from the beginning", self.state_dir)
        self._hook("on_train_start")
        if self.resumed_from is None:
            self._save_state(0)  # the starting point: an interruption in epoch 1 resumes from here
        epoch = self.start_epoch
        if self.stop_reason == "completed" and self.start_epoch < cfg.epochs:
            for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                t0 = time.perf_counter()
                row = self._train_epoch(epoch)
                row["train_time_s"] = time.perf_counter() - t0
                due = cfg.eval_every > 0 and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
                if due:
                    self._evaluate(row)
                self._hook("on_epoch_end", row)
                improved = self._update_best(row) if due else False
                stop = cfg.patience is not None and self.bad_evals >= cfg.patience
                if stop:
                    self.stop_reason = "early-stopped"
                self.history.append(_jsonable_row(row))
                self._save("last", epoch, row)
                if improved:
                    self._save("best", epoch, row)
                if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                    self._save(f"epoch-{epoch}", epoch, row)
                self._save_state(epoch)
                self._write_history()
                log.info(
                    "epoch %d/%d: loss %.4f, test clean %.4f, test robust %s",
                    epoch,
                    cfg.epochs,
                    row["train_loss"],
                    row.get("test_clean_acc", float("nan")),
                    row.get("test_robust_acc"),
                )
                report_epoch(epoch, self.history[-1])  # the lifecycle hook rtk_epoch_metrics, inside a run
                if self.on_epoch is not None:
                    self.on_epoch(epoch, row)
                if stop:
                    log.info(
                        "early stopping after epoch %d: %s did not improve for %d evaluations (best %.4f at epoch %s)",
                        epoch,
                        self.monitor,
                        cfg.patience,
                        self.best_value,
                        self.best_epoch,
                    )
                    break
        if cfg.restore_best:
            self._restore_best()
        self.model.eval()
        history = self.frame()
        if self.out is not None and self.plot and len(history) and _dist.is_main():
            from .plots import plot_history

            plot_history(history, self.out / "robust-overfitting.png", best_epoch=self.best_epoch)
        return TrainResult(
            history,
            self.best_epoch,
            self.best_value,
            self.monitor,
            self.stop_reason,
            len(self.history),
            dict(self.checkpoints),
            self.resumed_from,
        )


def train_model(
    model: nn.Module,
    objective: Objective,
    data: DatasetBundle,
    cfg: LoopConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    parameters: Iterable[Any] | None = None,
    callbacks: Sequence[Any] = (),
    out: str | os.PathLike | None = None,
    recipe: Any = None,
    checkpoint: Checkpointer | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    plot: bool = True,
    epoch_indices: Callable[[int], torch.Tensor] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    batch_weights: Callable[[int], Sequence[float]] | None = None,
) -> TrainResult:
    """Train ``model`` in place and return a :class:`TrainResult`.

    - ``parameters``: what to optimise (parameters or param-group dicts); default every
      parameter with ``requires_grad``.
    - ``callbacks``: :class:`Callback` objects (any object with some of its methods).
    - ``out``: a directory for ``history.csv`` (rewritten every epoch),
      ``robust-overfitting.png``, ``checkpoints/<tag>`` (needs ``recipe``) and the resume
      state ``state/``. ``checkpoint``/``state_dir`` override where checkpoints and state go.
    - ``resume``: continue from the newest state in the state directory, restoring model,
      optimizer, scheduler, epoch and RNG states exactly (a fresh start when there is none).
    - ``epoch_indices(epoch)``: the training examples (and order) for this process in that
      epoch, e.g. a distributed shard; default: all, shuffled by a generator seeded ``seed``.
    - ``batch_weights(epoch)``: a factor per step multiplying the loss before backward
      (:meth:`rtk.distributed.DistributedBatchSampler.weights`: under DDP, 1.0 except for an
      uneven last global batch).

    Under torchrun (``model`` wrapped with :func:`rtk.distributed.wrap_model` and
    ``epoch_indices`` giving this rank's shard), the epoch's loss and accuracy are summed over
    ranks, so every rank records the same history and stops early together; only rank 0
    writes checkpoints (through the default checkpointer), the resume state and history.csv.

    Raises :class:`~rtk.errors.ConfigError` before any work for bad input, and
    :class:`~rtk.errors.TrainingDivergedError` naming the epoch and batch when the loss
    becomes NaN or inf (checkpoints of the last good epoch are kept).
    """
    cfg = cfg if cfg is not None else LoopConfig()
    run = _TrainingRun(
        model,
        objective,
        data,
        cfg,
        device=device,
        seed=seed,
        parameters=parameters,
        callbacks=callbacks,
        out=out,
        recipe=recipe,
        checkpoint=checkpoint,
        state_dir=state_dir,
        resume=resume,
        plot=plot,
        epoch_indices=epoch_indices,
        on_epoch=on_epoch,
        batch_weights=batch_weights,
    )
    return run.run()


def fit(
    model: nn.Module, objective: Objective, data: DatasetBundle, cfg: LoopConfig | None = None, **kwargs: Any
) -> pd.DataFrame:
    """:func:`train_model` (the same arguments: ``device``, ``seed``, ``on_epoch``, ...), returning
    only the per-epoch history (one row per epoch). ``history.attrs`` holds ``best_epoch``,
    ``best_value``, ``monitor`` and ``stop_reason``."""
    res = train_model(model, objective, data, cfg, **kwargs)
    hist = res.history
    hist.attrs.update(
        best_epoch=res.best_epoch, best_value=res.best_value, monitor=res.monitor, stop_reason=res.stop_reason
    )
    return hist


def has_state(state_dir: str | os.PathLike) -> bool:
    """Whether ``state_dir`` holds a complete training state to resume from."""
    from .state import latest_state_path

    return latest_state_path(state_dir) is not None


__all__ = [
    "Callback",
    "Checkpointer",
    "LoopConfig",
    "LoopState",
    "TrainResult",
    "accuracy",
    "evaluate",
    "fit",
    "has_state",
    "train_model",
]
