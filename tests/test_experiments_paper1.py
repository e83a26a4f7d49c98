"""The quick digits variants of the paper-1 experiments (experiments/paper1-*-digits.toml) run
end to end, exactly as shipped, and show the effects of Cianfarani et al. (2022) that hold
robustly at this scale:

- CKA of every layer with itself is 1 (the diagonal of every within-model heatmap), on benign
  and on adversarial inputs, and within-model heatmaps are symmetric;
- PGD-AT and TRADES models have far higher PGD accuracy than standard models of the same width;
- robust vs standard models: corresponding layers are more alike in the first third of the
  network than in the last third (finding 4); two seeds of one recipe agree at the first layer;
- the standard model's last layers separate the classes (positive specialization);
- overfitting by layer: the best checkpoint is the epoch with the highest held-out robust
  accuracy, and the early layers of the best and the last checkpoint stay very similar.

Effects that are noisy at this scale (block-structure score against width or training method,
specialization of robust vs standard models, where robust overfitting shows) are reported in
docs/results/paper1.md from the Fashion-MNIST runs, not asserted here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from experimenthelpers import shipped_run

import rtk

similarity = shipped_run("paper1-similarity")
seeds = shipped_run("paper1-seeds")
overfitting = shipped_run("paper1-overfitting")


def _accuracy(result: rtk.RunResult) -> dict[str, tuple[float, float]]:
    """model -> (clean, PGD) accuracy from the evaluate stage."""
    acc = result.tables["evaluate/accuracy"]
    out = {}
    for model, part in acc.groupby("model"):
        clean = float(part.loc[part["attack"] == "clean", "accuracy"].iloc[0])
        robust = float(part.loc[part["attack"] == "worst_case", "accuracy"].iloc[0])
        out[model] = (clean, robust)
    return out


def _thirds(values: pd.Series) -> tuple[float, float]:
    k = max(1, len(values) // 3)
    return float(values.iloc[:k].mean()), float(values.iloc[-k:].mean())


def _diagonal(result: rtk.RunResult, stage: str, pair: str) -> pd.DataFrame:
    dg = result.tables[f"{stage}/diagonal"]
    part = dg[dg["pair"] == pair].sort_values("depth")
    assert len(part) > 20, f"{pair}: only {len(part)} corresponding layers"
    return part


# ----------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("stage", ["similarity-benign", "similarity-adversarial"])
def test_within_model_heatmaps_have_unit_diagonal_and_are_symmetric(similarity, stage):
    hm = similarity.tables[f"{stage}/heatmaps"]
    within = hm[hm["model_a"] == hm["model_b"]]
    assert set(within["model_a"]) == set(similarity.tables[f"{stage}/block_structure"]["model"])
    diag = within[within["depth_a"] == within["depth_b"]]
    np.testing.assert_allclose(diag["value"].to_numpy(), 1.0, atol=1e-4)
    for model, part in within.groupby("model_a"):
        n = int(part["depth_a"].max()) + 1
        mat = np.full((n, n), np.nan)
        mat[part["depth_a"].to_numpy(), part["depth_b"].to_numpy()] = part["value"].to_numpy()
        assert not np.isnan(mat).any(), model
        np.testing.assert_allclose(mat, mat.T, atol=1e-5, err_msg=model)
        assert (mat < 1 + 1e-4).all(), model


def test_robust_models_have_higher_pgd_accuracy(similarity):
    acc = _accuracy(similarity)
    for width in (4, 8, 16):
        std_clean, std_pgd = acc[f"std-w{width}"]
        _, pgd_pgd = acc[f"pgd-w{width}"]
        assert std_clean > 0.85, (width, acc[f"std-w{width}"])
        assert pgd_pgd > std_pgd + 0.15, (width, acc)
    assert acc["trades-w16"][1] > acc["std-w16"][1] + 0.15, acc


def test_robust_vs_standard_similar_early_and_diverging_late(similarity):
    for pair in ("std-w16 vs pgd-w16", "std-w16 vs trades-w16"):
        early, late = _thirds(_diagonal(similarity, "similarity-benign", pair)["value"])
        assert early > late, (pair, early, late)


def test_block_structure_scores_and_tables(similarity):
    for stage in ("similarity-benign", "similarity-adversarial"):
        bs = similarity.tables[f"{stage}/block_structure"]
        assert ((bs["score"] >= 0) & (bs["score"] <= 1)).all()
        assert (bs["layers"] > 20).all()
    adv = similarity.tables["similarity-adversarial/heatmaps"]
    assert adv["inputs_a"].str.startswith("adversarial").all()
    ben = similarity.tables["similarity-benign/heatmaps"]
    assert (ben["inputs_a"] == "benign").all()


def test_standard_model_specializes_in_its_last_layers(similarity):
    sp = similarity.tables["specialization/specialization"]
    assert set(sp["model"]) == {"std-w16", "pgd-w16", "trades-w16"}
    std = sp[sp["model"] == "std-w16"].sort_values("depth")
    first, last = _thirds(std["specialization"])
    assert last > 0.05 and last > first, (first, last)
    assert std["class_alignment"].iloc[-1] > std["class_alignment"].iloc[0]


# ----------------------------------------------------------------------------- seeds
def test_seeds_robust_accuracy_and_self_similarity(seeds):
    acc = _accuracy(seeds)
    for s in ("s0", "s1"):
        assert acc[f"pgd-{s}"][1] > acc[f"std-{s}"][1] + 0.15, acc
    hm = seeds.tables["similarity-benign/heatmaps"]
    diag = hm[(hm["model_a"] == hm["model_b"]) & (hm["depth_a"] == hm["depth_b"])]
    np.testing.assert_allclose(diag["value"].to_numpy(), 1.0, atol=1e-4)


def test_seeds_standard_vs_robust_diverge_late(seeds):
    for pair in ("std-s0 vs pgd-s0", "std-s1 vs pgd-s1"):
        early, late = _thirds(_diagonal(seeds, "similarity-benign", pair)["value"])
        assert early > late, (pair, early, late)
    for pair in ("std-s0 vs std-s1", "pgd-s0 vs pgd-s1"):  # same recipe, other seed: alike at the input
        assert _diagonal(seeds, "similarity-benign", pair)["value"].iloc[0] > 0.9, pair


# ----------------------------------------------------------------------------- overfitting
def test_overfitting_best_checkpoint_and_early_layers(overfitting):
    hist = overfitting.tables["train-robust/history"]
    ev = hist[hist["test_robust_acc"].notna()]
    assert len(ev) == len(hist), "robust test accuracy is recorded every epoch"
    acc = _accuracy(overfitting)
    assert acc["robust@best"][1] > acc["std@best"][1] + 0.15, acc
    of = overfitting.tables["overfitting-benign/overfitting"]
    assert set(of["reference"]) == {"robust@best"}
    assert "robust@last" in set(of["checkpoint"])
    last = of[of["checkpoint"] == "robust@last"].sort_values("depth")
    early, _ = _thirds(last["value"])
    assert early > 0.9, early
    assert (last["value"] < 1 + 1e-4).all()
    adv = overfitting.tables["overfitting-adversarial/overfitting"]
    assert set(adv["checkpoint"]) == set(of["checkpoint"])
