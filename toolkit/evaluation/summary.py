"""From per-example records to the numbers people read: clean accuracy, accuracy per
attack and eps, the per-example worst case over the suite, and the accuracy-vs-eps curve.

An example counts as broken at a threat model (norm, eps) when some attack of the suite
found a *valid* adversarial example for it (misclassified, finite, in [0, 1], within that
attack's own budget) whose perturbation, measured in that norm, is at most eps. Evidence is
used across attacks and budgets: an example PGD broke with ||delta||_inf = 3/255 is broken
at 4/255 too, and a CW-L2 example small enough in L-inf counts against an L-inf threat.

Two accuracies per attack:

- ``accuracy``: the attack alone (clean-correct examples it did not break). Reported only
  when the attack ran on every clean-correct example; with ``early_exit`` later attacks skip
  examples already broken, and their stand-alone accuracy is left empty (NaN).
- ``cumulative``: the worst case over this attack and every attack before it in suite
  order, at this attack's budget. Always reported; with or without early exit it is the same
  number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, RtkError
from ..options import NORMS
from .records import CLEAN
from .units import AttackUnit, fmt_eps

_NORM_COL = {**{n: n.lower() for n in NORMS}, "none": "l2"}


def threat_label(norm: str, eps: float | None) -> str:
    return "any" if norm == "none" or eps is None else f"{norm} {fmt_eps(eps)}"


@dataclass
class UnitOutcome:
    """One attack unit's per-example outcome, aligned to the evaluated indices."""

    unit: AttackUnit
    attacked: np.ndarray
    invalid: np.ndarray
    correct: np.ndarray
    pred: np.ndarray
    broken: np.ndarray
    norms: dict[str, np.ndarray]

    def evidence(self, norm: str, eps: float | None, tol: float) -> np.ndarray:
        """Broken within (norm, eps); any valid break when ``norm`` is "none"."""
        if norm == "none" or eps is None:
            return self.broken
        d = self.norms[norm]
        with np.errstate(invalid="ignore"):
            return self.broken & (np.nan_to_num(d, nan=np.inf) <= eps + tol + tol * eps)


@dataclass
class Outcomes:
    """Clean and per-unit outcomes of one model on the evaluated indices."""

    indices: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    clean_correct: np.ndarray
    units: list[UnitOutcome]

    def broken_at(
        self, norm: str, eps: float | None, tol: float, upto: int | None = None, exclude: Sequence[str] = ()
    ) -> np.ndarray:
        """Broken at (norm, eps) by any unit (the first ``upto``), except the units whose keys are in ``exclude``."""
        out = np.zeros(len(self.indices), dtype=bool)
        for u in self.units[: upto if upto is not None else len(self.units)]:
            if u.unit.key in exclude:
                continue
            out |= u.evidence(norm, eps, tol)
        return out

    def robust_at(self, norm: str, eps: float | None, tol: float) -> np.ndarray:
        return self.clean_correct & ~self.broken_at(norm, eps, tol)


