"""Assemble the paper-1 report (docs/results/paper1.md) from the run directories of the
experiments/paper1-*.toml experiments.

    python scripts/results_paper1.py [--runs runs] [--out docs/results] [--suffix ""]

Reads, for each experiment NAME in similarity, wide, seeds, overfitting, the run directory
``<runs>/paper1-NAME<suffix>`` (as written by ``rtk run experiments/paper1-NAME.toml --out
runs/paper1-NAME``) and, when present, the log ``<runs>/paper1-NAME<suffix>.log`` ending with
the output of bash's ``time`` (``real``/``user``/``sys``). Writes tables (CSV and markdown) and
figures to ``<out>/paper1/`` and renders ``<out>/paper1.md`` from ``<out>/paper1/template.md``:
every ``{key}`` of the template is replaced by a number or a table computed from the runs
(``--keys`` lists them). Nothing here trains or evaluates anything.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from results_common import read_run, read_time  # noqa: E402

EXPERIMENTS = ("similarity", "wide", "seeds", "overfitting")
THREADS = {"wide": 2}  # intra-op threads each experiment ran with (the rest: 1)
METHODS = {"std": "standard", "pgd": "PGD-AT", "trades": "TRADES"}
_MODEL = re.compile(r"^(std|pgd|trades)-(?:w(\d+))?-?(s\d+)?$")


# ----------------------------------------------------------------------------- reading runs
def parse_model(name: str) -> dict:
    """``pgd-w16`` -> method PGD-AT, width 16, seed s0; ``std-s1`` -> standard, seed s1."""
    base = name.split("@")[0]
    m = _MODEL.match(base)
    if not m:
        return {"method": base, "width": None, "seed": "s0"}
    kind, width, seed = m.groups()
    return {"method": METHODS[kind], "width": int(width) if width else None, "seed": seed or "s0"}


def md(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    """A markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float | np.floating):
                cells.append("n/a" if np.isnan(v) else floats.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def thirds(values: pd.Series) -> tuple[float, float]:
    """Mean of the first and of the last third of a sequence of per-layer values."""
    n = len(values)
    k = max(1, n // 3)
    return float(values.iloc[:k].mean()), float(values.iloc[-k:].mean())


# ----------------------------------------------------------------------------- tables
def accuracy_table(run: dict, stage: str = "evaluate") -> pd.DataFrame:
    acc = run["tables"].get(f"{stage}/accuracy")
    if acc is None:
        return pd.DataFrame()
    rows = []
    for model, part in acc.groupby("model", sort=False):
        clean = part.loc[part["attack"] == "clean", "accuracy"]
        worst = part.loc[part["attack"] == "worst_case", "accuracy"]
        rows.append(
            {
                "model": model,
                **{k: v for k, v in parse_model(model).items() if k != "seed"},
                "clean": float(clean.iloc[0]) if len(clean) else np.nan,
                "PGD": float(worst.iloc[0]) if len(worst) else np.nan,
                "n": int(part["n"].iloc[0]),
            }
        )
    df = pd.DataFrame(rows)
    if "width" in df and df["width"].isna().all():
        df = df.drop(columns="width")
    return df


def far_similarity(hm: pd.DataFrame, model: str) -> float:
    """Mean similarity of layer pairs more than half the depth apart, within ``model``."""
    part = hm[(hm["model_a"] == model) & (hm["model_b"] == model)]
    n = int(part["depth_a"].max()) + 1
    far = part[(part["depth_a"] - part["depth_b"]).abs() > n / 2]
    return float(far["value"].mean())


def block_table(run: dict) -> pd.DataFrame:
    rows = []
    for inputs in ("benign", "adversarial"):
        bs = run["tables"].get(f"similarity-{inputs}/block_structure")
        hm = run["tables"].get(f"similarity-{inputs}/heatmaps")
        if bs is None:
            continue
        for _, r in bs.iterrows():
            rows.append(
                {
                    "model": r["model"],
                    **parse_model(r["model"]),
                    "inputs": inputs,
                    "score": r["score"],
                    "blocks": int(r["blocks"]),
                    "layers": int(r["layers"]),
                    "far_cka": far_similarity(hm, r["model"]) if hm is not None else np.nan,
                }
            )
    return pd.DataFrame(rows)


def diagonal_table(run: dict) -> pd.DataFrame:
    rows = []
    for inputs in ("benign", "adversarial"):
        dg = run["tables"].get(f"similarity-{inputs}/diagonal")
        if dg is None:
            continue
        for pair, part in dg.groupby("pair", sort=False):
            part = part.sort_values("depth")
            early, late = thirds(part["value"])
            rows.append(
                {
                    "pair": pair,
                    "inputs": inputs,
                    "first layer": float(part["value"].iloc[0]),
                    "first third": early,
                    "last third": late,
                    "last layer": float(part["value"].iloc[-1]),
                    "mean": float(part["value"].mean()),
                }
            )
    return pd.DataFrame(rows)


def self_similarity(run: dict) -> float:
    """Largest deviation from 1 of CKA(layer, same layer) on the within-model heatmaps."""
    hm = run["tables"].get("similarity-benign/heatmaps")
    if hm is None:
        return np.nan
    d = hm[(hm["model_a"] == hm["model_b"]) & (hm["depth_a"] == hm["depth_b"])]
    return float((d["value"] - 1).abs().max())


def specialization_table(run: dict) -> pd.DataFrame:
    sp = run["tables"].get("specialization/specialization")
    if sp is None:
        return pd.DataFrame()
    rows = []
    for model, part in sp.groupby("model", sort=False):
        part = part.sort_values("depth")
        early, late = thirds(part["specialization"])
        _, late_align = thirds(part["class_alignment"])
        rows.append(
            {
                "model": model,
                "method": parse_model(model)["method"],
                "first layer": float(part["specialization"].iloc[0]),
                "first third": early,
                "last third": late,
                "last layer": float(part["specialization"].iloc[-1]),
                "peak": float(part["specialization"].max()),
                "class alignment (last third)": late_align,
                "class alignment (last layer)": float(part["class_alignment"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def overfitting_tables(run: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    hist = run["tables"].get("train-robust/history")
    rows = []
    for stage in ("overfitting-benign", "overfitting-adversarial", "overfitting-std"):
        of = run["tables"].get(f"{stage}/overfitting")
        if of is None:
            continue
        inputs = "adversarial" if stage.endswith("adversarial") else "benign"
        for ck, part in of.groupby("checkpoint", sort=False):
            part = part.sort_values("depth")
            early, late = thirds(part["value"])
            rows.append(
                {
                    "reference": part["reference"].iloc[0],
                    "checkpoint": ck,
                    "inputs": inputs,
                    "first third": early,
                    "last third": late,
                    "last layer": float(part["value"].iloc[-1]),
                    "min": float(part["value"].min()),
                    "min at": part.loc[part["value"].idxmin(), "layer"],
                }
            )
    return (hist if hist is not None else pd.DataFrame()), pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
def plot_block_scores(bt: pd.DataFrame, path: Path) -> Path | None:
    part = bt[(bt["inputs"] == "benign") & (bt["seed"] == "s0") & bt["width"].notna()]
    if part.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, col, label in (
        (axes[0], "score", "block-structure score"),
        (axes[1], "far_cka", "mean CKA of layers > L/2 apart"),
    ):
        for method, g in part.groupby("method", sort=False):
            g = g.sort_values("width")
            ax.plot(g["width"], g[col], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(part["width"].unique()))
        ax.set_xticklabels([str(int(w)) for w in sorted(part["width"].unique())])
        ax.set_xlabel("width (channels of the first stage)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(hist: pd.DataFrame, path: Path) -> Path | None:
    if hist.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for col, label in (
        ("train_robust_acc", "train, PGD"),
        ("test_robust_acc", "test, PGD"),
        ("train_clean_acc", "train, clean"),
        ("test_clean_acc", "test, clean"),
    ):
        if col in hist and hist[col].notna().any():
            ax.plot(hist["epoch"], hist[col], label=label, marker="." if "robust" in col else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("PGD-AT: accuracy on fixed train/test subsets")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_history_figure(runs: list[tuple[int, dict]], path: Path) -> str:
    """The per-epoch accuracies of a robust-overfitting study, averaged over its seeds (a markdown
    image), or "" when no run has a history."""
    hists = [
        h.assign(seed=seed)
        for seed, run in runs
        if (h := run["tables"].get("train-robust/history")) is not None and "test_robust_acc" in h
    ]
    if not hists:
        return ""
    cols = ["train_clean_acc", "train_robust_acc", "test_clean_acc", "test_robust_acc"]
    hist = pd.concat(hists).groupby("epoch", as_index=False)[[c for c in cols if c in hists[0]]].mean()
    plot_history(hist[hist["test_robust_acc"].notna()], path)
    return f"![accuracy by epoch, mean over {len(hists)} seeds](paper1/{path.name})"


def overfitting_keys(of: dict, pre: str, dest: Path, save, copy_fig) -> dict[str, str]:
    """Template keys of one overfitting run, prefixed ``pre`` (``of``, ``ofl``)."""
    keys: dict[str, str] = {}
    hist, ot = overfitting_tables(of)
    keys[f"{pre}_accuracy"] = save(accuracy_table(of), f"{pre}_accuracy")
    keys[f"{pre}_table"] = save(ot, f"{pre}_by_layer")
    if not hist.empty:
        cols = [
            c
            for c in ("epoch", "lr", "train_clean_acc", "train_robust_acc", "test_clean_acc", "test_robust_acc")
            if c in hist
        ]
        hist[cols].to_csv(dest / f"{pre}_history.csv", index=False)
        ev = hist[hist["test_robust_acc"].notna()]
        best = ev.loc[ev["test_robust_acc"].idxmax()]
        last = ev.iloc[-1]
        keys[f"{pre}_best_epoch"] = str(int(best["epoch"]))
        keys[f"{pre}_epochs"] = str(int(last["epoch"]))
        for tag, r in (("best", best), ("last", last)):
            for c in ("test_robust_acc", "train_robust_acc", "test_clean_acc", "train_clean_acc"):
                keys[f"{pre}_{tag}/{c}"] = f"{r[c]:.3f}"
        keys[f"{pre}_drop"] = f"{best['test_robust_acc'] - last['test_robust_acc']:.3f}"
        keys[f"{pre}_gap_last"] = f"{last['train_robust_acc'] - last['test_robust_acc']:.3f}"
        plot_history(ev, dest / f"{pre}_history.png")
        keys[f"{pre}_history_figure"] = f"![robust overfitting curve](paper1/{pre}_history.png)"
    for _, r in ot.iterrows():
        k = f"{r['checkpoint']}|{r['inputs']}"
        keys[f"{pre}_early/{k}"] = f"{r['first third']:.3f}"
        keys[f"{pre}_late/{k}"] = f"{r['last third']:.3f}"
        keys[f"{pre}_min/{k}"] = f"{r['min']:.3f} ({r['min at']})"
    keys[f"{pre}_figure"] = copy_fig(of, "overfitting-benign", "overfitting", f"{pre}_benign.png")
    keys[f"{pre}_adv_figure"] = copy_fig(of, "overfitting-adversarial", "overfitting", f"{pre}_adversarial.png")
    keys[f"{pre}_std_figure"] = copy_fig(of, "overfitting-std", "overfitting", f"{pre}_std.png")
    return keys


def diagonal_keys(dt: pd.DataFrame) -> dict[str, str]:
    """``diag_early|late|last/<pair>|<inputs>`` of a :func:`diagonal_table`."""
    keys: dict[str, str] = {}
    for _, r in dt.iterrows():
        k = f"{r['pair']}|{r['inputs']}"
        keys[f"diag_early/{k}"] = f"{r['first third']:.3f}"
        keys[f"diag_late/{k}"] = f"{r['last third']:.3f}"
        keys[f"diag_last/{k}"] = f"{r['last layer']:.3f}"
    return keys


# ----------------------------------------------------------------------------- assembling
def build(runs: Path, out: Path, suffix: str = "") -> dict[str, str]:
    """Every template key -> its text; writes tables and figures under ``out/paper1``."""
    dest = out / "paper1"
    dest.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    loaded = {}
    timing_rows = []
    for name in EXPERIMENTS:
        path = runs / f"paper1-{name}{suffix}"
        if not (path / "state.json").exists():
            keys[f"{name}_status"] = "not run"
            continue
        run = read_run(path)
        loaded[name] = run
        t = read_time(runs / f"paper1-{name}{suffix}.log")
        timing_rows.append(
            {
                "experiment": f"`experiments/paper1-{name}.toml`",
                "command": f"`OMP_NUM_THREADS={THREADS.get(name, 1)} rtk run experiments/paper1-{name}.toml "
                f"--out runs/paper1-{name}`",
                "complete": "yes" if run["complete"] else "NO",
                "wall (min)": t.get("wall_s", run["stage_seconds"]) / 60,
                "CPU (min)": t.get("cpu_s", np.nan) / 60,
                "stages (min)": run["stage_seconds"] / 60,
            }
        )
    if timing_rows:  # absent: the table of the last render is kept (scripts/results_keys.py)
        keys["experiments_table"] = md(pd.DataFrame(timing_rows), "{:.1f}")
    quick_rows = []
    for name in EXPERIMENTS:
        path = runs / f"paper1-{name}-digits"
        if (path / "state.json").exists():
            run = read_run(path)
            t = read_time(runs / f"paper1-{name}-digits.log")
            quick_rows.append(
                {
                    "experiment": f"`experiments/paper1-{name}-digits.toml`",
                    "complete": "yes" if run["complete"] else "NO",
                    "wall (min)": t.get("wall_s", run["stage_seconds"]) / 60,
                    "CPU (min)": t.get("cpu_s", np.nan) / 60,
                }
            )
    if quick_rows:
        keys["quick_table"] = md(pd.DataFrame(quick_rows), "{:.1f}")

    def copy_fig(run: dict, stage: str, name: str, new: str) -> str:
        src = run["path"] / "figures" / stage / f"{name}.png"
        if not src.exists():
            return f"(figure {stage}/{name} missing)"
        shutil.copyfile(src, dest / new)
        return f"![{new}](paper1/{new})"

    def save(df: pd.DataFrame, name: str, floats: str = "{:.3f}") -> str:
        df.to_csv(dest / f"{name}.csv", index=False)
        return md(df, floats)

    # paper1-wide (width 16) has the recipe of paper1-similarity: its models join the same tables
    sims = [loaded[n] for n in ("similarity", "wide") if n in loaded and (n == "similarity" or loaded[n]["complete"])]
    sim = sims[0] if sims else None
    if sim is not None:

        def joined(fn) -> pd.DataFrame:
            return pd.concat([fn(r) for r in sims], ignore_index=True)

        owner = {m: r for r in sims for m in accuracy_table(r)["model"]}  # model -> the run that trained it

        def run_with(model: str) -> dict:
            return owner.get(model, sim)

        acc = joined(accuracy_table)
        keys["similarity_accuracy"] = save(acc, "similarity_accuracy")
        bt = joined(block_table)
        if bt.empty:
            bt = pd.DataFrame(
                columns=["model", "method", "width", "seed", "inputs", "score", "blocks", "layers", "far_cka"]
            )
        keys["block_table"] = save(
            bt[["model", "method", "width", "inputs", "score", "blocks", "layers", "far_cka"]], "block_structure"
        )
        if plot_block_scores(bt, dest / "block_structure_vs_width.png"):
            keys["block_figure"] = "![block structure vs width](paper1/block_structure_vs_width.png)"
        keys["self_similarity_dev"] = f"{max(self_similarity(r) for r in sims):.1e}"
        ben = bt[bt["inputs"] == "benign"].set_index("model")
        for m in ben.index:
            keys[f"block/{m}"] = f"{ben.loc[m, 'score']:.3f}"
            keys[f"far/{m}"] = f"{ben.loc[m, 'far_cka']:.3f}"
        adv = bt[bt["inputs"] == "adversarial"].set_index("model")
        for m in adv.index:
            keys[f"block_adv/{m}"] = f"{adv.loc[m, 'score']:.3f}"
            keys[f"far_adv/{m}"] = f"{adv.loc[m, 'far_cka']:.3f}"
        dt = joined(diagonal_table)
        keys["diagonal_table"] = save(dt, "diagonal")
        keys.update(diagonal_keys(dt))
        for w in sorted({int(x) for x in bt["width"].dropna()})[-2:]:  # the two widest
            for m in (f"std-w{w}", f"pgd-w{w}", f"trades-w{w}"):
                run = run_with(m)
                keys[f"heatmap/{m}"] = copy_fig(run, "similarity-benign", f"heatmap_{m}", f"heatmap_{m}.png")
                keys[f"heatmap_adv/{m}"] = copy_fig(
                    run, "similarity-adversarial", f"heatmap_{m}", f"heatmap_adv_{m}.png"
                )
            for a, b in ((f"std-w{w}", f"pgd-w{w}"), (f"std-w{w}", f"trades-w{w}"), (f"pgd-w{w}", f"trades-w{w}")):
                slug = f"{a}-vs-{b}"
                run = run_with(a)
                keys[f"heatmap/{slug}"] = copy_fig(run, "similarity-benign", f"heatmap_{slug}", f"heatmap_{slug}.png")
                keys[f"heatmap_adv/{slug}"] = copy_fig(
                    run, "similarity-adversarial", f"heatmap_{slug}", f"heatmap_adv_{slug}.png"
                )
        for name, run in zip(("similarity", "wide"), sims):
            pre = "" if name == "similarity" else "wide_"
            keys[f"{pre}diagonal_figure"] = copy_fig(run, "similarity-benign", "diagonal", f"{pre}diagonal_benign.png")
            keys[f"{pre}diagonal_adv_figure"] = copy_fig(
                run, "similarity-adversarial", "diagonal", f"{pre}diagonal_adversarial.png"
            )
        st = joined(specialization_table)
        keys["specialization_table"] = save(st, "specialization")
        for _, r in st.iterrows():
            keys[f"spec_late/{r['model']}"] = f"{r['last third']:.3f}"
            keys[f"spec_last/{r['model']}"] = f"{r['last layer']:.3f}"
            keys[f"spec_peak/{r['model']}"] = f"{r['peak']:.3f}"
            keys[f"align_last/{r['model']}"] = f"{r['class alignment (last layer)']:.3f}"
            keys[f"align_late/{r['model']}"] = f"{r['class alignment (last third)']:.3f}"
            keys[f"spec_early/{r['model']}"] = f"{r['first third']:.3f}"
        keys["specialization_figure"] = copy_fig(sim, "specialization", "specialization", "specialization.png")
        if len(sims) > 1:
            keys["wide_specialization_figure"] = copy_fig(
                sims[1], "specialization", "specialization", "wide_specialization.png"
            )
        for _, r in acc.iterrows():
            keys[f"clean/{r['model']}"] = f"{r['clean']:.3f}"
            keys[f"pgd/{r['model']}"] = f"{r['PGD']:.3f}"

    seeds = loaded.get("seeds")
    if seeds is not None:
        keys["seeds_accuracy"] = save(accuracy_table(seeds), "seeds_accuracy")
        dt = diagonal_table(seeds)
        keys["seeds_diagonal_table"] = save(dt, "seeds_diagonal")
        keys.update(diagonal_keys(dt))
        sbt = block_table(seeds)
        if sbt.empty:
            sbt = pd.DataFrame(columns=["model", "method", "seed", "inputs", "score", "blocks", "far_cka"])
        keys["seeds_block_table"] = save(
            sbt[["model", "method", "seed", "inputs", "score", "blocks", "far_cka"]], "seeds_block_structure"
        )
        keys["seeds_diagonal_figure"] = copy_fig(seeds, "similarity-benign", "diagonal", "seeds_diagonal_benign.png")
        keys["seeds_diagonal_adv_figure"] = copy_fig(
            seeds, "similarity-adversarial", "diagonal", "seeds_diagonal_adversarial.png"
        )
        for a, b in (("std-s0", "std-s1"), ("pgd-s0", "pgd-s1"), ("std-s0", "pgd-s0")):
            slug = f"{a}-vs-{b}"
            keys[f"heatmap/{slug}"] = copy_fig(
                seeds, "similarity-benign", f"heatmap_{slug}", f"seeds_heatmap_{slug}.png"
            )
            keys[f"heatmap_adv/{slug}"] = copy_fig(
                seeds, "similarity-adversarial", f"heatmap_{slug}", f"seeds_heatmap_adv_{slug}.png"
            )

    if "overfitting" in loaded:
        keys.update(overfitting_keys(loaded["overfitting"], "of", dest, save, copy_fig))
    keys.update(design_keys(runs, dest, copy_fig))
    return keys


# ----------------------------------------------------------------------------- the design (issue 18)
DESIGN_STUDIES = ("depth", "width", "fraction", "blocks")
#: the robust-overfitting studies -> their template key (and CSV table name): the first design, and
#: each later one written after the one before it had run, before its own runs
OVERFITTING_STUDIES = {
    "overfitting": "design_overfitting",
    "overfitting-hard": "design_overfitting_hard",
    "overfitting-fmnist": "design_overfitting_fmnist",
    "overfitting-small": "design_overfitting_small",
}
#: more seeds of a design study's own file, run into a directory of their own (``rtk run FILE --set
#: 'sweep.seed=[...]' --out runs/<dir>``) and pooled with the study's seeds; each extension is written
#: into the template before its runs
DESIGN_EXTENSIONS = {
    "blocks": ("paper1-design-blocks-seeds",),
    "overfitting-fmnist": ("paper1-design-overfitting-fmnist-seeds",),
}


def _design_dirs(study: str) -> list[str]:
    """A design study's directory and its extensions' (pooled by ``intervals.pooled_points``)."""
    return [f"paper1-design-{study}", *DESIGN_EXTENSIONS.get(study, ())]


DESIGN_NOT_RUN = (
    "Not run yet: no study directory `{runs}/paper1-design-{{depth,width,fraction,overfitting}}` was found. "
    "Run the four studies as above, then `python scripts/results_paper1.py`."
)


def design_config(run_dir: Path) -> str:
    """A study point's configuration without its seed, from its resolved experiment
    (``config.json``): ``blocks 2, width 16, data 1``, with the dataset named when it is not digits
    (``blocks 2, width 64, data 0.0167, fashion-mnist 14x14``)."""
    config = json.loads((run_dir / "config.json").read_text())
    shape = config["models"]["std"]["options"]
    data = config["dataset"]
    opts = data.get("options") or {}
    text = (
        f"blocks {shape.get('blocks', 2)}, width {shape.get('width', 16)}, data {opts.get('train_fraction') or 1.0:.3g}"
    )
    if data["name"] != "digits":
        size = opts.get("resolution")
        text += f", {data['name']}" + (f" {size}x{size}" if size else "")
    return text


#: the standard-only pilot that chose the shape of the ``blocks`` study
BLOCK_PILOT = "paper1-block-pilot"


def block_pilot_table(runs: Path, dest: Path) -> str:
    """The pilot's shapes with their standard models' block-structure scores (all layers and
    block outputs) and final accuracies, as markdown (also ``block_pilot.csv``)."""
    from intervals import study_points  # scripts/intervals.py

    path = runs / BLOCK_PILOT
    if not (path / "study.json").exists():
        return f"Not run yet (no `{path}`)."
    rows = []
    for _, run_dir in study_points(path):
        run = read_run(run_dir)
        row: dict[str, object] = {"shape": design_config(run_dir)}
        for stage, label in (("similarity-all", "score, all layers"), ("similarity-blocks", "score, block outputs")):
            bt = run["tables"].get(f"{stage}/block_structure")
            row[label] = float(bt["score"].iloc[0]) if bt is not None else float("nan")
        hist = run["tables"].get("train-std/history")
        if hist is not None:
            last = hist.iloc[-1]
            row["train accuracy"], row["test accuracy"] = float(last["train_clean_acc"]), float(last["test_clean_acc"])
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(dest / "block_pilot.csv", index=False)
    return md(table, "{:.3f}")


def design_measures(run: dict) -> dict[str, float]:
    """The per-seed measures behind the paper-1 verdicts, from one point's run directory."""
    out: dict[str, float] = {}
    bt = block_table(run)
    ben = bt[bt["inputs"] == "benign"].set_index("model") if not bt.empty else pd.DataFrame()
    cc = run["tables"].get("similarity-benign/cross_class")
    sp = run["tables"].get("similarity-benign/specialization")
    for m in ("std", "pgd", "trades"):
        if m in ben.index:
            out[f"block/{m}"] = float(ben.loc[m, "score"])
            out[f"far/{m}"] = float(ben.loc[m, "far_cka"])
        for name, table, col in (("xspec", cc, "cross_class_specialization"), ("spec", sp, "specialization")):
            if table is not None and (table["model"] == m).any():
                out[f"{name}/{m}"] = thirds(table[table["model"] == m].sort_values("depth")[col])[1]
    dt = diagonal_table(run)
    for pair in ("std vs pgd", "std vs trades"):
        part = dt[(dt["pair"] == pair) & (dt["inputs"] == "benign")] if not dt.empty else dt
        if len(part):
            out[f"early_minus_late/{pair}"] = float(part["first third"].iloc[0] - part["last third"].iloc[0])
    acc = run["tables"].get("evaluate/accuracy")
    if acc is not None:
        for (model, attack), part in acc.groupby(["model", "attack"], sort=False):
            out[f"acc/{model}/{attack}"] = float(part["accuracy"].iloc[0])
    return out


def overfitting_measures(run: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    acc = accuracy_table(run)
    if not acc.empty:
        by = acc.set_index("model")["PGD"]
        if {"robust@best", "robust@last"} <= set(by.index):
            out["acc_best_minus_last"] = float(by["robust@best"] - by["robust@last"])
    _, of = overfitting_tables(run)
    for inputs in ("benign", "adversarial"):
        part = of[(of["inputs"] == inputs) & (of["checkpoint"] == "robust@best")] if not of.empty else of
        if len(part):
            out[f"cka_early_minus_late/{inputs}"] = float(part["first third"].iloc[0] - part["last third"].iloc[0])
    return out


#: (finding, measure, the column compared, the column it is paired with or None, predicted sign)
DESIGN_EFFECTS = [
    ("precondition of 1: standard block structure", "block score of the standard model", "block/std", None, 1),
    ("1. block structure disappears", "block score: standard - PGD-AT", "block/std", "block/pgd", 1),
    ("1. block structure disappears", "block score: standard - TRADES", "block/std", "block/trades", 1),
    ("1. distant layers stay similar", "far-layer CKA: PGD-AT - standard", "far/pgd", "far/std", 1),
    (
        "2. less specialized (paper 1's reading)",
        "cross-class specialization, last third: standard - PGD-AT",
        "xspec/std",
        "xspec/pgd",
        1,
    ),
    ("2. less specialized (rtk's reading)", "specialization, last third: standard - PGD-AT", "spec/std", "spec/pgd", 1),
    (
        "4. alike early, diverge late",
        "standard vs PGD-AT CKA: first third - last third",
        "early_minus_late/std vs pgd",
        None,
        1,
    ),
]


def design_keys(runs: Path, dest: Path, copy_fig) -> dict[str, str]:
    """Keys ``design_results``, ``design_headline``, ``design_heatmaps`` and ``design_overfitting``:
    intervals and verdicts over seeds from the study directories of the paper-1 design."""
    from intervals import (  # scripts/intervals.py
        effect_rows,
        format_interval,
        pooled_points,
        study_time_rows,
        t_interval,
    )

    rows = []
    for study in DESIGN_STUDIES:
        for values, run_dir in pooled_points(runs, _design_dirs(study)):
            if (run_dir / "state.json").exists():
                run = read_run(run_dir)
                config, seed = design_config(run_dir), int(values.get("seed", 0))
                rows.append({"study": study, "config": config, "seed": seed, "run": run, **design_measures(run)})
    keys = {"design_results": DESIGN_NOT_RUN.format(runs=runs), "design_headline": "", "design_heatmaps": ""}
    for study, key in OVERFITTING_STUDIES.items():
        keys[key] = f"Not run yet (no `{runs}/paper1-design-{study}`)."
        keys[f"{key}_figure"] = ""
    keys["block_pilot"] = block_pilot_table(runs, dest)
    extends = {name: f"paper1-design-{study}" for study, names in DESIGN_EXTENSIONS.items() for name in names}
    times = study_time_rows(
        runs,
        [f"paper1-design-{study}" for study in (*DESIGN_STUDIES, *OVERFITTING_STUDIES)] + [BLOCK_PILOT, *extends],
        extends,
    )
    keys["design_times"] = md(pd.DataFrame(times), "{}") if times else "No study of the design has run yet."
    if rows:
        data = pd.DataFrame(rows)
        tables = []
        for finding, measure, col, other, sign in DESIGN_EFFECTS:
            if col not in data or (other is not None and other not in data):
                continue
            part = data.dropna(subset=[col] + ([other] if other else []))
            eff = effect_rows(part, ["study", "config"], col, expected=sign, paired_with=other)
            eff.insert(0, "measure", measure)
            eff.insert(0, "finding", finding)
            tables.append(eff)
        effects = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        effects.to_csv(dest / "design_effects.csv", index=False)
        keys["design_results"] = md(effects, "{:.3f}") if not effects.empty else "no measures found in the runs"
        # headline point: the largest mean standard block score whose interval excludes 0, else the widest
        pre = effects[effects["finding"].str.startswith("precondition")] if not effects.empty else effects
        ok = pre[pre["low"] > 0] if len(pre) else pre
        if len(ok):
            head = ok.sort_values("mean", ascending=False).iloc[0]
            point, why = (head["study"], head["config"]), "the largest standard block score whose interval excludes 0"
        else:
            point, why = (
                ("width", "blocks 2, width 32, data 1"),
                "no point has standard block structure: the widest point",
            )
        at = effects[(effects["study"] == point[0]) & (effects["config"] == point[1])]
        keys["design_headline"] = f"Headline point: {point[1]} ({point[0]} study; {why}).\n\n" + md(
            at.drop(columns=["study", "config"]), "{:.3f}"
        )
        first = data[(data["study"] == point[0]) & (data["config"] == point[1])].sort_values("seed")
        if len(first):
            run = first.iloc[0]["run"]
            keys["design_heatmaps"] = " ".join(
                copy_fig(run, "similarity-benign", f"heatmap_{m}", f"design_heatmap_{m}.png") for m in ("std", "pgd")
            )
        acc_cols = sorted(c for c in data.columns if c.startswith("acc/"))
        if acc_cols:
            acc_rows = []
            for (study, config), part in data.groupby(["study", "config"], sort=False):
                for c in acc_cols:
                    vals = part[c].dropna()
                    if len(vals):
                        _, model, attack = c.split("/", 2)
                        acc_rows.append(
                            {
                                "study": study,
                                "config": config,
                                "model": model,
                                "attack": attack,
                                "accuracy": format_interval(t_interval(vals)),
                            }
                        )
            pd.DataFrame(acc_rows).to_csv(dest / "design_accuracy.csv", index=False)
    for study, key in OVERFITTING_STUDIES.items():
        if not (runs / f"paper1-design-{study}" / "study.json").exists():
            continue
        of_runs = [
            (v.get("seed", 0), read_run(d))
            for v, d in pooled_points(runs, _design_dirs(study))
            if (d / "state.json").exists()
        ]
        of = pd.DataFrame([{"seed": seed, **overfitting_measures(run)} for seed, run in of_runs])
        keys[f"{key}_figure"] = mean_history_figure(of_runs, dest / f"{key}_history.png")
        parts = []
        for col, measure in (
            ("acc_best_minus_last", "PGD-20 accuracy: best - last checkpoint (robust overfitting)"),
            ("cka_early_minus_late/benign", "best vs last CKA: first third - last third (benign)"),
            ("cka_early_minus_late/adversarial", "best vs last CKA: first third - last third (adversarial)"),
        ):
            if col in of:
                eff = effect_rows(of.assign(all="all").dropna(subset=[col]), ["all"], col)
                eff.insert(0, "measure", measure)
                parts.append(eff.drop(columns="all"))
        if parts:
            table = pd.concat(parts, ignore_index=True)
            table.to_csv(dest / f"{key}.csv", index=False)
            keys[key] = md(table, "{:.3f}")
    return keys


def render(template: str, keys: dict[str, str]) -> tuple[str, list[str]]:
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        k = m.group(1)
        if k in keys:
            return keys[k]
        missing.append(k)
        return f"{{{k}: missing}}"

    return re.sub(r"\{([A-Za-z0-9_./|@ -]+)\}", sub, template), missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--suffix", default="", help="run directory suffix, e.g. '-digits' for the quick variants")
    ap.add_argument("--keys", action="store_true", help="list the template keys and exit")
    args = ap.parse_args(argv)
    from results_keys import brace_pieces, carry_over  # scripts/results_keys.py

    keys = build(args.runs, args.out, args.suffix)
    if args.keys:
        for k, v in sorted(keys.items()):
            print(f"{k} = {v if len(v) < 80 else v[:77] + '...'}")
        return 0
    template = args.out / "paper1" / "template.md"
    if not template.exists():
        print(f"no template at {template}; keys: {', '.join(sorted(keys))}", file=sys.stderr)
        return 1
    keys, carried = carry_over(
        keys, template.read_text(), brace_pieces, args.out / "paper1" / "keys.json", args.out / "paper1.md"
    )
    if carried:
        print(f"kept from the last render (run directories absent): {', '.join(carried)}", file=sys.stderr)
    text, missing = render(template.read_text(), keys)
    (args.out / "paper1.md").write_text(text)
    if missing:
        print("missing keys: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
