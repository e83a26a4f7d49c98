"""One epoch of PGD adversarial training: rtk's loop vs a bare hand-written loop.

Both sides train the same architecture from the same weights on the same data with the
same attack (L-inf PGD-10, uniform random start, model in eval mode during the attack,
gradients with respect to the input only), SGD with momentum and weight decay, batch 128.
The bare loop is what one writes by hand: slice a permutation, attack, step, nothing else.
rtk's loop adds the objective call, the per-step LR scheduler, device-side metric
accumulation and NaN detection; its per-epoch evaluation is measured separately.

The two sides run interleaved (alternating which goes first), several times; the printed
ratio is the median of the per-pair ratios. Timings on a shared machine are noisy.

    python benchmarks/bench_training.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from benchcommon import parse_or_print_rows

import rtk
from rtk.data import DatasetBundle, apply_limits
from rtk.training import LoopConfig, PGDATObjective, train_model

EPS, ALPHA, STEPS, BATCH = 0.1, 0.025, 10, 128


def bare_epoch(model, x_all, y_all, gen) -> None:
    """The hand-written reference: one epoch of PGD-10 adversarial training."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(y_all), generator=gen)
    model.train()
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        x, y = x_all[idx], y_all[idx]
        model.eval()
        delta = (torch.rand_like(x) * 2 - 1) * EPS
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(STEPS):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + ALPHA * g.sign()).clamp(-EPS, EPS)
            delta = (x + delta).clamp(0, 1) - x
        model.train()
        loss = F.cross_entropy(model(x + delta), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def rtk_epoch(model, data: DatasetBundle, *, evaluate: bool) -> None:
    cfg = LoopConfig(
        epochs=1,
        batch_size=BATCH,
        lr=0.01,
        eval_every=1 if evaluate else 0,
        eval_size=1000,
        eval_train_size=1000,
        eval_steps=STEPS,
    )
    train_model(model, PGDATObjective(eps=EPS, alpha=ALPHA, steps=STEPS), data, cfg, seed=0)


def measure(data: DatasetBundle, arch: str, repeats: int, clock=time.perf_counter, evaluate: bool = True) -> dict:
    """Interleaved epochs from the same weights (alternating which side goes first): the bare loop's,
    rtk's and (with ``evaluate``) rtk's with its per-epoch evaluation, in seconds of ``clock``."""
    reg = rtk.default_registry()
    mspec = reg.get("model", arch)
    torch.manual_seed(0)
    init = mspec.build(data.info, mspec.options()).state_dict()

    def fresh():
        m = mspec.build(data.info, mspec.options())
        m.load_state_dict(init)
        return m

    def timed(fn) -> float:
        t0 = clock()
        fn()
        return clock() - t0

    x_all, y_all = data.train.x, data.train.y
    bare_epoch(fresh(), x_all, y_all, torch.Generator().manual_seed(0))  # warm-up both paths
    rtk_epoch(fresh(), data, evaluate=False)
    out: dict[str, list[float]] = {"bare": [], "rtk": [], "eval": []}
    for r in range(repeats):
        pair = [
            ("bare", lambda r=r: bare_epoch(fresh(), x_all, y_all, torch.Generator().manual_seed(r))),
            ("rtk", lambda: rtk_epoch(fresh(), data, evaluate=False)),
        ]
        if r % 2:
            pair.reverse()
        for name, fn in pair:
            out[name].append(timed(fn))
        if evaluate:
            out["eval"].append(timed(lambda: rtk_epoch(fresh(), data, evaluate=True)))
    return out


def bench(label: str, data: DatasetBundle, arch: str, repeats: int) -> None:
    t = measure(data, arch, repeats)
    ratios = [r / b for r, b in zip(t["rtk"], t["bare"])]
    ratios_eval = [e / b for e, b in zip(t["eval"], t["bare"])]
    n = len(data.train)
    print(
        f"{label}: {arch}, {n} training images {list(data.train.x.shape[1:])}, PGD-{STEPS} eps {EPS}, batch {BATCH}, "
        f"{repeats} interleaved pairs, {torch.get_num_threads()} threads"
    )
    print(f"  bare loop epoch          median {statistics.median(t['bare']):7.3f} s")
    print(f"  rtk loop epoch           median {statistics.median(t['rtk']):7.3f} s")
    print(
        f"  ratio rtk / bare         median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})"
        f"  [target <= 1.10]"
    )
    print(
        f"  rtk epoch + per-epoch evaluation (clean test + PGD on 1000 test and 1000 train images): "
        f"median {statistics.median(t['eval']):.3f} s, ratio to bare {statistics.median(ratios_eval):.3f} (informational)"
    )


def _fashion_subset() -> DatasetBundle | None:
    reg = rtk.default_registry()
    try:
        fm = reg.get("dataset", "fashion-mnist")
        opts = fm.options(limit_train=4096, limit_test=1000)
        return apply_limits(fm.load(opts), opts)
    except (rtk.RtkError, OSError):  # the IDX files are not installed everywhere
        return None


def rows(quick: bool) -> list[dict]:
    """The row of docs/performance.md: one PGD-AT epoch, rtk's loop against the bare loop, in CPU
    time of one thread, interleaved (Fashion-MNIST's 4096-image subset; digits where it is not
    installed, or with ``quick``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = None if quick else _fashion_subset()
        label = "a 4096-image Fashion-MNIST subset"
        if data is None:
            reg = rtk.default_registry()
            digits = reg.get("dataset", "digits")
            data, label = digits.load(digits.options()), "digits"
        repeats = 1 if quick else 3
        t = measure(data, "cnn-small", repeats, time.process_time, evaluate=False)
        rtk_s, bare_s = statistics.median(t["rtk"]), statistics.median(t["bare"])
        return [
            {
                "workload": f"PGD-AT epoch (PGD-{STEPS}, batch {BATCH}), cnn-small on {label}",
                "rtk_s": rtk_s,
                "peer": "bare hand-written loop",
                "peer_s": bare_s,
                "ratio": rtk_s / bare_s,
                "bound_ratio": None,
                "goal": "<= 1.05",
                "note": f"CPU time, 1 thread; medians of {repeats} interleaved pairs; rtk's per-epoch evaluation "
                "not included (measured apart by this script)",
            }
        ]
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parse_or_print_rows(ap, rows)
    if args is None:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    reg = rtk.default_registry()
    digits = reg.get("dataset", "digits")
    bench("digits", digits.load(digits.options()), "cnn-small", args.repeats)
    if args.quick:
        return
    data = _fashion_subset()
    if data is None:
        print("fashion-mnist unavailable; skipped")
        return
    bench("fashion-mnist (4096-image subset)", data, "cnn-small", args.repeats)


if __name__ == "__main__":
    main()
