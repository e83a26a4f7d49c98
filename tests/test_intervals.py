"""scripts/intervals.py: t intervals over seeds, paired and Welch intervals, and the verdicts,
on synthetic numbers with known answers (and scipy's quantiles as the reference)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import intervals as iv  # noqa: E402


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 30, 120])
@pytest.mark.parametrize("p", [0.975, 0.95, 0.995, 0.1])
def test_t_quantile_matches_scipy(df, p):
    stats = pytest.importorskip("scipy.stats")
    assert iv.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7, abs=1e-9)


def test_t_quantile_known_values_and_bad_input():
    assert iv.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)  # the 3-seed multiplier
    assert iv.t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    assert iv.t_quantile(0.5, 5) == 0.0
    with pytest.raises(ValueError):
        iv.t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        iv.t_quantile(0.9, 0)


def test_t_interval_by_hand():
    r = iv.t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 / math.sqrt(3)
    assert (r.mean, r.n, r.sd) == (2.0, 3, 1.0)
    assert r.low == pytest.approx(2 - half, abs=1e-5) and r.high == pytest.approx(2 + half, abs=1e-5)
    assert not r.excludes_zero()  # 2 - 2.48 < 0: three seeds this spread cannot tell 2 from 0
    one = iv.t_interval([0.7])
    assert one.n == 1 and math.isinf(one.low) and not one.excludes_zero()
    assert "no interval" in str(one) and "[" in str(r)
    with pytest.raises(ValueError, match="finite"):
        iv.t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        iv.t_interval([])


def test_paired_interval_removes_the_shared_seed_effect():
    """Seed effects shared by both configurations cancel in the paired interval, not in Welch's."""
    seed_effect = np.array([0.0, 0.3, -0.3])
    a = 0.50 + seed_effect + np.array([0.01, -0.01, 0.0])
    b = 0.45 + seed_effect
    paired = iv.paired_interval(a, b)
    assert paired.mean == pytest.approx(0.05)
    assert iv.verdict(paired, +1) == iv.REPRODUCED
    assert iv.verdict(paired, -1) == iv.CONTRADICTED
    unpaired = iv.welch_interval(a, b)
    assert unpaired.mean == pytest.approx(0.05)
    assert iv.verdict(unpaired, +1) == iv.UNCLEAR
    with pytest.raises(ValueError, match="equal lengths"):
        iv.paired_interval([1, 2], [1, 2, 3])


def test_welch_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.61, 0.64, 0.60, 0.66], [0.52, 0.58, 0.49]
    r = iv.welch_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert r.low == pytest.approx(ci.low, rel=1e-6) and r.high == pytest.approx(ci.high, rel=1e-6)


def test_verdicts_on_noise_and_on_effects():
    rng = np.random.default_rng(0)
    noise = iv.t_interval(rng.normal(0.0, 1.0, size=3))
    assert iv.verdict(noise) == iv.UNCLEAR  # this draw's interval covers 0
    assert iv.verdict(iv.t_interval([0.20, 0.22, 0.21])) == iv.REPRODUCED
    assert iv.verdict(iv.t_interval([-0.20, -0.22, -0.21])) == iv.CONTRADICTED
    assert iv.verdict(iv.t_interval([0.20])) == iv.UNCLEAR
    with pytest.raises(ValueError):
        iv.verdict(noise, 0)


def test_coverage_is_about_95_percent():
    """Over many synthetic 3-seed experiments, the interval covers the true mean ~95% of the time."""
    rng = np.random.default_rng(1)
    q = iv.t_quantile(0.975, 2)
    x = rng.normal(1.0, 2.0, size=(4000, 3))
    m, se = x.mean(1), x.std(1, ddof=1) / math.sqrt(3)
    covered = np.mean((m - q * se <= 1.0) & (1.0 <= m + q * se))
    assert 0.935 < covered < 0.965
