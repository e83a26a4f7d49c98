"""Assemble the paper-2 report (docs/results/paper2.md) from the run directories of the
experiments/paper2-*.toml experiments.

    python scripts/results_paper2.py [--runs runs] [--logs runs/logs] [--out docs/results]

Reads, for each experiment NAME in standard, adversarial, verifiable, objectives,
high-compression, the run
directory ``<runs>/paper2-NAME`` (as written by ``rtk run experiments/paper2-NAME.toml --out
runs/paper2-NAME``) and, when present, ``<logs>/paper2-NAME.time`` (``/usr/bin/time`` output:
wall and CPU seconds). Writes the tables (CSV and markdown) and figures to ``<out>/paper2/``
and renders ``<out>/paper2.md`` from ``<out>/paper2/template.md``: every ``{key}`` of the
template is replaced by a number or table computed from the runs (the keys are listed by
``--keys``). Nothing here trains or evaluates anything.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from results_common import read_run, read_time

PRUNE_EXPERIMENTS = {"standard": "std", "adversarial": "adv", "verifiable": "ver"}
#: experiment -> (objective, headline column) for the HYDRA vs LWM table
HEADLINE_OF = {
    "standard": ("standard", "clean_acc"),
    "adversarial": ("PGD-AT", "robust_acc"),
    "verifiable": ("IBP", "verified_acc"),
    "high-compression": ("PGD-AT (high-compression run)", "robust_acc"),
}
OBJECTIVES = ("std", "adv", "ver")
OBJECTIVE_NAMES = {"std": "standard", "adv": "PGD-AT", "ver": "IBP"}
HEADLINE = {"standard": "clean_frac", "adversarial": "robust_frac", "verifiable": "verified_frac"}
METHOD_NAMES = {"lwm": "LWM", "hydra": "HYDRA", "channel-l2": "channel (L2)"}


# ----------------------------------------------------------------------------- reading runs
def prune_table(run: dict) -> pd.DataFrame:
    key = next(k for k in run["tables"] if k.endswith("-prune/compression"))
    return run["tables"][key]


# ----------------------------------------------------------------------------- formatting
def pct(v: float) -> str:
    return "n/a" if pd.isna(v) else f"{100 * v:.1f}%"


def md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        rows.append("| " + " | ".join(str(v) for v in rec) + " |")
    return "\n".join(rows)


def key_part(s: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_")


def fraction_rows(exp: str, table: pd.DataFrame) -> pd.DataFrame:
    """One row per model: compression reached and accuracies, absolute and as fractions."""
    rows = []
    for _, r in table.iterrows():
        row = {
            "method": METHOD_NAMES.get(r["method"], r["method"]),
            "target": r["target"],
            "pruned-layer compression": f"{r['layer_compression']:.1f}x",
            "params": int(r["params"]),
            "clean": pct(r["clean_acc"]),
            "clean / dense": pct(r["clean_frac"]),
        }
        if "robust_acc" in r:
            row["robust (worst case)"] = pct(r["robust_acc"])
            row["robust / dense"] = pct(r["robust_frac"])
        if "verified_acc" in table:
            row["verified"] = pct(r["verified_acc"])
            row["verified / dense"] = pct(r["verified_frac"])
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
def plot_fractions(tables: dict[str, pd.DataFrame], path: Path) -> Path:
    """One panel per objective: the headline accuracy as a fraction of dense vs compression."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), sharey=True)
    axes = [axes] if len(tables) == 1 else list(axes)
    ylab = {"clean_frac": "clean", "robust_frac": "empirical robust", "verified_frac": "verified robust"}
    for ax, (exp, table) in zip(axes, tables.items()):
        col = HEADLINE[exp]
        for i, (method, df) in enumerate(table[table["method"] != "dense"].groupby("method", sort=False)):
            df = df.sort_values("layer_compression")
            ax.plot(df["layer_compression"], df[col], "-o", color=f"C{i}", label=METHOD_NAMES.get(method, method))
            if col != "clean_frac":
                ax.plot(df["layer_compression"], df["clean_frac"], ":", color=f"C{i}", alpha=0.6)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("compression of the pruned layers")
        ax.set_title(f"{OBJECTIVE_NAMES[PRUNE_EXPERIMENTS[exp]]}: {ylab[col]} / dense", fontsize=10)
        ax.grid(alpha=0.3)
    lows = [float(t.loc[t["method"] != "dense", [HEADLINE[e], "clean_frac"]].min().min()) for e, t in tables.items()]
    axes[0].set_ylabel("fraction of the dense model (dotted: clean)")
    axes[0].set_ylim(max(0.0, min(lows) - 0.05), 1.08)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_hydra_vs_lwm(adv: pd.DataFrame, high: pd.DataFrame, path: Path) -> Path:
    """PGD-AT: robust (solid) and clean (dotted) accuracy of LWM and HYDRA from 2x to 1000x."""
    both = pd.concat([adv, high[high["target"] != "100x"]], ignore_index=True)
    dense = adv[adv["method"] == "dense"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, method in enumerate(("lwm", "hydra")):
        df = both[both["method"] == method].sort_values("layer_compression")
        ax.plot(df["layer_compression"], df["robust_acc"], "-o", color=f"C{i}", label=f"{METHOD_NAMES[method]} robust")
        ax.plot(df["layer_compression"], df["clean_acc"], ":s", color=f"C{i}", label=f"{METHOD_NAMES[method]} clean")
    ax.axhline(float(dense["robust_acc"]), color="grey", lw=0.8, label="dense robust")
    ax.axhline(float(dense["clean_acc"]), color="grey", lw=0.8, ls=":", label="dense clean")
    ax.set_xscale("log")
    ax.set_xlabel("compression of the pruned layers")
    ax.set_ylabel("accuracy (robust: worst case, eps 0.1)")
    ax.set_ylim(0, 1)
    ax.set_title("PGD-AT, Fashion-MNIST: HYDRA vs LWM", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_objectives(grid: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = range(len(grid))
    w = 0.27
    for i, (col, label) in enumerate([("clean", "clean"), ("pgd", "PGD-20"), ("verified", "IBP-verified")]):
        ax.bar([xi + (i - 1) * w for xi in x], grid[col], w, label=label, color=f"C{i}")
    ax.set_xticks(list(x))
    ax.set_xticklabels(grid["model"], rotation=30, fontsize=8)
    ax.set_ylabel("accuracy (eps 0.1)")
    ax.set_ylim(0, 1.12)
    ax.set_title("dense models, then <pre-train objective>-<fine-tune objective> (pruned 10x by LWM)", fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- objectives grid
def objectives_grid(run: dict) -> pd.DataFrame:
    wc = next(v for k, v in run["tables"].items() if k.endswith("-evaluate/worst_case"))
    ver = next(v for k, v in run["tables"].items() if k.endswith("-certify/verified"))
    rows = []
    for m in list(OBJECTIVES) + [f"{a}-{b}" for a in OBJECTIVES for b in OBJECTIVES]:
        w = wc[wc["model"] == m].iloc[0]
        v = ver[ver["model"] == m].iloc[0]
        rows.append(
            {
                "model": m,
                "clean": float(w["clean_accuracy"]),
                "pgd": float(w["accuracy"]),
                "verified": float(v["verified_accuracy"]),
            }
        )
    return pd.DataFrame(rows)


def grid_markdown(grid: pd.DataFrame, col: str) -> str:
    """3x3: rows pre-training objective, columns fine-tuning objective."""
    g = grid.set_index("model")[col]
    rows = []
    for a in OBJECTIVES:
        row = {"pre-train \\ fine-tune": f"{OBJECTIVE_NAMES[a]} (dense: {pct(g[a])})"}
        for b in OBJECTIVES:
            row[OBJECTIVE_NAMES[b]] = pct(g[f"{a}-{b}"])
        rows.append(row)
    return md_table(pd.DataFrame(rows))


# ----------------------------------------------------------------------------- main
def collect(runs: Path, logs: Path, out: Path, suffix: str = "") -> dict[str, str]:
    """Tables, figures and template values of the runs ``paper2-<exp><suffix>`` (suffix "" for
    the Fashion-MNIST runs, "-digits" for the quick variants, whose keys and files get the
    prefix ``digits_`` / ``digits-``)."""
    key_prefix = f"{key_part(suffix)}_" if suffix else ""
    file_prefix = f"{suffix.strip('-')}-" if suffix else ""
    values: dict[str, str] = {}
    figdir = out / "paper2"
    figdir.mkdir(parents=True, exist_ok=True)
    timing = []
    prune_tables: dict[str, pd.DataFrame] = {}
    high = None
    for exp in list(PRUNE_EXPERIMENTS) + ["objectives", "high-compression"]:
        name = f"paper2-{exp}{suffix}"
        path = runs / name
        if not (path / "state.json").exists():
            print(f"missing run directory {path}; skipped", file=sys.stderr)
            continue
        run = read_run(path)
        t = read_time(logs / f"{name}.time")
        timing.append(
            {
                "experiment": f"`experiments/{name}.toml`",
                "command": f"`OMP_NUM_THREADS=1 rtk run experiments/{name}.toml --out runs/{name}`",
                "status": "completed" if run["complete"] else "INCOMPLETE",
                "wall (min)": f"{t['wall_s'] / 60:.1f}" if "wall_s" in t else f"{run['stage_seconds'] / 60:.1f}",
                "CPU (min)": f"{t['cpu_s'] / 60:.1f}" if "cpu_s" in t else "n/a",
            }
        )
        if exp == "objectives":
            grid = objectives_grid(run)
            grid.to_csv(figdir / f"{file_prefix}objectives.csv", index=False)
            plot_objectives(grid, figdir / f"{file_prefix}objectives.png")
            for col in ("clean", "pgd", "verified"):
                values[f"{key_prefix}objectives_{col}_table"] = grid_markdown(grid, col)
                for _, r in grid.iterrows():
                    values[f"{key_prefix}objectives_{key_part(r['model'])}_{col}"] = pct(r[col])
            continue
        table = prune_table(run)
        if exp in PRUNE_EXPERIMENTS:
            prune_tables[exp] = table
        else:
            high = table
        table.to_csv(figdir / f"{file_prefix}{exp}-compression.csv", index=False)
        fr = fraction_rows(exp, table)
        (figdir / f"{file_prefix}{exp}-fractions.md").write_text(md_table(fr) + "\n")
        values[f"{key_prefix}{key_part(exp)}_table"] = md_table(fr)
        fig = path / "figures" / next(iter(run["stages"])) / "accuracy_vs_compression.png"
        if fig.exists() and not suffix:
            shutil.copy(fig, figdir / f"{exp}-accuracy_vs_compression.png")
        for _, r in table.iterrows():
            base = f"{key_prefix}{key_part(exp)}_{key_part(r['method'])}_{key_part(str(r['target']))}"
            for col in (
                "clean_acc",
                "robust_acc",
                "verified_acc",
                "clean_frac",
                "robust_frac",
                "verified_frac",
                "layer_compression",
                "sparsity",
            ):
                if col in r and pd.notna(r[col]):
                    values[f"{base}_{col}"] = (
                        f"{r[col]:.1f}x"
                        if col == "layer_compression"
                        else f"{r[col]:.3f}"
                        if col == "sparsity"
                        else pct(r[col])
                    )
    if prune_tables:
        if not suffix:
            plot_fractions(prune_tables, figdir / "fractions.png")
        values[f"{key_prefix}headline_table"] = headline_table(prune_tables)
        tables = dict(prune_tables)
        if high is not None:
            tables["high-compression"] = high[high["target"] != "100x"]  # its 100x repeats the adversarial run's
        values[f"{key_prefix}hydra_vs_lwm_table"] = hydra_vs_lwm(tables)
        values.update({f"{key_prefix}{k}": v for k, v in hydra_counts(prune_tables).items()})
        if "adversarial" in prune_tables and high is not None and not suffix:
            plot_hydra_vs_lwm(prune_tables["adversarial"], high, figdir / "hydra_vs_lwm.png")
    if timing:  # absent: the table of the last render is kept (scripts/results_keys.py)
        values[f"{key_prefix}timing_table"] = md_table(pd.DataFrame(timing))
    return values


def headline_table(tables: dict[str, pd.DataFrame]) -> str:
    """At 10x: the headline fraction of each objective, per method, beside the 2019 paper's."""
    paper = {"standard": "93% (benign)", "adversarial": "92.5% (empirical robust)", "verifiable": "85% (verifiable)"}
    rows = []
    for exp, t in tables.items():
        col = HEADLINE[exp]
        row = {
            "objective": OBJECTIVE_NAMES[PRUNE_EXPERIMENTS[exp]],
            "measure": col.replace("_frac", ""),
            "Sehwag et al. 2019 (CIFAR-10, mean of 4 nets)": paper[exp],
        }
        for method in ("lwm", "hydra", "channel-l2"):
            r = t[(t["method"] == method) & (t["target"] == "10x")]
            row[METHOD_NAMES[method]] = pct(float(r[col].iloc[0])) if len(r) else "n/a"
        rows.append(row)
    return md_table(pd.DataFrame(rows))


def hydra_vs_lwm(tables: dict[str, pd.DataFrame]) -> str:
    """HYDRA minus LWM in the headline accuracy, per objective and compression."""
    rows = []
    for exp, t in tables.items():
        objective, col = HEADLINE_OF[exp]
        for target in t.loc[t["method"] == "lwm", "target"]:
            lwm = float(t[(t["method"] == "lwm") & (t["target"] == target)][col].iloc[0])
            hyd = t[(t["method"] == "hydra") & (t["target"] == target)]
            if not len(hyd):
                continue
            h = float(hyd[col].iloc[0])
            rows.append(
                {
                    "objective": objective,
                    "measure": col.replace("_acc", ""),
                    "compression": target,
                    "LWM": pct(lwm),
                    "HYDRA": pct(h),
                    "HYDRA - LWM (points)": f"{100 * (h - lwm):+.1f}",
                }
            )
    return md_table(pd.DataFrame(rows))


def hydra_counts(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """How often HYDRA is ahead of / level with / behind LWM in the headline accuracy, over every
    objective and compression, and HYDRA minus LWM (points) per objective and target."""
    out: dict[str, str] = {}
    ahead = tie = behind = 0
    for exp, t in tables.items():
        col = HEADLINE_OF[exp][1]
        for target in t.loc[t["method"] == "lwm", "target"]:
            hyd = t[(t["method"] == "hydra") & (t["target"] == target)]
            if not len(hyd):
                continue
            lwm = float(t[(t["method"] == "lwm") & (t["target"] == target)][col].iloc[0])
            d = round(100 * (float(hyd[col].iloc[0]) - lwm), 1)
            ahead, tie, behind = ahead + (d > 0), tie + (d == 0), behind + (d < 0)
            out[f"{key_part(exp)}_hydra_minus_lwm_{target}"] = f"{d:.1f}"
    out.update(
        hydra_ahead=str(ahead),
        hydra_tie=str(tie),
        hydra_behind=str(behind),
        hydra_comparisons=str(ahead + tie + behind),
    )
    return out


# ----------------------------------------------------------------------------- the design (issue 18)
#: objective stage -> (its headline fraction, Sehwag et al. 2019's mean retention at 10x on CIFAR-10)
RETENTION = {
    "prune-std": ("clean_frac", 0.93),
    "prune-adv": ("robust_frac", 0.925),
    "prune-ver": ("verified_frac", 0.85),
}
OBJECTIVE_NAMES = {"prune-std": "standard", "prune-adv": "PGD-AT", "prune-ver": "IBP"}


#: more seeds of a design study's own file, run into a directory of their own and pooled with the
#: study's seeds (each extension is written into the template before its runs)
DESIGN_EXTENSIONS = {"paper2-design-high-compression": ("paper2-design-high-compression-seeds",)}


def design_values(runs: Path, out: Path) -> dict[str, str]:
    """``design_retention`` and ``design_hydra_vs_lwm``: intervals over seeds and verdicts from
    the study directories ``paper2-design-retention`` and ``paper2-design-high-compression``."""
    from intervals import effect_rows, pooled_points, study_points, study_time_rows  # scripts/intervals.py

    extends = {name: study for study, names in DESIGN_EXTENSIONS.items() for name in names}
    values = {
        "design_retention": "Not run yet (no `runs/paper2-design-retention`).",
        "design_hydra_vs_lwm": "Not run yet (no `runs/paper2-design-high-compression`).",
    }
    times = study_time_rows(runs, ["paper2-design-retention", "paper2-design-high-compression", *extends], extends)
    values["design_times"] = md_table(pd.DataFrame(times)) if times else "No study of the design has run yet."
    figdir = out / "paper2"
    figdir.mkdir(parents=True, exist_ok=True)
    study = runs / "paper2-design-retention"
    if (study / "study.json").exists():
        rows = []
        for point, path in study_points(study):
            run = read_run(path)
            for stage, (col, paper) in RETENTION.items():
                table = run["tables"].get(f"{stage}/compression")
                if table is None or col not in table:
                    continue
                for _, r in table[(table["target"] == "10x") & (table["method"] != "dense")].iterrows():
                    rows.append(
                        {
                            "objective": OBJECTIVE_NAMES[stage],
                            "measure": col.replace("_frac", " / dense"),
                            "method": METHOD_NAMES.get(r["method"], r["method"]),
                            "paper": paper,
                            "seed": point.get("seed", 0),
                            "fraction": float(r[col]),
                            "minus_paper": float(r[col]) - paper,
                        }
                    )
        if rows:
            data = pd.DataFrame(rows)
            eff = effect_rows(data, ["objective", "measure", "method", "paper"], "minus_paper")
            means = data.groupby(["objective", "measure", "method"], sort=False)["fraction"].mean().to_numpy()
            eff.insert(4, "fraction (mean)", means)
            eff.to_csv(figdir / "design-retention.csv", index=False)
            values["design_retention"] = md_table(eff.round(3))
    study = runs / "paper2-design-high-compression"
    if (study / "study.json").exists():
        rows = []
        for point, path in pooled_points(runs, [study.name, *DESIGN_EXTENSIONS.get(study.name, ())]):
            run = read_run(path)
            key = next((k for k in run["tables"] if k.endswith("/compression")), None)
            if key is None:
                continue
            t = run["tables"][key]
            for target, part in t[t["method"].isin(["lwm", "hydra"])].groupby("target", sort=False):
                acc = part.set_index("method")["robust_acc"]
                if {"lwm", "hydra"} <= set(acc.index):
                    rows.append(
                        {"target": target, "seed": point.get("seed", 0), "hydra": acc["hydra"], "lwm": acc["lwm"]}
                    )
        if rows:
            eff = effect_rows(pd.DataFrame(rows), ["target"], "hydra", paired_with="lwm")
            eff.insert(1, "measure", "robust accuracy: HYDRA - LWM (paired by seed)")
            eff.to_csv(figdir / "design-hydra-vs-lwm.csv", index=False)
            values["design_hydra_vs_lwm"] = md_table(eff.round(3))
    return values


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(f"template key {{{key}}} has no value (run with --keys to list them)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--logs", type=Path, default=None, help="folder of the .time files (default RUNS/logs)")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--keys", action="store_true", help="print the template keys and their values, write nothing else")
    args = ap.parse_args(argv)
    from results_keys import carry_over, format_pieces  # scripts/results_keys.py

    logs = args.logs or args.runs / "logs"
    values = {
        **collect(args.runs, logs, args.out),
        **collect(args.runs, logs, args.out, "-digits"),
        **design_values(args.runs, args.out),
    }
    if args.keys:
        for k, v in sorted(values.items()):
            print(f"{k} = {v if chr(10) not in v else '<table>'}")
        return 0
    template = (args.out / "paper2" / "template.md").read_text()
    values, carried = carry_over(
        values, template, format_pieces, args.out / "paper2" / "keys.json", args.out / "paper2.md"
    )
    if carried:
        print(f"kept from the last render (run directories absent): {', '.join(carried)}", file=sys.stderr)
    (args.out / "paper2.md").write_text(template.format_map(_Strict(values)))
    print(f"wrote {args.out / 'paper2.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