def outcomes(records: pd.DataFrame, units: Sequence[AttackUnit], indices: Sequence[int]) -> Outcomes:
    """Align the records of one model to ``indices``; every unit must cover every index."""
    idx = np.asarray(indices, dtype=np.int64)
    pos = np.full(int(idx.max()) + 1 if len(idx) else 0, -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    unit = records["unit"]
    if isinstance(unit.dtype, pd.CategoricalDtype):
        codes, names = unit.cat.codes.to_numpy(), [str(c) for c in unit.cat.categories]
    else:
        names, codes = np.unique(unit.to_numpy().astype(str), return_inverse=True)
        names = [str(c) for c in names]
    index_col = records["index"].to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    groups = {name: order[bounds[k] : bounds[k + 1]] for k, name in enumerate(names) if bounds[k + 1] > bounds[k]}

    def aligned(key: str, label: str) -> dict[str, np.ndarray]:
        rows = groups.get(key)
        if rows is None:
            raise RtkError(f"records: no results for {label}")
        ix = index_col[rows]
        inside = ix < len(pos)
        rows, ix = rows[inside], ix[inside]
        p = pos[ix]
        keep = p >= 0
        rows, p = rows[keep], p[keep]
        if len(np.unique(p)) < len(idx):
            missing = np.setdiff1d(np.arange(len(idx)), p)
            raise RtkError(f"records: {label} is missing {len(missing)} example(s), e.g. index {int(idx[missing[0]])}")
        out = {}
        for c in ("label", "pred", "correct", "attacked", "invalid", "linf", "l2", "l1"):
            col = records[c].to_numpy()
            arr = np.empty(len(idx), dtype=col.dtype)
            arr[p] = col[rows]
            out[c] = arr
        return out

    clean = aligned(CLEAN, "the clean predictions")
    cc = clean["correct"].astype(bool)
    out = []
    for u in units:
        r = aligned(u.key, f"attack {u.label!r} (eps {fmt_eps(u.eps)})")
        attacked, invalid, correct = (
            r["attacked"].astype(bool),
            r["invalid"].astype(np.int64),
            r["correct"].astype(bool),
        )
        norms = {
            "Linf": r["linf"].astype(np.float64),
            "L2": r["l2"].astype(np.float64),
            "L1": r["l1"].astype(np.float64),
        }
        broken = cc & attacked & (invalid == 0) & ~correct
        out.append(UnitOutcome(u, attacked, invalid, correct, r["pred"].astype(np.int64), broken, norms))
    return Outcomes(idx, clean["label"].astype(np.int64), clean["pred"].astype(np.int64), cc, out)


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def accuracy_table(o: Outcomes, threats: Sequence[tuple[str, float | None]], tol: float) -> pd.DataFrame:
    """Rows: clean, one per unit (stand-alone and cumulative accuracy), one per threat
    (the worst case over the whole suite)."""
    n = len(o.indices)
    rows = [
        {
            "attack": "clean",
            "threat": "none",
            "norm": "none",
            "eps": np.nan,
            "accuracy": o.clean_correct.mean(),
            "cumulative": o.clean_correct.mean(),
            "attacked": 0,
            "broken": 0,
            "median_delta": np.nan,
            "n": n,
        }
    ]
    for k, u in enumerate(o.units):
        unit = u.unit
        complete = bool((u.attacked | ~o.clean_correct).all())
        norm, eps = (unit.norm, unit.eps) if unit.budgeted else ("none", None)
        cumulative = o.clean_correct & ~o.broken_at(norm, eps, tol, upto=k + 1)
        rows.append(
            {
                "attack": unit.label,
                "threat": threat_label(unit.norm, unit.eps),
                "norm": unit.norm,
                "eps": unit.eps if unit.eps is not None else np.nan,
                "accuracy": float((o.clean_correct & ~u.broken).mean()) if complete else np.nan,
                "cumulative": float(cumulative.mean()),
                "attacked": int(u.attacked.sum()),
                "broken": int(u.broken.sum()),
                "median_delta": _median(u.norms[unit.norm if unit.norm in u.norms else "L2"][u.broken]),
                "n": n,
            }
        )
    for norm, eps in threats:
        rows.append(
            {
                "attack": "worst_case",
                "threat": threat_label(norm, eps),
                "norm": norm,
                "eps": eps if eps is not None else np.nan,
                "accuracy": float(o.robust_at(norm, eps, tol).mean()),
                "cumulative": float(o.robust_at(norm, eps, tol).mean()),
                "attacked": 0,
                "broken": int((o.clean_correct & o.broken_at(norm, eps, tol)).sum()),
                "median_delta": np.nan,
                "n": n,
            }
        )
    return pd.DataFrame(rows)


def worst_case_table(o: Outcomes, threats: Sequence[tuple[str, float | None]], tol: float) -> pd.DataFrame:
    """The accuracy-vs-eps curve: worst case over the suite at every threat."""
    rows = [
        {
            "threat": threat_label(norm, eps),
            "norm": norm,
            "eps": eps if eps is not None else np.nan,
            "accuracy": float(o.robust_at(norm, eps, tol).mean()),
            "clean_accuracy": float(o.clean_correct.mean()),
            "n": len(o.indices),
        }
        for norm, eps in threats
    ]
    return pd.DataFrame(rows)


def per_example_table(o: Outcomes) -> pd.DataFrame:
    """One row per example and attack unit: which attack broke which example, at what eps,
    with how large a perturbation (in the attack's norm; L2 for attacks without a budget)."""
    frames = []
    for u in o.units:
        status = np.where(
            ~o.clean_correct,
            "clean_wrong",
            np.where(
                ~u.attacked, "skipped", np.where(u.invalid != 0, "invalid", np.where(u.broken, "broken", "robust"))
            ),
        )
        unit = u.unit
        frames.append(
            pd.DataFrame(
                {
                    "index": o.indices,
                    "label": o.label,
                    "clean_pred": o.clean_pred,
                    "attack": unit.label,
                    "norm": unit.norm,
                    "eps": unit.eps if unit.eps is not None else np.nan,
                    "status": status,
                    "adv_pred": u.pred,
                    "delta": u.norms[unit.norm if unit.norm in u.norms else "L2"],
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                "index": o.indices,
                "label": o.label,
                "clean_pred": o.clean_pred,
                "status": np.where(o.clean_correct, "robust", "clean_wrong"),
            }
        )
    return pd.concat(frames, ignore_index=True)


def headline_threat(
    units: Sequence[AttackUnit], threats: Sequence[tuple[str, float | None]], headline_eps: float | None = None
) -> tuple[str, float | None]:
    """The threat of the headline number: the norm of the first bounded attack, at
    ``headline_eps`` when given, else at the largest eps that attack was run at (its own
    budget when it ran once). Without bounded attacks: "any" budget."""
    bounded = [u for u in units if u.budgeted]
    if not bounded:
        return threats[0] if threats else ("none", None)
    first = bounded[0]
    if headline_eps is not None:
        ran = sorted({float(u.eps) for u in bounded if u.norm == first.norm})
        hit = [e for e in ran if math.isclose(e, float(headline_eps), rel_tol=1e-9, abs_tol=1e-12)]
        if not hit:
            raise ConfigError(
                f"headline_eps: {fmt_eps(float(headline_eps))} is not an eps at which a {first.norm} attack runs "
                f"(they run at {', '.join(fmt_eps(e) for e in ran)}); choose one of those, or add it to eps"
            )
        return first.norm, hit[0]
    same = [u.eps for u in bounded if u.label == first.label and u.norm == first.norm]
    return first.norm, float(max(same))


def plot_curves(curves: pd.DataFrame, accuracy: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Accuracy vs eps, one panel per norm: the worst case of every model (bold), each
    attack alone (thin; its cumulative accuracy when the stand-alone one is not reported),
    clean accuracy dashed. ``curves``/``accuracy`` may hold several models (a ``model``
    column). Returns None when no norm has two or more eps."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = curves[curves["norm"] != "none"]
    norms = [n for n in NORMS if curves.loc[curves.norm == n, "eps"].nunique() >= 2]
    if not norms:
        return None
    if "model" not in curves:
        curves = curves.assign(model="model")
        accuracy = accuracy.assign(model="model")
    accuracy = accuracy[~accuracy.attack.isin(["clean", "worst_case"])]
    models = list(dict.fromkeys(curves.model))
    attacks = list(dict.fromkeys(accuracy.attack))
    single = len(models) == 1
    styles = [":", "--", "-.", (0, (1, 1)), (0, (3, 1, 1, 1))]
    fig, axes = plt.subplots(1, len(norms), figsize=(5.6 * len(norms), 4.0), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for i, model in enumerate(models):
            g = curves[(curves.norm == norm) & (curves.model == model)].sort_values("eps")
            color = "black" if single else f"C{i}"
            ax.plot(
                g.eps, g.accuracy, "-o", color=color, lw=2.4, ms=5, label=f"{'' if single else model + ': '}worst case"
            )
            ax.axhline(
                g.clean_accuracy.iloc[0],
                color=color,
                ls="--",
                lw=1,
                alpha=0.6,
                label=f"{'' if single else model + ': '}clean",
            )
            for j, label in enumerate(attacks):
                ga = accuracy[(accuracy.model == model) & (accuracy.norm == norm) & (accuracy.attack == label)]
                if len(ga) < 2:
                    continue
                ga = ga.sort_values("eps")
                y = ga.accuracy.where(ga.accuracy.notna(), ga.cumulative)
                short = label if len(label) <= 36 else label[:33] + "..."
                ax.plot(
                    ga.eps,
                    y,
                    ls=styles[j % len(styles)] if not single else "-",
                    marker=".",
                    lw=1.2,
                    alpha=0.85,
                    color=f"C{j}" if single else color,
                    label=f"{'' if single else model + ': '}{short}",
                )
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ticks = sorted(set(curves.loc[curves.norm == norm, "eps"].dropna()))
        if len(ticks) <= 8:
            ax.set_xticks(ticks, [fmt_eps(t) for t in ticks], fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"accuracy vs eps ({norm})")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "Outcomes",
    "UnitOutcome",
    "accuracy_table",
    "headline_threat",
    "outcomes",
    "per_example_table",
    "plot_curves",
    "threat_label",
    "worst_case_table",
]
