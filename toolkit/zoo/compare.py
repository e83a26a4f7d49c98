"""Zoo models beside your models: one data subset, one attack suite, one table.

:func:`compare_robustness` evaluates every contender (a zoo model or one of yours) on
the same examples with the same attacks and sanity checks, through rtk's evaluation
engine (:func:`rtk.evaluation.evaluate`), and returns a long table (one row per model x
attack) and a wide one (one row per model) that also carries the sanity checks and what
RobustBench reports for each zoo entry. :func:`compare_layers_table` computes CKA between the layers
of zoo models and yours.
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


@dataclass(frozen=True)
class Contender:
    """A model in a comparison: its name, module, and whether it comes from the zoo."""

    name: str
    module: nn.Module
    source: str = "rtk"  # "zoo" or "rtk"
    zoo_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "source": self.source,
            "zoo_id": self.zoo_id,
            "params": sum(p.numel() for p in self.module.parameters()),
        }


def zoo_contender(name: str, module: nn.Module) -> Contender:
    """A contender for a module loaded by :func:`rtk.zoo.load_zoo_model` (it carries ``rtk_zoo``)."""
    meta = getattr(module, "rtk_zoo", None) or {}
    return Contender(name, module, "zoo", meta.get("id"))


@dataclass
class Comparison:
    """What :func:`compare_robustness` produced: each model's evaluation and the tables."""

    contenders: list[Contender]
    results: list[Any]  # rtk.evaluation.EvaluationResult, in the order of contenders
    accuracy: pd.DataFrame  # one row per model x attack (and worst case per threat)
    comparison: pd.DataFrame  # one row per model
    checks: pd.DataFrame | None  # one row per model x sanity check
    notes: list[str]


def _column(label: str, threat: str, many: bool) -> str:
    return f"{label} @ {threat}" if many else label


def _wide_row(c: Contender, res: Any, reported: Any) -> dict[str, Any]:
    acc = res.accuracy
    row: dict[str, Any] = {**c.to_dict(), "n": int(acc["n"].iloc[0]), "clean": res.clean_accuracy}
    attacks = acc[~acc["attack"].isin(["clean", "worst_case"])]
    for label, group in attacks.groupby("attack", sort=False):
        for _, r in group.iterrows():
            value = r["accuracy"] if not pd.isna(r["accuracy"]) else r["cumulative"]
            row[_column(str(label), r["threat"], len(group) > 1)] = value
    worst = acc[acc["attack"] == "worst_case"]
    if len(worst) > 1:
        for _, r in worst.iterrows():
            row[f"worst_case @ {r['threat']}"] = r["accuracy"]
    norm, eps = res.headline
    from rtk.evaluation import threat_label

    row["worst_case"] = res.headline_accuracy
    row["threat"] = threat_label(norm, eps)
    if res.checks:
        row["checks_passed"] = sum(ch.passed is True for ch in res.checks)
        row["checks_failed"] = len(res.failed_checks)
        row["failed_checks"] = ", ".join(ch.name for ch in res.failed_checks)
    row["reported_clean"] = reported.clean_acc if reported else None
    row["reported_robust"] = reported.robust_acc if reported else None
    row["reported_eps"] = reported.eps if reported else None
    return row


def _threat_note(c: Contender, res: Any, reported: Any) -> str | None:
    """Say so when the headline threat is not the one RobustBench reports for a zoo entry."""
    if c.zoo_id is None or reported is None:
        return None
    from rtk.evaluation import threat_label
    from rtk.options import parse_fraction

    zoo_threat = c.zoo_id.split("/")[1]
    norm, eps = res.headline
    if zoo_threat.startswith("corruptions"):
        return (
            f"`{c.name}` is a common-corruptions entry: RobustBench's reported_robust is its accuracy under "
            f"corruptions, not under {threat_label(norm, eps)}."
        )
    rep_eps = float(parse_fraction(reported.eps)) if reported.eps else None
    if norm != zoo_threat or rep_eps is None or eps is None or abs(rep_eps - eps) > 1e-6:
        return (
            f"`{c.name}`: RobustBench reports {zoo_threat} eps={reported.eps} (AutoAttack); this comparison's "
            f"headline is {threat_label(norm, eps)}, so reported_robust is not directly comparable."
        )
    return None


