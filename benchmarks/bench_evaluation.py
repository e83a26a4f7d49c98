"""Benchmark of the evaluation engine, measured side by side in one run.

1. PGD: rtk's evaluation (``rtk.evaluation.evaluate`` with the ``pgd`` plugin, sanity
   checks off) against calling torchattacks directly on the same model, batches and device
   (a clean forward, ``torchattacks.PGD``, a forward on the adversarial batch, per batch).
   Target: ratio <= 1.05. Measured for rtk with records in memory and written to disk.
2. Sanity checks: a default evaluation (the ``evaluate`` stage's defaults: AutoAttack
   standard, L-inf 8/255; default check settings) with and without the checks.
   Target: ratio <= 1.10. Also for a PGD suite.

The two sides run interleaved (A B B A ...), repeated; medians are reported. Timings on a
shared machine are noisy: compare ratios, not seconds. Single-threaded by default (set
--threads), which is also the fastest for these small models.

``rows(quick)`` gives the rows of docs/performance.md (the benchmark driver collects them):
PGD-10 on a CIFAR-size ResNet-20 (batch 128) against a bare channels_last loop and against
torchattacks called directly, and an evaluation with sanity checks against one without, on
128 and 640 images. These use CPU time of the process (one thread), which another process's
load on a shared machine barely moves, interleaved, medians of paired ratios.

    python benchmarks/bench_evaluation.py            # about 5-10 minutes on 2 cores
    python benchmarks/bench_evaluation.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from benchcommon import bare_pgd, fit_minibatches, parse_or_print_rows, resnet20, self_labelled
from torch import nn

import rtk
from rtk.data import TensorSplit
from rtk.data.digits import load_digits
from rtk.evaluation import RecordStore, SanityCheckWarning, evaluate, make_units
from rtk.models.small import cnn_large, cnn_small


def train(model: nn.Module, data, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    return fit_minibatches(model, data, epochs)


def direct_pgd(model: nn.Module, split: TensorSplit, batch_size: int, eps: float, steps: int) -> float:
    """The baseline: torchattacks.PGD called directly (robust = clean-correct and adv-correct)."""
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    robust = 0
    torch.manual_seed(0)
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        x_adv = atk(x, y)
        with torch.no_grad():
            robust += int((clean & (model(x_adv).argmax(1) == y)).sum())
    return robust / len(split)


def interleaved(
    fns: dict[str, callable], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call by ``clock`` (wall by default; ``time.process_time``: CPU seconds of the process),
    interleaved (A B C, C B A, ...)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = clock()
            fns[k]()
            times[k].append(clock() - t0)
    return times


def bench_pgd(reg, data, arch: str, args) -> None:
    build = {"cnn-small": cnn_small, "cnn-large": cnn_large}[arch]
    model = train(build(data.info), data, epochs=args.epochs)
    split = TensorSplit(torch.cat([data.train.x, data.test.x]), torch.cat([data.train.y, data.test.y]))
    split = TensorSplit(split.x[: args.pgd_examples], split.y[: args.pgd_examples])
    spec = reg.get("attack", "pgd")
    opts = rtk.validate_options(spec.options, {"eps": args.eps, "steps": args.steps}, "pgd")
    units = make_units([(spec, opts, "pgd")])
    tmp = tempfile.TemporaryDirectory()
    counter = iter(range(10**6))
    accs = {}

    def rtk_memory():
        accs["rtk"] = evaluate(
            model, split, units, batch_size=args.batch_size, checks=False, save_adversarial="none"
        ).headline_accuracy

    def rtk_disk():
        store = RecordStore(f"{tmp.name}/{next(counter)}")  # a fresh store: nothing to resume
        evaluate(model, split, units, batch_size=args.batch_size, checks=False, save_adversarial="none", store=store)

    def direct():
        accs["direct"] = direct_pgd(model, split, args.batch_size, opts.eps, args.steps)

    direct()
    rtk_memory()  # warm-up
    t = interleaved({"direct": direct, "rtk": rtk_memory, "rtk+disk": rtk_disk}, args.repeats)
    med = {k: statistics.median(v) for k, v in t.items()}
    best = {k: min(v) for k, v in t.items()}
    print(
        f"PGD-{args.steps} eps={args.eps:.4g} on {len(split)} digits, batch {args.batch_size}, {arch}, "
        f"{args.repeats} interleaved repeats (robust accuracy: rtk {accs['rtk']:.4f}, direct {accs['direct']:.4f})"
    )
    print(f"  {'':22} {'median':>8} {'ratio':>6}   {'best':>8} {'ratio':>6}")
    for k, label in (("direct", "torchattacks direct"), ("rtk", "rtk evaluate"), ("rtk+disk", "rtk + records on disk")):
        print(
            f"  {label:22} {med[k]:8.3f} {med[k] / med['direct']:6.3f}   {best[k]:8.3f} {best[k] / best['direct']:6.3f}"
        )
    paired = sorted(a / b for a, b in zip(t["rtk"], t["direct"]))
    print(f"  paired ratios rtk/direct (sorted): {', '.join(f'{p:.3f}' for p in paired)}  (target <= 1.05)")
    tmp.cleanup()


def bench_checks(reg, data, label: str, attacks: list, args) -> None:
    model = train(cnn_small(data.info), data, epochs=args.epochs)
    units = make_units(
        [
            (
                reg.get("attack", a["name"]),
                rtk.validate_options(
                    reg.get("attack", a["name"]).options, {k: v for k, v in a.items() if k != "name"}, a["name"]
                ),
                a["name"],
            )
            for a in attacks
        ]
    )
    idx = range(min(args.check_examples, len(data.test)))
    res = {}

    def run(checks: bool):
        def f():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SanityCheckWarning)
                res[checks] = evaluate(model, data.test, units, indices=idx, checks=checks, seed=0)

        return f

    t = interleaved({"off": run(False), "on": run(True)}, args.check_repeats)
    med = {k: statistics.median(v) for k, v in t.items()}
    r = res[True]
    print(
        f"  (times per run: off {', '.join(f'{v:.2f}' for v in t['off'])}; on {', '.join(f'{v:.2f}' for v in t['on'])})"
    )
    print(
        f"{label} on {len(idx)} digits test examples, cnn-small (worst case {r.headline_accuracy:.4f}, "
        f"clean {r.clean_accuracy:.4f})"
    )
    print(f"  checks off  {med['off']:.2f} s")
    print(
        f"  checks on   {med['on']:.2f} s   ratio {med['on'] / med['off']:.3f}  (target <= 1.10); "
        f"work ratio {1 + r.checks_overhead:.3f}"
    )
    ran = [c.name for c in r.checks if c.passed is not None]
    skipped = [f"{c.name} ({c.detail.split(':')[0]})" for c in r.checks if c.passed is None]
    print(
        f"  checks run: {len(ran)}/{len(r.checks)}; failed: {[c.name for c in r.failed_checks] or 'none'}"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )


# ---------------------------------------------------------------------------- rows for docs/performance.md
def _resnet20_batch(n: int) -> tuple[nn.Module, TensorSplit]:
    """ResNet-20 in eval mode and ``n`` CIFAR-size images it classifies as labelled."""
    _, model = resnet20()
    model.eval()
    return model, self_labelled(model, n, 32)


def _row(workload: str, t: dict[str, list[float]], mine: str, peer: str, peer_label: str, goal: str, note: str) -> dict:
    ratio = statistics.median(a / b for a, b in zip(t[mine], t[peer]))
    return {
        "workload": workload,
        "rtk_s": statistics.median(t[mine]),
        "peer": peer_label,
        "peer_s": statistics.median(t[peer]),
        "ratio": ratio,
        "bound_ratio": None,
        "goal": goal,
        "note": note,
    }


def _spread(t: dict[str, list[float]], mine: str = "rtk", peer: str = "bare") -> str:
    """The paired ratios' range and quartiles, for a row whose median sits near its goal."""
    r = sorted(a / b for a, b in zip(t[mine], t[peer]))
    if len(r) < 4:
        return f"{len(r)} paired ratios {r[0]:.3f} to {r[-1]:.3f}"
    q1, _, q3 = statistics.quantiles(r, n=4)
    return f"{len(r)} paired ratios {r[0]:.3f} to {r[-1]:.3f}, quartiles {q1:.3f} and {q3:.3f}"


