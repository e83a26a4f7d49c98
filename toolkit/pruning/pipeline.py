"""The robust pruning pipeline: pre-train -> prune -> fine-tune, all with one objective.

:func:`compress` runs it for several pruning methods and compression targets and returns the
table of Sehwag et al. (2019) / HYDRA: remaining parameters, MACs, measured sparsity, clean,
empirical robust and (when certifiers are given) verified robust accuracy, each accuracy also
as a fraction of the dense model's. Structured methods add measured inference time and
memory against the dense model. :func:`plot_accuracy_vs_compression` draws the figure.

Everything that could make the run fail (unknown layer patterns, a model the dependency
graph cannot handle) is checked before any training starts.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..data.core import DatasetBundle, batches
from ..errors import ConfigError
from ..jobs import PruneRequest, default
from .base import PhaseLoop, PruneJob, Pruner, ScoreTraining, compression_label, ratio_from_compression
from .masks import dense_export
from .measure import activation_bytes, inference_times, model_bytes, remaining_params, size_report
from .select import LayerSelection, SelectedLayers, select_layers

log = logging.getLogger(__name__)

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(name, build(model) -> attack(x, y) -> x_adv)``
AttackBuilder = tuple[str, Callable[[nn.Module], AttackFn]]
#: ``(name, certified_accuracy(model, split) -> float)``
CertifierFn = tuple[str, Callable[[nn.Module, Any], float]]


@dataclass(frozen=True)
class Method:
    """A pruning method in the pipeline: a label for tables and model names, and the pruner."""

    label: str
    pruner: Pruner
    describe: str = ""

    @property
    def structured(self) -> bool:
        return bool(getattr(self.pruner, "structured", False))


@dataclass(frozen=True)
class Target:
    """A compression target: ``ratio`` of the selected weights removed (``compression = 1/(1-ratio)``)."""

    ratio: float
    compression: float

    @classmethod
    def from_compression(cls, c: float) -> Target:
        return cls(ratio_from_compression(c), float(c))

    @classmethod
    def from_ratio(cls, r: float) -> Target:
        return cls(float(r), 1.0 / (1.0 - r))

    @property
    def label(self) -> str:
        return compression_label(round(self.compression, 2))


@dataclass(frozen=True)
class Schedule(PhaseLoop):
    """Epochs and learning rates of the three phases; ``loop_options`` are further
    :class:`rtk.training.LoopConfig` fields shared by every phase (schedule, grad_clip, ...)."""

    pretrain_epochs: int = default(PruneRequest, "pretrain_epochs")
    finetune_epochs: int = default(PruneRequest, "finetune_epochs")
    batch_size: int = default(PruneRequest, "batch_size")
    lr: float = default(PruneRequest, "lr")
    finetune_lr: float = default(PruneRequest, "finetune_lr")
    optimizer: str = default(PruneRequest, "optimizer")
    momentum: float = default(PruneRequest, "momentum")
    weight_decay: float = default(PruneRequest, "weight_decay")
    scores: ScoreTraining = field(default_factory=ScoreTraining)
    loop_options: dict[str, Any] = field(default_factory=dict)

    def loop(self, epochs: int, lr: float) -> Any:
        return self.phase_loop(epochs, lr, self.weight_decay)


@dataclass(frozen=True)
class Evaluator:
    """Clean, empirical robust (worst case over ``attacks``) and verified accuracy on ``split``."""

    split: Any
    attacks: Sequence[AttackBuilder] = ()
    certifiers: Sequence[CertifierFn] = ()
    batch_size: int = 256
    device: torch.device | str = "cpu"

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from ..evaluation.basic import robust_accuracy

        model.eval()
        attacks = [(name, build(model)) for name, build in self.attacks]
        accs = robust_accuracy(model, self.split, attacks, batch_size=self.batch_size, device=self.device)
        out = {"clean_acc": accs["clean"]}
        if attacks:
            out["robust_acc"] = accs["worst_case"]
            out.update({f"acc[{name}]": accs[name] for name, _ in attacks})
        verified = []
        for name, certify in self.certifiers:
            v = float(certify(model, self.split))
            out[f"verified[{name}]"] = v
            verified.append(v)
        if verified:
            out["verified_acc"] = max(verified)  # the best certifier (a lower bound of their union)
        return out


@dataclass
class CompressionResult:
    table: pd.DataFrame
    attacks: pd.DataFrame
    selected: SelectedLayers
    infos: dict[str, dict[str, Any]]


def example_batch(data: DatasetBundle, n: int = 8, device: torch.device | str = "cpu") -> torch.Tensor:
    """The first ``n`` training images, for tracing and counting MACs."""
    x, _ = next(iter(batches(data.train, n, device=device)))
    return x


def pruned_name(model: str, method: str, target: Target) -> str:
    return f"{model}-{method}-{target.label}"


def compress(
    model: nn.Module,
    methods: Sequence[Method],
    targets: Sequence[Target],
    *,
    data: DatasetBundle,
    objective: Any,
    selection: LayerSelection,
    schedule: Schedule,
    evaluate: Evaluator,
    model_name: str = "model",
    device: torch.device | str = "cpu",
    seed: int = 0,
    timing: bool = True,
    on_pretrained: Callable[[nn.Module], None] | None = None,
    on_pruned: Callable[[str, nn.Module, dict[str, Any]], None] | None = None,
) -> CompressionResult:
    """Pre-train ``model`` (when ``schedule.pretrain_epochs``), then for every method and
    target prune a copy and fine-tune it, all with ``objective``; evaluate every model.

    ``on_pruned(name, model, info)`` receives each fine-tuned model (to save it).
    """
    from ..training import fit

    device = torch.device(device)
    model.to(device)
    example = example_batch(data, device=device)
    selected = select_layers(model, selection, example)
    for m in methods:  # every check before any work
        m.pruner.validate(model, selected.names, example)
    mods = dict(model.named_modules())
    n_selected = sum(mods[n].weight.numel() for n in selected.names)
    for target in targets:
        if n_selected * (1.0 - target.ratio) < 1.0:
            raise ConfigError(
                f"compression {target.compression:g} keeps fewer than one of the {n_selected} weights of the "
                f"selected layers of {model_name!r}; allowed: compression up to {n_selected} for this model"
            )

    if schedule.pretrain_epochs > 0:
        log.info("pre-training %s for %d epochs", model_name, schedule.pretrain_epochs)
        fit(model, objective, data, schedule.loop(schedule.pretrain_epochs, schedule.lr), device=device, seed=seed)
        if on_pretrained is not None:
            on_pretrained(model)
    model.eval()

    mods = dict(model.named_modules())
    layer_sizes = {n: mods[n].weight.numel() for n in selected.names}
    params_dense = remaining_params(model)
    timing_batch = next(iter(batches(evaluate.split, min(evaluate.batch_size, 128), device=device)))[0]

    def measure(m: nn.Module) -> dict[str, Any]:
        rep = size_report(m, example, selected.names, params_dense=params_dense, layer_sizes_dense=layer_sizes)
        return {
            "params": rep.params,
            "compression": rep.compression,
            "sparsity": rep.sparsity,
            "layer_compression": 1.0 / max(1.0 - rep.sparsity, 1e-12),
            "macs": rep.macs,
            "macs_sparse": rep.macs_sparse,
        }

    rows: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    dense_row = {
        "model": model_name,
        "method": "dense",
        "target": "1x",
        "ratio": 0.0,
        **measure(model),
        **evaluate(model),
    }
    rows.append(dense_row)
    infos: dict[str, dict[str, Any]] = {}
    for method in methods:
        for target in targets:
            name = pruned_name(model_name, method.label, target)
            log.info("%s: pruning %.4f of the selected weights with %s", name, target.ratio, method.label)
            job = PruneJob(
                layers=selected.names,
                example_inputs=example,
                data=data,
                objective=objective,
                device=device,
                seed=seed,
                scores=schedule.scores,
            )
            outcome = method.pruner.prune(copy.deepcopy(model), target.ratio, job)
            pruned = outcome.model.to(device)
            if schedule.finetune_epochs > 0:
                fit(
                    pruned,
                    objective,
                    data,
                    schedule.loop(schedule.finetune_epochs, schedule.finetune_lr),
                    device=device,
                    seed=seed,
                )
            pruned.eval()
            row: dict[str, Any] = {
                "model": name,
                "method": method.label,
                "target": target.label,
                "ratio": target.ratio,
                **measure(pruned),
            }
            row.update(evaluate(dense_export(copy.deepcopy(pruned))))
            info = {k: v for k, v in outcome.info.items() if not isinstance(v, pd.DataFrame)}
            for key in ("overlap_with_lwm", "channel_ratio", "reached"):
                if key in info:
                    row[key] = info[key]
            if method.structured and timing:
                row.update(_speed_and_memory(model, pruned, timing_batch))
            rows.append(row)
            infos[name] = {
                **info,
                "method": method.label,
                "target": target.label,
                "describe": method.describe,
                "structured": method.structured,
            }
            if on_pruned is not None:
                on_pruned(name, pruned, {**infos[name], "ratio": target.ratio, "compression": target.compression})
    table = _with_fractions(pd.DataFrame(rows))
    for r in rows:
        for k, v in r.items():
            if k.startswith("acc[") or k.startswith("verified["):
                attack_rows.append(
                    {"model": r["model"], "method": r["method"], "target": r["target"], "evaluation": k, "accuracy": v}
                )
    return CompressionResult(table, pd.DataFrame(attack_rows), selected, infos)


def _speed_and_memory(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict[str, float]:
    times = inference_times({"dense": dense, "pruned": pruned}, x)
    dense_mem = model_bytes(dense) + activation_bytes(dense, x)
    pruned_mem = model_bytes(pruned) + activation_bytes(pruned, x)
    return {
        "latency_ms": 1000 * times["pruned"],
        "latency_frac": times["pruned"] / max(times["dense"], 1e-12),
        "memory_mb": pruned_mem / 2**20,
        "memory_frac": pruned_mem / max(dense_mem, 1),
    }


def _with_fractions(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``<acc>_frac`` (a fraction of the dense model's accuracy) and ``params_frac``/``macs_frac``."""
    dense = df[df["method"] == "dense"].iloc[0]
    for col in ("params", "macs_sparse"):
        if col in df:
            df[f"{col.split('_')[0]}_frac"] = df[col] / max(float(dense[col]), 1.0)
    for col in ("clean_acc", "robust_acc", "verified_acc"):
        if col in df:
            base = float(dense[col])
            df[col.replace("_acc", "_frac")] = df[col] / base if base > 0 else math.nan
    return df


def plot_accuracy_vs_compression(table: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Accuracy against measured compression (log scale), one colour per method: robust
    (solid), clean (dashed), verified (dotted); the dense model as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dense = table[table["method"] == "dense"].iloc[0]
    styles = [
        ("robust_acc", "-", "o", "robust"),
        ("clean_acc", "--", "s", "clean"),
        ("verified_acc", ":", "^", "verified"),
    ]
    for i, (method, df) in enumerate(table[table["method"] != "dense"].groupby("method", sort=False)):
        df = df.sort_values("layer_compression")
        color = f"C{i}"
        for col, ls, marker, what in styles:
            if col in df and df[col].notna().any():
                ax.plot(df["layer_compression"], df[col], ls, marker=marker, color=color, label=f"{method} ({what})")
    for col, ls, _, what in styles:
        if col in table and pd.notna(dense.get(col)):
            ax.axhline(float(dense[col]), color="grey", ls=ls, lw=0.8, label=f"dense ({what})")
    ax.set_xscale("log")
    ax.set_xlabel("compression of the pruned layers (measured)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "accuracy vs compression")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
