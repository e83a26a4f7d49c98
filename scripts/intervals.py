"""Intervals over seeds and the verdicts the paper reports rest on.

    from intervals import t_interval, paired_interval, welch_interval, verdict

- :func:`t_interval`: mean and two-sided Student-t confidence interval (95% by default) of the
  values of one configuration over its seeds.
- :func:`paired_interval`: the same for the differences ``a[i] - b[i]`` of two configurations
  measured on the same seeds (paired: seed i of both shares data order and initialisation
  where the design says so).
- :func:`welch_interval`: the interval of ``mean(a) - mean(b)`` for unpaired samples (Welch).
- :func:`verdict`: "reproduced" when the interval of an effect excludes zero on the side the
  paper predicts, "contradicted" when it excludes zero on the other side, else "not
  distinguishable at this scale". With fewer than two values there is no interval, and the
  verdict is "not distinguishable at this scale".

:func:`effect_rows` applies them to a long table (one row per seed) group by group, and
:func:`study_points` lists the completed points of a study directory.

Student-t quantiles are computed here (numerical integration of the density and bisection,
about 1e-9 accurate), so the report scripts need nothing beyond the standard library, numpy and pandas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from results_common import read_time

from rtk.study import point_dir

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
UNCLEAR = "not distinguishable at this scale"
VERDICTS = (REPRODUCED, CONTRADICTED, UNCLEAR)


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on [0, |x|]
    after the substitution t = tan(u), which keeps the integrand smooth and bounded)."""
    if x == 0:
        return 0.5
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # with t = sqrt(df) tan(u): f(t) dt = c sqrt(df) cos(u)^(df - 1) du
    top = math.atan(abs(x) / math.sqrt(df))
    n = 2000
    h = top / n
    total = 0.0
    for i in range(n + 1):
        w = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += w * math.cos(i * h) ** (df - 1)
    area = math.exp(log_c) * math.sqrt(df) * total * h / 3
    return 0.5 + area if x > 0 else 0.5 - area


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    sign = 1.0 if p > 0.5 else -1.0
    target = p if p > 0.5 else 1 - p
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return sign * (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd}

    def __str__(self) -> str:
        return format_interval(self)


def _values(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"expected a flat sequence of numbers, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values must be finite, got {v.tolist()}")
    return v


def _interval(mean: float, se: float, df: float, n: int, sd: float, confidence: float) -> Interval:
    if n < 2 or not math.isfinite(se):
        return Interval(mean, -math.inf, math.inf, n, sd, confidence)
    q = t_quantile(0.5 + confidence / 2, df)
    return Interval(mean, mean - q * se, mean + q * se, n, sd, confidence)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t interval (n - 1 degrees of freedom); an unbounded
    interval for fewer than two values."""
    v = _values(values)
    if v.size == 0:
        raise ValueError("no values")
    n = int(v.size)
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    return _interval(float(v.mean()), sd / math.sqrt(n) if n > 1 else math.nan, n - 1, n, sd, confidence)


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of the mean difference ``a - b`` over paired values (same seeds, same order)."""
    va, vb = _values(a), _values(b)
    if va.shape != vb.shape:
        raise ValueError(f"paired values need equal lengths, got {va.size} and {vb.size}")
    return t_interval(va - vb, confidence)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of ``mean(a) - mean(b)`` for independent samples (Welch-Satterthwaite degrees
    of freedom); ``n`` is the smaller sample size."""
    va, vb = _values(a), _values(b)
    na, nb = int(va.size), int(vb.size)
    if na == 0 or nb == 0:
        raise ValueError("no values")
    diff = float(va.mean() - vb.mean())
    if na < 2 or nb < 2:
        return Interval(diff, -math.inf, math.inf, min(na, nb), math.nan, confidence)
    sa, sb = va.var(ddof=1) / na, vb.var(ddof=1) / nb
    se = math.sqrt(sa + sb)
    if se == 0:
        return Interval(diff, diff, diff, min(na, nb), 0.0, confidence)
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    return _interval(diff, se, df, min(na, nb), math.sqrt(va.var(ddof=1) + vb.var(ddof=1)), confidence)


def verdict(interval: Interval, expected: int = 1) -> str:
    """The verdict on an effect whose sign the paper predicts (``expected`` +1: positive, -1:
    negative) from the interval of the effect."""
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1, got {expected}")
    if not interval.excludes_zero():
        return UNCLEAR
    return REPRODUCED if (interval.mean > 0) == (expected > 0) else CONTRADICTED


def effect_rows(
    df: pd.DataFrame, by: Sequence[str], effect: str, *, expected: int = 1, paired_with: str | None = None
) -> pd.DataFrame:
    """One row per group of ``by``: the mean of column ``effect`` over its rows (one per seed)
    with its 95% interval and verdict; with ``paired_with``, the paired interval of
    ``effect - paired_with`` instead (both measured on the same seed, one row per seed)."""
    rows = []
    for key, part in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        a = part[effect].to_numpy(dtype=float)
        iv = paired_interval(a, part[paired_with].to_numpy(dtype=float)) if paired_with else t_interval(a)
        rows.append(
            {
                **dict(zip(by, key)),
                "mean": iv.mean,
                "low": iv.low,
                "high": iv.high,
                "n": iv.n,
                "verdict": verdict(iv, expected),
            }
        )
    return pd.DataFrame(rows)


def study_points(study_dir: Path) -> list[tuple[dict, Path]]:
    """The completed points of a study directory (as ``rtk run`` writes it for a file with a
    ``[sweep]`` table): ``(swept values, run directory)``, in the study's order."""
    record = json.loads((Path(study_dir) / "study.json").read_text())
    out = []
    for entry in record.get("points", []):
        if entry.get("state") == "completed":
            out.append((dict(entry.get("values", {})), point_dir(study_dir, entry["id"])))
    return out


