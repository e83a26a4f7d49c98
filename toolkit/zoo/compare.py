"""Zoo models beside your models: one data subset, one attack suite, one table.

:func:`compare_robustness` evaluates every contender (a zoo model or one of yours) on
the same examples with the same attacks, through rtk's evaluation machinery
(:mod:`rtk.evaluation`), and returns a long table (one row per model x attack) and a
wide one (one row per model) that also carries what RobustBench reports for each zoo
entry. :func:`compare_layers` computes CKA between the layers of two models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

log = logging.getLogger(__name__)

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(label, build)``: ``build(model)`` returns ``attack(x, y) -> x_adv`` for that model.
AttackFactory = tuple[str, Callable[[nn.Module], AttackFn]]


@dataclass(frozen=True)
class Contender:
    """A model in a comparison: its name, module, and whether it comes from the zoo."""

    name: str
    module: nn.Module
    source: str = "rtk"  # "zoo" or "rtk"
    zoo_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "source": self.source, "zoo_id": self.zoo_id,
                "params": sum(p.numel() for p in self.module.parameters())}


def zoo_contender(name: str, module: nn.Module) -> Contender:
    """A contender for a module loaded by :func:`rtk.zoo.load_zoo_model` (it carries ``rtk_zoo``)."""
    meta = getattr(module, "rtk_zoo", None) or {}
    return Contender(name, module, "zoo", meta.get("id"))


def _evaluate(model: nn.Module, split: Any, attacks: Sequence[tuple[str, AttackFn]], *, batch_size: int,
              device: torch.device | str) -> dict[str, float]:
    from rtk.evaluation.basic import robust_accuracy

    return robust_accuracy(model, split, attacks, batch_size=batch_size, device=device)


def compare_robustness(contenders: Sequence[Contender], split: Any, attacks: Sequence[AttackFactory], *,
                       batch_size: int = 128, device: torch.device | str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every contender on ``split`` (the same examples) under the same attacks.

    Returns ``(long, wide)``: ``long`` has one row per model x attack (``clean``, each
    attack, ``worst_case``) with ``accuracy`` and ``n``; ``wide`` one row per model with
    those accuracies as columns, its parameter count, and for zoo entries RobustBench's
    reported clean and robust (AutoAttack) accuracy.
    """
    from .catalog import reported_metrics

    if not contenders:
        raise ValueError("nothing to compare: give at least one model")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique in a comparison, got {names}")
    n = len(split)
    reported = reported_metrics() if any(c.zoo_id for c in contenders) else {}
    long_rows, wide_rows = [], []
    for c in contenders:
        model = c.module.to(device).eval()
        built = [(label, build(model)) for label, build in attacks]
        accs = _evaluate(model, split, built, batch_size=batch_size, device=device)
        base = c.to_dict()
        for key, acc in accs.items():
            long_rows.append({"model": c.name, "source": c.source, "attack": key, "accuracy": acc, "n": n})
        rep = reported.get(c.zoo_id or "")
        wide_rows.append({**base, **accs, "n": n,
                          "reported_clean": rep.clean_acc if rep else None,
                          "reported_robust": rep.robust_acc if rep else None,
                          "reported_eps": rep.eps if rep else None})
        log.info("compared %s: %s", c.name, ", ".join(f"{k} {v:.3f}" for k, v in accs.items()))
    return pd.DataFrame(long_rows), pd.DataFrame(wide_rows)


# ---------------------------------------------------------------------------- CKA between layers
#: Leaf layer types whose outputs are compared by default.
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
    nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Softplus, nn.ELU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
)


