"""Cost of certification next to a PGD-20 evaluation of the same model.

For cnn-small and cnn-large on CIFAR-sized random inputs (3x32x32, 10 classes, random
weights, eps = 2/255) it prints seconds per example, examples per second and peak memory
of IBP, CROWN and a PGD-20 evaluation (rtk's registered ``pgd`` attack plus the clean and
adversarial forward passes), and each certifier's cost as a multiple of PGD-20's.

Rounds interleave the methods and report medians. Random weights are CROWN's worst case
(almost every ReLU is unstable, so every neuron of every layer is bounded by a backward
pass); certifiably trained networks have far fewer unstable neurons.

Peak memory is the growth of the process's peak resident set during one measurement
(Linux: reset through /proc/self/clear_refs), or torch.cuda.max_memory_allocated on CUDA.

    python benchmarks/bench_certify.py                # about 10-20 minutes on 2 idle cores
    python benchmarks/bench_certify.py --quick        # cnn-small only, a few minutes

``rows(quick)`` gives the rows of docs/performance.md: CROWN against IBP on cnn-large and
against a PGD-20 evaluation on cnn-small, per digits example (8x8, random weights), and CROWN
against IBP on cnn-large for one CIFAR-sized random input (one round), in CPU time of the
process (one thread), interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from benchcommon import parse_or_print_rows

import rtk
from rtk.certify import BoundCertifier
from rtk.data.core import DataInfo
from rtk.models.small import cnn_large, cnn_small
from rtk.options import validate_options
from rtk.runtime import resolve_device

INFO = DataInfo("cifar-sized", 10, 3, 32, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
EPS = 2 / 255


def _status(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn, device: torch.device) -> tuple[float, float | None]:
    """(seconds, peak memory growth in MB) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        ok = _reset_peak()
        base = _status("VmRSS") if ok else None
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        hwm = _status("VmHWM")
        peak = hwm - base if (base is not None and hwm is not None) else None
    return secs, peak


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}" if per_s >= 1 else f"{per_s:.3f}"