def pooled_points(runs: Path, names: Sequence[str]) -> list[tuple[dict, Path]]:
    """The completed points of the study directories ``<runs>/<name>`` that exist, in order: a
    study and its extensions (more seeds of the same file, run into directories of their own).
    A point whose swept values were already read (a seed run twice) is refused, naming both."""
    seen: dict[str, Path] = {}
    out = []
    for name in names:
        if not (Path(runs) / name / "study.json").exists():
            continue
        for values, path in study_points(Path(runs) / name):
            key = json.dumps(values, sort_keys=True)
            if key in seen:
                raise SystemExit(
                    f"{path}: the point {key} was already read from {seen[key]}; an extension runs seeds of its own"
                )
            seen[key] = path
            out.append((values, path))
    return out


def study_time_rows(runs: Path, names: Sequence[str], extends: dict[str, str] | None = None) -> list[dict]:
    """One row per study directory ``<runs>/<name>`` present: points completed of all, the sum of
    the points' wall seconds (``study.json``) and, when ``<runs>/<name>.time`` holds the output of
    ``/usr/bin/time -v`` around the ``rtk run``, the study's wall and CPU (user + system) minutes.
    ``extends`` maps an extension's directory to the experiment it ran more seeds of."""
    rows = []
    for name in names:
        study = Path(runs) / name
        if not (study / "study.json").exists():
            continue
        points = json.loads((study / "study.json").read_text()).get("points", [])
        file = (extends or {}).get(name)
        row = {
            "study": f"`experiments/{name}.toml`"
            if file is None
            else f"`experiments/{file}.toml` (more seeds: `{runs}/{name}`)",
            "points completed": f"{sum(p.get('state') == 'completed' for p in points)} of {len(points)}",
            "points (min)": f"{sum(float(p.get('seconds') or 0) for p in points) / 60:.1f}",
            "wall (min)": "n/a",
            "CPU (min)": "n/a",
        }
        timing = read_time(Path(runs) / f"{name}.time")
        if "wall_s" in timing:
            row["wall (min)"] = f"{timing['wall_s'] / 60:.1f}"
        if "cpu_s" in timing:
            row["CPU (min)"] = f"{timing['cpu_s'] / 60:.1f}"
        rows.append(row)
    return rows


def format_interval(iv: Interval, digits: int = 3) -> str:
    """``0.412 [0.380, 0.444] (n = 3)``; ``0.412 (n = 1, no interval)`` for a single value."""
    if not math.isfinite(iv.low):
        return f"{iv.mean:.{digits}f} (n = {iv.n}, no interval)"
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}] (n = {iv.n})"