def select_layers(model: nn.Module, patterns: Sequence[str] = (), max_layers: int | None = None) -> list[str]:
    """Names of the leaf layers to compare: those matching ``patterns`` (fnmatch), else every
    conv / linear / normalization / activation / pooling layer; at most ``max_layers``,
    evenly spaced in depth (the first and last always kept)."""
    import fnmatch

    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    if patterns:
        names = [n for n, _ in leaves if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    else:
        names = [n for n, m in leaves if isinstance(m, LAYER_TYPES)]
    if max_layers is not None and len(names) > max_layers:
        if max_layers == 1:
            return [names[-1]]
        step = (len(names) - 1) / (max_layers - 1)
        names = [names[round(i * step)] for i in range(max_layers)]
    return names


class FeatureTap:
    """Forward hooks that keep the (flattened) output of named layers for the current batch.
    A layer called several times in one forward keeps its last output."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"no layer named {', '.join(missing)}")
        self.names = list(names)
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def keep(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor):
                self.features[name] = out.detach().flatten(1)
        return keep

    def take(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(f"layers {', '.join(missing)} produced no tensor output in the forward pass")
        out = [self.features[n] for n in self.names]
        self.features = {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _minibatch_cka_class():
    """rtk.similarity's streaming minibatch CKA (unbiased HSIC), or None when it is absent."""
    try:
        from rtk.similarity.streaming import MinibatchCKA
    except ImportError:
        return None
    return MinibatchCKA


def layer_cka(model_a: nn.Module, model_b: nn.Module, split: Any, *, layers_a: Sequence[str], layers_b: Sequence[str],
              batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Minibatch linear CKA (unbiased HSIC, :mod:`rtk.similarity`) between ``layers_a`` of
    ``model_a`` and ``layers_b`` of ``model_b`` on the same inputs: ``[len(a), len(b)]``."""
    from rtk.data import batches
    from rtk.runtime import progress

    cls = _minibatch_cka_class()
    if cls is None:
        raise RuntimeError("rtk.similarity provides no minibatch CKA")
    acc = cls(layers_a, layers_b)
    tap_a, tap_b = FeatureTap(model_a, layers_a), FeatureTap(model_b, layers_b)
    model_a.eval()
    model_b.eval()
    try:
        with torch.no_grad():
            for x, _ in progress(batches(split, batch_size, device=device, drop_last=len(split) >= 2 * batch_size),
                                 desc="CKA"):
                if len(x) < 4:  # the unbiased estimator needs 4 examples per batch
                    continue
                model_a(x)
                model_b(x)
                acc.update(tap_a.take(), tap_b.take())
    finally:
        tap_a.close()
        tap_b.close()
    return acc.compute()


def _heatmap(matrix: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str, path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * len(cols), 1.2 + 0.3 * len(rows)))
    im = ax.imshow(matrix.float().cpu().numpy(), vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="linear CKA")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_layers_table(zoo_side: Sequence[Contender], mine: Sequence[Contender], split: Any, *,
                         layers: Sequence[str] = (), max_layers: int = 24, batch_size: int = 64,
                         device: torch.device | str = "cpu", figure_path: Callable[[str], Any] | None = None,
                         ) -> tuple[pd.DataFrame | None, dict[str, Any], str]:
    """CKA between the layers of each zoo model and each of your models on ``split``.

    Returns ``(table, figures, note)``: one row per zoo layer x your layer with the relative
    depth of each (0 = input side, 1 = output side); a heatmap per pair when
    ``figure_path(name)`` is given; a sentence for the report.
    """
    if _minibatch_cka_class() is None:
        return None, {}, "CKA was skipped: rtk.similarity provides no minibatch CKA in this installation."
    rows, figures = [], {}
    for z in zoo_side:
        names_z = select_layers(z.module, layers, max_layers)
        for m in mine:
            names_m = select_layers(m.module, layers, max_layers)
            if not names_z or not names_m:
                raise ValueError(f"no layers to compare between {z.name!r} and {m.name!r} (patterns {list(layers)})")
            mat = layer_cka(z.module, m.module, split, layers_a=names_z, layers_b=names_m, batch_size=batch_size,
                            device=device)
            for i, lz in enumerate(names_z):
                for j, lm in enumerate(names_m):
                    rows.append({"zoo_model": z.name, "model": m.name, "zoo_layer": lz, "layer": lm,
                                 "zoo_depth": i / max(len(names_z) - 1, 1), "depth": j / max(len(names_m) - 1, 1),
                                 "cka": float(mat[i, j])})
            if figure_path is not None:
                name = f"cka-{z.name}-vs-{m.name}"
                figures[name] = _heatmap(mat, names_z, names_m, f"linear CKA: {z.name} (rows) vs {m.name}",
                                         figure_path(name))
    table = pd.DataFrame(rows)
    summary = cka_summary(table)
    parts = [f"{r['zoo_model']} vs {r['model']}: {r['mean']:.2f} over all {r['layers']} layer pairs, "
             f"{r['early']:.2f} early and {r['late']:.2f} late at matched relative depth"
             for _, r in summary.iterrows()]
    note = f"Linear CKA (minibatch, unbiased HSIC) on {len(split)} test examples: " + "; ".join(parts) + "."
    return table, figures, note


def cka_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair of models: mean CKA over all layer pairs, and over layers at matched relative
    depth in the first (``early``) and last (``late``) third of both networks."""
    out = []
    for (zm, m), g in table.groupby(["zoo_model", "model"], sort=False):
        matched = g[(g["zoo_depth"] - g["depth"]).abs() <= 1 / 6]
        early = matched[(matched["zoo_depth"] <= 1 / 3)]
        late = matched[(matched["zoo_depth"] >= 2 / 3)]
        out.append({"zoo_model": zm, "model": m, "layers": f"{g['zoo_layer'].nunique()}x{g['layer'].nunique()}",
                    "mean": g["cka"].mean(), "early": early["cka"].mean() if len(early) else float("nan"),
                    "late": late["cka"].mean() if len(late) else float("nan"), "max": g["cka"].max()})
    return pd.DataFrame(out)