def rows(quick: bool) -> list[dict]:
    """Rows of docs/performance.md: CROWN's cost per example against IBP's and PGD-20's."""
    from rtk.data.digits import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_digits()
        reg = rtk.default_registry()
        pgd_spec = reg.get("attack", "pgd")
        pgd_opts = validate_options(pgd_spec.options, {"eps": EPS, "steps": 20}, "pgd")
        gen = torch.Generator().manual_seed(1)
        cifar = (torch.rand(1, 3, 32, 32, generator=gen), torch.randint(0, 10, (1,), generator=gen))
        plan = [
            ("cnn-large", cnn_large, data.info, "digits", (data.test.x[:32], data.test.y[:32]), "IBP"),
            ("cnn-small", cnn_small, data.info, "digits", (data.test.x[:128], data.test.y[:128]), "PGD-20"),
        ]
        if quick:
            plan = [(n, b, i, what, (x[: len(x) // 4], y[: len(y) // 4]), peer) for n, b, i, what, (x, y), peer in plan]
        else:  # CROWN's wide-input case: every row goes backward through every convolution (tens of seconds)
            plan.append(("cnn-large", cnn_large, INFO, "CIFAR-sized random input", cifar, "IBP"))
        out = []
        for name, build, info, what, (x, y), peer in plan:
            n_crown = len(x)
            torch.manual_seed(0)
            model = build(info).eval()
            attack = pgd_spec.build(model, pgd_opts)
            ibp = BoundCertifier("ibp", eps=EPS, batch_size=n_crown)
            crown = BoundCertifier("crown", eps=EPS, batch_size=n_crown)

            def pgd_eval(model=model, attack=attack, x=x, y=y):
                xa = attack(x, y)
                with torch.no_grad():
                    model(x).argmax(1), model(xa).argmax(1)

            fns = {
                "CROWN": lambda crown=crown, model=model, x=x, y=y: crown.certify(model, x, y),
                "IBP": lambda ibp=ibp, model=model, x=x, y=y: ibp.certify(model, x, y),
                "PGD-20": pgd_eval,
            }
            times: dict[str, list[float]] = {k: [] for k in fns}
            peaks: dict[str, list[float]] = {k: [] for k in fns}
            for f in fns.values():
                if f is fns["CROWN"] and what != "digits":
                    BoundCertifier("crown", eps=0.0).certify(model, x, y)  # warm-up on a cheap input
                else:
                    f()
            for r in range(1 if quick or what != "digits" else 3):
                for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                    _reset_peak()
                    base = _status("VmRSS")
                    t0 = time.process_time()
                    fns[k]()
                    times[k].append(time.process_time() - t0)
                    hwm = _status("VmHWM")
                    if base is not None and hwm is not None:
                        peaks[k].append(hwm - base)
            med = {k: statistics.median(v) for k, v in times.items()}
            mem = {k: (f"{statistics.median(v):.0f} MB" if v else "n/a") for k, v in peaks.items()}
            out.append(
                {
                    "workload": f"CROWN certification, {name} (random weights), {n_crown} {what}, eps 2/255",
                    "rtk_s": med["CROWN"],
                    "peer": f"rtk {peer} on the same batch",
                    "peer_s": med[peer],
                    "ratio": med["CROWN"] / med[peer],
                    "bound_ratio": None,
                    "goal": "as low as soundness allows (issue 19 found 570x IBP on cnn-large; 613x before the forward-direction route)"
                    if peer == "IBP"
                    else "honest figure (docs claimed 22x)",
                    "note": f"CROWN {_rate(n_crown / med['CROWN'])} examples/s, peak +{mem['CROWN']}; "
                    f"{peer} {_rate(n_crown / med[peer])} examples/s; CPU time, 1 thread",
                }
            )
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="cnn-small only")
    ap.add_argument("--device", default="auto")
    args = parse_or_print_rows(ap, rows)
    if args is None:
        return
    device = resolve_device(args.device)
    reg = rtk.default_registry()
    pgd_spec = reg.get("attack", "pgd")
    pgd_opts = validate_options(pgd_spec.options, {"eps": EPS, "steps": 20}, "pgd")
    # examples per method and model: (IBP, CROWN, PGD); CROWN on cnn-large costs seconds to
    # minutes per example on a CPU, so it sees fewer examples and one round
    plan = {"cnn-small": (cnn_small, 64, 8, 64, args.rounds), "cnn-large": (cnn_large, 64, 1, 64, 1)}
    if args.quick:
        plan.pop("cnn-large")
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, eps {EPS:.4f}, "
        f"inputs 3x32x32, random weights\n"
    )
    header = f"{'model':<10} {'method':<8} {'examples':>8} {'s/example':>11} {'examples/s':>11} {'peak MB':>8} {'x PGD-20':>9}"
    print(header)
    print("-" * len(header))
    for name, (build, n_ibp, n_crown, n_pgd, crown_rounds) in plan.items():
        torch.manual_seed(0)
        model = build(INFO).to(device).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(max(n_ibp, n_crown, n_pgd), 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (len(x),), generator=gen).to(device)
        attack = pgd_spec.build(model, pgd_opts)

        def pgd_eval(n=n_pgd):
            xa = attack(x[:n], y[:n])
            with torch.no_grad():
                model(x[:n]).argmax(1), model(xa).argmax(1)

        ibp = BoundCertifier("ibp", eps=EPS, batch_size=n_ibp)
        crown = BoundCertifier("crown", eps=EPS, batch_size=n_crown, spec_chunk=256)
        runs = {
            "PGD-20": (pgd_eval, n_pgd, args.rounds),
            "IBP": (lambda: ibp.certify(model, x[:n_ibp], y[:n_ibp]), n_ibp, args.rounds),
            "CROWN": (lambda: crown.certify(model, x[:n_crown], y[:n_crown]), n_crown, crown_rounds),
        }
        for fn, _, _ in runs.values():  # warm-up: tracing, allocator, kernels (CROWN on a cheap input)
            if fn is runs["CROWN"][0]:
                BoundCertifier("crown", eps=0.0).certify(model, x[:1], y[:1])
            else:
                fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        peaks: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for key, (fn, n, rounds) in runs.items():  # interleaved
                if r >= rounds:
                    continue
                secs, peak = measure(fn, device)
                times[key].append(secs / n)
                if peak is not None:
                    peaks[key].append(peak)
        per = {k: statistics.median(v) for k, v in times.items()}
        for key in ("IBP", "CROWN", "PGD-20"):
            pk = f"{statistics.median(peaks[key]):8.0f}" if peaks[key] else f"{'n/a':>8}"
            print(
                f"{name:<10} {key:<8} {runs[key][1]:>8d} {per[key]:>11.4f} {1 / per[key]:>11.2f} {pk} "
                f"{per[key] / per['PGD-20']:>9.3g}"
            )
        print()


if __name__ == "__main__":
    main()
