"""Every workload of issue 19's table in one run, against the peers, and docs/performance.md.

    python benchmarks/run_all.py --out docs/performance.md            # the full run (about 15-30 min)
    python benchmarks/run_all.py --quick --out /tmp/performance.md    # tiny sizes, seconds (a test runs it)

Peers come from the ``bench`` extra (``pip install -e .[bench]``) or from ``--peers-dir``
(where ``benchmarks/bench_similarity.py --install-peers`` puts them). One run measures
the fp32 GEMM peak first (torch and NumPy, 4096^3; the better one is the FLOP bound's
rate), then each workload with its sides interleaved in rotating order (medians after a
warm-up round), then the scaling curves: time and peak memory as n and d double.

Rows of other areas come from the bench modules that expose ``rows(quick: bool) ->
list[dict]`` (keys ``workload, rtk_s, peer, peer_s, ratio, bound_ratio, goal, note``):
``bench_evaluation``, ``bench_training``, ``bench_certify``, ``bench_startup``. A module without ``rows`` (or one
that fails) is listed under "not measured" with the reason, never dropped silently.

On a shared machine absolute times drift; the ratios within one run are what the table
reports (``ratio``: rtk's time over the peer's, below 1 means rtk is ahead).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

EXTERNAL = ["bench_evaluation", "bench_training", "bench_certify", "bench_startup"]
KEYS = ("workload", "rtk_s", "peer", "peer_s", "ratio", "bound_ratio", "goal", "note")


# ----------------------------------------------------------------------------- scaling curves
def scaling(quick: bool) -> list[dict]:
    """Time and peak memory of linear CKA, RBF CKA and SVCCA as n and d double."""
    import torch
    from bench_certify import measure  # seconds and peak resident growth (MiB) of one call

    from rtk.similarity import kernels as K

    cpu = torch.device("cpu")
    if quick:
        ns, n_fixed, ds, d_fixed = [200, 400, 800], 400, [16, 32, 64], 32
    else:
        ns, n_fixed, ds, d_fixed = [1250, 2500, 5000, 10000], 5000, [256, 512, 1024, 2048], 512
    kernels = {
        "linear_cka": lambda x, y: K.linear_cka(x, y),
        "rbf_cka": lambda x, y: K.rbf_cka(x, y),
        "svcca": lambda x, y: K.svcca(x, y),
    }
    out = []
    g = torch.Generator().manual_seed(9)
    for axis, sizes in (("n", ns), ("d", ds)):
        for size in sizes:
            n, d = (size, d_fixed) if axis == "n" else (n_fixed, size)
            z = torch.randn(n, 32, generator=g)
            x = torch.relu(z @ torch.randn(32, d, generator=g) + 0.3 * torch.randn(n, d, generator=g))
            y = torch.relu(z @ torch.randn(32, d, generator=g) + 0.5 * torch.randn(n, d, generator=g))
            for name, fn in kernels.items():
                if name == "svcca" and n < 2 * d + 2:
                    continue
                if name != "svcca":
                    fn(x[:64], y[:64])  # warm the code paths
                dt, mem = measure(lambda fn=fn, x=x, y=y: fn(x, y), cpu)
                input_mib = 2 * n * d * 4 / 2**20
                out.append(
                    {"kernel": name, "axis": axis, "n": n, "d": d, "s": dt, "peak_mib": mem, "input_mib": input_mib}
                )
    return out


# ----------------------------------------------------------------------------- collection
def _external_rows(quick: bool, only: list[str] | None) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    missing: list[str] = []
    for name in EXTERNAL:
        if only and name not in only:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported in the page
            missing.append(f"`{name}`: not importable ({type(exc).__name__}: {exc})")
            continue
        fn = getattr(mod, "rows", None)
        if fn is None:
            missing.append(f"`{name}`: has no `rows(quick)` yet")
            continue
        try:
            got = fn(quick)
        except Exception as exc:  # noqa: BLE001 - reported in the page
            missing.append(f"`{name}.rows()` failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            continue
        for r in got:
            rows.append({k: r.get(k) for k in KEYS})
    return rows, missing


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def _fmt_ratio(r: dict) -> str:
    v = r.get("ratio")
    if v is None:
        return "-"
    if v <= 1:
        return f"**{1 / v:.2f}x ahead**" if v < 1 else "tie"
    return f"{v:.2f}x slower"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def render(meta: dict, rows: list[dict], missing: list[str], curves: list[dict]) -> str:
    lines = [
        "# Performance",
        "",
        "Generated by `" + meta["command"] + "` in one run; do not edit by hand (rerun it).",
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}",
        f"- torch {meta['torch']} ({meta['threads']} threads), NumPy {meta['numpy']}; "
        f"{'quick sizes' if meta['quick'] else 'full sizes'}; medians of {meta['repeats']} interleaved repeats",
        f"- fp32 GEMM peak measured in this run ({meta['gemm']}^3): torch {meta['peak_torch'] / 1e9:.1f} GFLOP/s, "
        f"NumPy {meta['peak_numpy'] / 1e9:.1f} GFLOP/s; the bound uses the better one",
        f"- peers: {meta['peers']}",
        "",
        "The machine is shared: absolute times drift, the ratios of one run are the result. "
        "`rtk vs peer` is the peer's time over rtk's (ahead) or rtk's over the peer's (slower); "
        "`vs bound` is rtk's time over the minimal flop count (symmetric products counted once) "
        "at the GEMM peak above.",
        "",
        "| workload | rtk | best peer | peer | rtk vs peer | vs bound | goal | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {_fmt_s(r['rtk_s'])} | {r['peer'] or '-'} | {_fmt_s(r['peer_s'])} | "
            f"{_fmt_ratio(r)} | {_fmt_x(r['bound_ratio'])} | {r['goal'] or ''} | {r['note'] or ''} |"
        )
    if missing:
        lines += ["", "Not measured in this run:", ""] + [f"- {m}" for m in missing]
    if curves:
        lines += [
            "",
            "## Scaling",
            "",
            "One call each (after the code paths were warmed on a small input); peak memory is the "
            "growth of the process's peak resident size during the call, against the inputs' own size.",
            "",
        ]
        for axis, title in (("n", "examples n doubling"), ("d", "features d doubling")):
            sub = [c for c in curves if c["axis"] == axis]
            if not sub:
                continue
            fixed = f"d = {sub[0]['d']}" if axis == "n" else f"n = {sub[0]['n']}"
            lines += [
                f"### {title} ({fixed})",
                "",
                "| kernel | n | d | time | peak memory | inputs |",
                "|---|---|---|---|---|---|",
            ]
            for c in sub:
                mem = "-" if c["peak_mib"] is None else f"{c['peak_mib']:.1f} MiB"
                lines.append(
                    f"| {c['kernel']} | {c['n']:,} | {c['d']:,} | {_fmt_s(c['s'])} | {mem} | {c['input_mib']:.1f} MiB |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown page here (docs/performance.md)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks the driver, measures nothing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers-dir", default=os.environ.get("RTK_BENCH_PEERS", "/tmp/rtk-bench-peers"))
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="sections to run: similarity, scaling, and the external modules " + ", ".join(EXTERNAL),
    )
    args = ap.parse_args(argv)

    import bench_similarity as bs
    import numpy as np
    import torch

    only = args.only
    cpu = torch.device("cpu")
    gemm = 1024 if args.quick else 4096
    peak_t, peak_n = bs.gemm_peak(cpu, gemm)
    peak = max(peak_t, peak_n or 0.0)
    print(f"fp32 GEMM peak: torch {peak_t / 1e9:.1f}, numpy {(peak_n or 0) / 1e9:.1f} GFLOP/s", flush=True)
    peers = bs.load_peers(args.peers_dir, install=False)
    rows: list[dict] = []
    if not only or "similarity" in only:
        for r in bs.rows(args.quick, peak=peak, peers=peers, repeats=args.repeats):
            print(f"  {r['workload']}: rtk {_fmt_s(r['rtk_s'])}, {r['peer']} {_fmt_s(r['peer_s'])}", flush=True)
            rows.append(r)
    ext, missing = _external_rows(args.quick, only)
    rows += ext
    curves = scaling(args.quick) if (not only or "scaling" in only) else []
    cmd = "python benchmarks/run_all.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    meta = {
        "command": cmd.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "quick": args.quick,
        "repeats": args.repeats,
        "gemm": gemm,
        "peak_torch": peak_t,
        "peak_numpy": peak_n or 0.0,
        "peers": ", ".join(sorted(peers)) or "none importable",
    }
    page = render(meta, rows, missing, curves)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        print(f"wrote {args.out}")
    else:
        print(page)
    return {"meta": meta, "rows": rows, "missing": missing, "curves": curves, "page": page}


if __name__ == "__main__":
    main()