def rows(quick: bool) -> list[dict]:
    """Rows of docs/performance.md: the attack path and the sanity checks' cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
        spec = reg.get("attack", "pgd")
        eps, steps, batch = 8 / 255, 10, 128
        opts = rtk.validate_options(spec.options, {"eps": eps, "steps": steps}, "pgd")
        units = make_units([(spec, opts, "pgd")])
        # the paired ratio of one PGD run scatters by about +-3% on a shared machine (measured: 1.00 to 1.04 between
        # runs of 7 pairs), as wide as the goal's margin: 11 pairs, and their spread in the note
        repeats = 3 if quick else 11
        model, split = _resnet20_batch(128 if quick else 256)

        def rtk_eval():
            evaluate(model, split, units, batch_size=batch, checks=False, save_adversarial="none")

        fns = {
            "rtk": rtk_eval,
            "bare": lambda: bare_pgd(model, split, batch, eps, steps),
            "direct": lambda: direct_pgd(model, split, batch, eps, steps),
        }
        for f in fns.values():
            f()  # warm-up
        t = interleaved(fns, repeats, time.process_time)
        work = f"PGD-10 evaluation, ResNet-20 on {len(split)} CIFAR-size images, batch {batch}"
        out = [
            _row(work, t, "rtk", "bare", "bare loop (channels_last)", "<= 1.02", "CPU time, 1 thread; " + _spread(t)),
            _row(work, t, "rtk", "direct", "torchattacks.PGD called directly", "< 1", "CPU time, 1 thread"),
        ]
        for n in (128, 640):
            if quick and n > 128:
                n = 256
            m, sp = _resnet20_batch(n)
            res: dict[bool, object] = {}

            def run(checks: bool, m=m, sp=sp, res=res):
                def f():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", SanityCheckWarning)
                        res[checks] = evaluate(m, sp, units, batch_size=batch, checks=checks, seed=0)

                return f

            t = interleaved({"on": run(True), "off": run(False)}, 2 if quick else 3, time.process_time)
            r = res[True]
            skipped = [c.name for c in r.checks if c.passed is None]
            out.append(
                _row(
                    f"evaluation with sanity checks vs without, PGD-10, ResNet-20, {n} images",
                    t,
                    "on",
                    "off",
                    "the same evaluation without checks",
                    "<= 1.2 (a one-minute evaluation)",
                    f"work ratio {1 + r.checks_overhead:.3f}; {len(r.checks) - len(skipped)} of {len(r.checks)} "
                    f"checks ran" + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
                )
            )
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--check-repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pgd-examples", type=int, default=1797)
    p.add_argument("--check-examples", type=int, default=450)
    p.add_argument("--epochs", type=int, default=6)
    args = parse_or_print_rows(p, rows)
    if args is None:
        return
    if args.quick:
        args.repeats, args.check_repeats, args.pgd_examples, args.check_examples = 2, 1, 512, 150
    torch.set_num_threads(args.threads)
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    data = load_digits()
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    for arch in ("cnn-small", "cnn-large"):
        bench_pgd(reg, data, arch, args)
        print()
    bench_checks(reg, data, "default evaluation (autoattack standard, Linf 8/255)", [{"name": "autoattack"}], args)
    print()
    bench_checks(reg, data, "PGD-20 + FGSM suite (Linf 8/255)", [{"name": "pgd", "steps": 20}, {"name": "fgsm"}], args)


if __name__ == "__main__":
    main()