def compare_robustness(
    contenders: Sequence[Contender],
    split: Any,
    units: Sequence[Any],
    *,
    indices: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    eps: Any = None,
    headline_eps: float | None = None,
    early_exit: bool = False,
    checks: Any = True,
    store_root: Any = None,
    seed: int = 0,
) -> Comparison:
    """Evaluate every contender on the same examples of ``split`` (``indices``, default all)
    under the same attack units and sanity checks, with :func:`rtk.evaluation.evaluate`.

    ``units`` are :class:`rtk.evaluation.AttackUnit` (from :func:`rtk.evaluation.make_units`
    or :func:`rtk.evaluation.function_units`). ``checks``: True, False or a
    :class:`rtk.evaluation.CheckSettings`. ``store_root``: where per-example records go
    (default: memory only). Returns a :class:`Comparison`; its ``comparison`` table has one
    row per model: clean accuracy, each attack, the per-example worst case over the suite
    (the headline), the sanity checks, and for zoo entries RobustBench's reported numbers.
    """
    from rtk.evaluation import RecordStore, evaluate

    from .catalog import reported_metrics

    contenders = list(contenders)
    if not contenders:
        raise ValueError("nothing to compare: give at least one model")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique in a comparison, got {names}")
    reported = reported_metrics() if any(c.zoo_id for c in contenders) else {}
    results, wide_rows, acc_frames, check_frames, notes = [], [], [], [], []
    for c in contenders:
        model = c.module.to(device).eval()
        res = evaluate(
            model,
            split,
            list(units),
            indices=indices,
            batch_size=batch_size,
            device=device,
            store=RecordStore(store_root),
            name=c.name,
            eps=eps,
            headline_eps=headline_eps,
            early_exit=early_exit,
            checks=checks,
            strict=False,
            seed=seed,
        )
        results.append(res)
        rep = reported.get(c.zoo_id or "")
        wide_rows.append(_wide_row(c, res, rep))
        acc_frames.append(res.accuracy.assign(model=c.name, source=c.source))
        if res.checks:
            check_frames.append(res.checks_table.assign(model=c.name))
        note = _threat_note(c, res, rep)
        if note:
            notes.append(note)
        log.info("compared %s: clean %.3f, worst case %.3f", c.name, res.clean_accuracy, res.headline_accuracy)
    accuracy = pd.concat(acc_frames, ignore_index=True)
    accuracy = accuracy[["model", "source"] + [col for col in accuracy.columns if col not in ("model", "source")]]
    checks_df = None
    if check_frames:
        checks_df = pd.concat(check_frames, ignore_index=True)
        checks_df = checks_df[["model"] + [col for col in checks_df.columns if col != "model"]]
    return Comparison(contenders, results, accuracy, pd.DataFrame(wide_rows), checks_df, notes)


# ---------------------------------------------------------------------------- CKA between layers
def pick_layers(model: nn.Module, patterns: Sequence[str] = (), max_layers: int | None = None) -> list[str]:
    """Names of the layers to compare, chosen by :func:`rtk.similarity.select_layers` (name
    patterns, default every conv / BN / ReLU / pooling / linear layer), at most
    ``max_layers`` of them, evenly spaced in depth (the first and last always kept)."""
    from rtk.similarity import select_layers

    names = [n for n, _ in select_layers(model, list(patterns) or None)]
    if max_layers is not None and len(names) > max_layers:
        if max_layers == 1:
            return [names[-1]]
        step = (len(names) - 1) / (max_layers - 1)
        names = [names[round(i * step)] for i in range(max_layers)]
    return names


def _exact(names: Sequence[str]) -> list[str]:
    import re

    return ["re:" + re.escape(n) for n in names]


