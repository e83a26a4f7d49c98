"""scripts/results_paper1.py reads the design's study directories and turns per-seed measures
into intervals and verdicts; checked on a synthetic study with known answers (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import results_paper1 as rp  # noqa: E402

LAYERS = 9


def _write(run: Path, table: str, df: pd.DataFrame) -> None:
    (run / "tables" / table.split("/")[0]).mkdir(parents=True, exist_ok=True)
    df.to_csv(run / "tables" / f"{table}.csv", index=False)


def _point(run: Path, seed: int, rng: np.random.Generator, width: int = 32) -> None:
    run.mkdir(parents=True)
    config = {"models": {"std": {"options": {"blocks": 2, "width": width}}}, "dataset": {"name": "digits"}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "state.json").write_text(json.dumps({"stages": {"evaluate": {"status": "completed", "seconds": 1}}}))
    noise = lambda: float(rng.normal(0, 0.01))  # noqa: E731
    scores = {"std": 0.30 + noise(), "pgd": 0.05 + noise(), "trades": 0.06 + noise()}
    _write(
        run,
        "similarity-benign/block_structure",
        pd.DataFrame([{"model": m, "score": v, "blocks": 2, "layers": LAYERS} for m, v in scores.items()]),
    )
    hm = [
        {"model_a": m, "model_b": m, "depth_a": i, "depth_b": j, "value": 1.0 if i == j else 0.5}
        for m in scores
        for i in range(LAYERS)
        for j in range(LAYERS)
    ]
    _write(run, "similarity-benign/heatmaps", pd.DataFrame(hm))
    # corresponding layers of std and pgd: *more* alike late than early (the opposite of finding 4)
    diag = [{"pair": "std vs pgd", "depth": d, "value": 0.3 + 0.05 * d + noise()} for d in range(LAYERS)]
    _write(run, "similarity-benign/diagonal", pd.DataFrame(diag))
    # cross-class specialization: the same for both models up to noise (not distinguishable)
    cc = [
        {"model": m, "depth": d, "cross_class_specialization": 0.5 + noise()}
        for m in ("std", "pgd", "trades")
        for d in range(LAYERS)
    ]
    _write(run, "similarity-benign/cross_class", pd.DataFrame(cc))
    acc = [
        {"model": m, "attack": a, "accuracy": 0.9, "n": 450} for m in scores for a in ("clean", "worst_case", "jpeg")
    ]
    _write(run, "evaluate/accuracy", pd.DataFrame(acc))


def test_design_verdicts_from_a_synthetic_study(tmp_path):
    rng = np.random.default_rng(0)
    study = tmp_path / "runs" / "paper1-design-width"
    points = []
    for seed in (0, 1, 2):
        pid = f"p{seed:03d}"
        _point(study / "points" / pid, seed, rng)
        values = {"seed": seed, "models.std.width": 32}
        points.append({"id": pid, "values": values, "dir": f"points/{pid}", "state": "completed"})
    (study / "study.json").write_text(json.dumps({"points": points}))
    dest = tmp_path / "out"
    dest.mkdir()
    keys = rp.design_keys(tmp_path / "runs", dest, lambda run, stage, name, new: f"![{new}]")
    eff = pd.read_csv(dest / "design_effects.csv").set_index("measure")
    assert set(eff["config"]) == {"blocks 2, width 32, data 1"} and (eff["n"] == 3).all()
    assert eff.loc["block score of the standard model", "verdict"] == "reproduced"
    assert eff.loc["block score: standard - PGD-AT", "verdict"] == "reproduced"
    assert abs(eff.loc["block score: standard - PGD-AT", "mean"] - 0.25) < 0.03
    assert eff.loc["standard vs PGD-AT CKA: first third - last third", "verdict"] == "contradicted"
    assert eff.loc["cross-class specialization, last third: standard - PGD-AT", "verdict"] == (
        "not distinguishable at this scale"
    )
    assert "Headline point: blocks 2, width 32, data 1" in keys["design_headline"]
    assert keys["design_heatmaps"] == "![design_heatmap_std.png] ![design_heatmap_pgd.png]"
    assert "Not run yet" in keys["design_overfitting"]  # that study is absent
    assert "reproduced" in keys["design_results"]


def _study(study: Path, seeds: tuple[int, ...], rng: np.random.Generator) -> None:
    points = []
    for seed in seeds:
        pid = f"p{seed:03d}"
        _point(study / "points" / pid, seed, rng, width=64)
        points.append({"id": pid, "values": {"seed": seed}, "dir": f"points/{pid}", "state": "completed"})
    (study / "study.json").write_text(json.dumps({"points": points}))


def test_design_extension_pools_its_seeds_with_the_study(tmp_path):
    rng = np.random.default_rng(1)
    runs = tmp_path / "runs"
    _study(runs / "paper1-design-blocks", (0, 1, 2), rng)
    _study(runs / "paper1-design-blocks-seeds", (3, 4, 5), rng)
    (runs / "paper1-design-blocks-seeds.time").write_text("Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02:00\n")
    dest = tmp_path / "out"
    dest.mkdir()
    keys = rp.design_keys(runs, dest, lambda run, stage, name, new: f"![{new}]")
    eff = pd.read_csv(dest / "design_effects.csv")
    assert set(eff["study"]) == {"blocks"} and (eff["n"] == 6).all()
    assert "`experiments/paper1-design-blocks.toml` (more seeds: " in keys["design_times"]
    assert "| 62.0 |" in keys["design_times"]
    # an extension that repeats a seed of its study would count it twice: refused, naming both
    again = runs / "paper1-design-blocks-seeds" / "points" / "p002"
    _point(again, 2, rng, width=64)
    record = json.loads((runs / "paper1-design-blocks-seeds" / "study.json").read_text())
    record["points"].append({"id": "p002", "values": {"seed": 2}, "dir": "points/p002", "state": "completed"})
    (runs / "paper1-design-blocks-seeds" / "study.json").write_text(json.dumps(record))
    with pytest.raises(
        SystemExit,
        match=r"blocks-seeds/points/p002: the point \{\"seed\": 2\} was already read from .*/paper1-design-blocks/points/p002",
    ):
        rp.design_keys(runs, dest, lambda run, stage, name, new: f"![{new}]")


def test_paper2_design_intervals_from_synthetic_studies(tmp_path):
    import results_paper2 as rp2

    runs = tmp_path / "runs"
    rng = np.random.default_rng(1)
    for name, make, seeds in (
        ("retention", "retention", (0, 1, 2)),
        ("high-compression", "high", (0, 1, 2)),
        ("high-compression-seeds", "high", (3, 4)),  # an extension: more seeds of the same file
    ):
        study = runs / f"paper2-design-{name}"
        points = []
        for seed in seeds:
            pid = f"p{seed:03d}"
            run = study / "points" / pid
            run.mkdir(parents=True)
            (run / "state.json").write_text(json.dumps({"stages": {"x": {"status": "completed"}}}))
            if make == "retention":
                for stage, col in (
                    ("prune-std", "clean_frac"),
                    ("prune-adv", "robust_frac"),
                    ("prune-ver", "verified_frac"),
                ):
                    rows = [{"method": "dense", "target": "1x", col: 1.0}]
                    rows += [{"method": "lwm", "target": "10x", col: 0.99 + rng.normal(0, 0.002)}]
                    rows += [{"method": "hydra", "target": "10x", col: 0.90 + rng.normal(0, 0.05)}]
                    _write(run, f"{stage}/compression", pd.DataFrame(rows))
            else:
                rows = []
                for target, gap in (("100x", 0.05), ("1000x", 0.0)):
                    base = 0.5 + rng.normal(0, 0.05)  # a seed effect shared by both methods
                    rows += [
                        {"method": "lwm", "target": target, "robust_acc": base},
                        {"method": "hydra", "target": target, "robust_acc": base + gap + rng.normal(0, 0.003)},
                    ]
                _write(run, "01-prune/compression", pd.DataFrame(rows))
            points.append({"id": pid, "values": {"seed": seed}, "dir": f"points/{pid}", "state": "completed"})
        (study / "study.json").write_text(json.dumps({"points": points}))
    out = tmp_path / "out"
    values = rp2.design_values(runs, out)
    ret = pd.read_csv(out / "paper2" / "design-retention.csv").set_index(["objective", "method"])
    assert ret.loc[("PGD-AT", "LWM"), "verdict"] == "reproduced"  # 0.99 > 0.925, tight
    assert ret.loc[("IBP", "LWM"), "paper"] == 0.85 and (ret["n"] == 3).all()
    hv = pd.read_csv(out / "paper2" / "design-hydra-vs-lwm.csv").set_index("target")
    assert hv.loc["100x", "verdict"] == "reproduced"  # a 5-point gap paired by seed
    assert abs(hv.loc["100x", "mean"] - 0.05) < 0.01 and (hv["n"] == 5).all()  # pooled with the extension
    assert hv.loc["1000x", "verdict"] == "not distinguishable at this scale"
    assert "reproduced" in values["design_retention"] and "HYDRA - LWM" in values["design_hydra_vs_lwm"]


def _overfitting_study(study: Path, seeds: tuple[int, ...], rng: np.random.Generator) -> None:
    points = []
    for seed in seeds:
        run = study / "points" / f"p{seed:03d}"
        run.mkdir(parents=True)
        (run / "state.json").write_text(json.dumps({"stages": {"evaluate": {"status": "completed"}}}))
        best = 0.70 + rng.normal(0, 0.01)
        last = best - 0.05 + rng.normal(0, 0.003)
        acc = [
            {"model": m, "attack": a, "accuracy": v, "n": 2000}
            for m, v in (("robust@best", best), ("robust@last", last))
            for a in ("clean", "worst_case")
        ]
        _write(run, "evaluate/accuracy", pd.DataFrame(acc))
        hist = pd.DataFrame(
            {"epoch": [1, 2, 3], "test_robust_acc": [0.5, best, last], "train_robust_acc": [0.5, 0.8, 0.99]}
        )
        _write(run, "train-robust/history", hist)
        points.append({"id": run.name, "values": {"seed": seed}, "dir": f"points/{run.name}", "state": "completed"})
    (study / "study.json").write_text(json.dumps({"points": points}))


def test_overfitting_study_and_block_pilot_from_synthetic_runs(tmp_path):
    """Design 3 of finding 3 is read like designs 1 and 2 (a drop of 0.05 by seed: reproduced), its
    extension's seeds pooled with its own, with its accuracy-by-epoch figure averaged over seeds;
    the block pilot lists its shapes' scores."""
    runs = tmp_path / "runs"
    rng = np.random.default_rng(2)
    for study, seeds in (
        ("paper1-design-overfitting-fmnist", (0, 1, 2)),
        ("paper1-design-overfitting-fmnist-seeds", (3,)),
    ):
        _overfitting_study(runs / study, seeds, rng)
    pilot = runs / "paper1-block-pilot"
    entries = []
    for i, (width, score) in enumerate(((16, 0.1), (64, 0.2))):
        run = pilot / "points" / f"p{i:03d}"
        run.mkdir(parents=True)
        (run / "state.json").write_text(json.dumps({"stages": {"train-std": {"status": "completed"}}}))
        config = {
            "models": {"std": {"options": {"blocks": 2, "width": width}}},
            "dataset": {"name": "fashion-mnist", "options": {"resolution": 14, "train_fraction": 1 / 60}},
        }
        (run / "config.json").write_text(json.dumps(config))
        for stage, value in (("similarity-all", score), ("similarity-blocks", score / 2)):
            _write(run, f"{stage}/block_structure", pd.DataFrame([{"model": "std", "score": value}]))
        _write(run, "train-std/history", pd.DataFrame([{"train_clean_acc": 1.0, "test_clean_acc": 0.8}]))
        entries.append({"id": run.name, "values": {}, "dir": f"points/{run.name}", "state": "completed"})
    (pilot / "study.json").write_text(json.dumps({"points": entries}))
    dest = tmp_path / "out"
    dest.mkdir()
    keys = rp.design_keys(runs, dest, lambda run, stage, name, new: f"![{new}]")
    table = pd.read_csv(dest / "design_overfitting_fmnist.csv").set_index("measure")
    drop = table.loc["PGD-20 accuracy: best - last checkpoint (robust overfitting)"]
    assert drop["verdict"] == "reproduced" and abs(drop["mean"] - 0.05) < 0.01 and drop["n"] == 4  # 3 + 1 more seed
    assert keys["design_overfitting_fmnist_figure"].endswith("(paper1/design_overfitting_fmnist_history.png)")
    assert (dest / "design_overfitting_fmnist_history.png").stat().st_size > 0
    assert "Not run yet" in keys["design_overfitting"] and keys["design_overfitting_figure"] == ""
    shapes = pd.read_csv(dest / "block_pilot.csv").set_index("shape")
    assert shapes.loc["blocks 2, width 64, data 0.0167, fashion-mnist 14x14", "score, all layers"] == 0.2
    assert "| blocks 2, width 16, data 0.0167, fashion-mnist 14x14 | 0.100 | 0.050 |" in keys["block_pilot"]