def layer_cka(
    model_a: nn.Module,
    model_b: nn.Module,
    split: Any,
    *,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    names: tuple[str, str] = ("a", "b"),
) -> Any:
    """Minibatch linear CKA (unbiased HSIC) between ``layers_a`` of ``model_a`` and ``layers_b``
    of ``model_b`` on the same inputs, with :mod:`rtk.similarity` (``iter_features`` and
    ``MinibatchCKA``). Returns an :class:`rtk.similarity.Heatmap` (rows: ``model_a``)."""
    import numpy as np

    from rtk.similarity import Heatmap, MinibatchCKA, ModelInput, iter_features

    inputs = [ModelInput(names[0], model_a, _exact(layers_a)), ModelInput(names[1], model_b, _exact(layers_b))]
    acc = None
    rows = cols = ()
    for (fa, fb), y in iter_features(inputs, split, batch_size=batch_size, device=device):
        if len(y) < 4:  # the unbiased estimator needs 4 examples per batch
            continue
        if acc is None:
            rows, cols = tuple(fa), tuple(fb)
            acc = MinibatchCKA(list(rows), list(cols))
        acc.update([fa[k] for k in rows], [fb[k] for k in cols])
    if acc is None:
        raise ValueError(f"CKA needs batches of at least 4 examples; the split has {len(split)}")
    values = acc.compute().cpu().numpy().astype(np.float64)
    return Heatmap(values, rows, cols, names[0], names[1], "minibatch linear CKA")


def compare_layers_table(
    zoo_side: Sequence[Contender],
    mine: Sequence[Contender],
    split: Any,
    *,
    layers: Sequence[str] = (),
    max_layers: int = 24,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    figure_path: Callable[[str], Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """CKA between the layers of each zoo model and each of your models on ``split``.

    Returns ``(table, figures, note)``: one row per zoo layer x your layer with the relative
    depth of each (0 = input side, 1 = output side); a heatmap per pair when
    ``figure_path(name)`` is given; a sentence for the report.
    """
    from rtk.similarity import plot_heatmap

    rows, figures = [], {}
    for z in zoo_side:
        names_z = pick_layers(z.module, layers, max_layers)
        for m in mine:
            names_m = pick_layers(m.module, layers, max_layers)
            h = layer_cka(
                z.module,
                m.module,
                split,
                layers_a=names_z,
                layers_b=names_m,
                batch_size=batch_size,
                device=device,
                names=(z.name, m.name),
            )
            for i, lz in enumerate(h.rows):
                for j, lm in enumerate(h.cols):
                    rows.append(
                        {
                            "zoo_model": z.name,
                            "model": m.name,
                            "zoo_layer": lz,
                            "layer": lm,
                            "zoo_depth": i / max(len(h.rows) - 1, 1),
                            "depth": j / max(len(h.cols) - 1, 1),
                            "cka": float(h.values[i, j]),
                        }
                    )
            if figure_path is not None:
                name = f"cka-{z.name}-vs-{m.name}"
                figures[name] = plot_heatmap(
                    h, figure_path(name), title=f"minibatch linear CKA: {z.name} (zoo) vs {m.name}"
                )
    table = pd.DataFrame(rows)
    summary = cka_summary(table)
    parts = [
        f"{r['zoo_model']} vs {r['model']}: {r['mean']:.2f} over all {r['layers']} layer pairs, "
        f"{r['early']:.2f} early and {r['late']:.2f} late at matched relative depth"
        for _, r in summary.iterrows()
    ]
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
        out.append(
            {
                "zoo_model": zm,
                "model": m,
                "layers": f"{g['zoo_layer'].nunique()}x{g['layer'].nunique()}",
                "mean": g["cka"].mean(),
                "early": early["cka"].mean() if len(early) else float("nan"),
                "late": late["cka"].mean() if len(late) else float("nan"),
                "max": g["cka"].max(),
            }
        )
    return pd.DataFrame(out)
