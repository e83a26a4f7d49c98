"""Training throughput (images/s) per architecture, input size, depth and width, for standard
training, PGD adversarial training and TRADES, on one thread: the numbers the paper-1 design
is sized from (docs/results/paper1.md, "Design (written before the runs)").

    OMP_NUM_THREADS=1 python scripts/throughput.py --quick          # a few minutes
    OMP_NUM_THREADS=1 python scripts/throughput.py --out throughput.csv
    OMP_NUM_THREADS=1 python scripts/throughput.py --gpu-configs    # the CIFAR-10 WRN / VGG costs

For each configuration it builds the model with rtk's model registry, runs ``--warmup`` then
``--steps`` optimizer steps of batch ``--batch`` on random inputs of the given size (the
speed of a step does not depend on the pixel values) with rtk's training objectives
(``StandardObjective``, ``PGDATObjective`` with ``--pgd-steps`` steps, ``TRADESObjective``
with as many), and reports seconds per step, images per second, and the FLOPs of one
forward + backward pass per image (counted by ``torch.utils.flop_counter``), so that the
cost on other hardware can be estimated from its sustained FLOP rate.

The machine may be shared: every number is a median over ``--repeats`` timings, and the
output says how many threads torch used. Nothing is written unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

import rtk
from rtk.data import DataInfo
from rtk.training import PGDATObjective, StandardObjective, TRADESObjective


@dataclass(frozen=True)
class Config:
    arch: str
    options: dict
    size: int
    channels: int = 1

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.arch}({opts}) {self.channels}x{self.size}x{self.size}"


@dataclass(frozen=True)
class Timing:
    """How each trainer is timed: ``repeats`` runs of ``steps`` optimizer steps on batches of ``batch``,
    after ``warmup`` steps; the median of the runs counts."""

    batch: int
    steps: int
    warmup: int
    repeats: int


#: The CPU-scale design space (paper 1 at CPU scale): resnet-small depth x width on small inputs.
CPU_CONFIGS = [
    Config("resnet-small", {"blocks": b, "width": w}, s) for s in (8, 14) for b in (1, 2, 4) for w in (8, 16, 32)
] + [Config("resnet-small", {"blocks": 2, "width": 16}, 28)]
QUICK_CONFIGS = [
    Config("resnet-small", {"blocks": b, "width": w}, s) for s in (8, 14) for b, w in ((1, 8), (2, 16), (4, 32))
]
#: The papers' own settings, for the GPU estimates (CIFAR-10: 3x32x32).
GPU_CONFIGS = [Config("wrn", {"depth": 28, "width": k}, 32, 3) for k in (1, 4, 10)] + [
    Config("vgg16", {}, 32, 3),
]


def info_for(cfg: Config) -> DataInfo:
    c = cfg.channels
    return DataInfo("synthetic", 10, c, cfg.size, cfg.size, (0.5,) * c, (0.25,) * c)


def build(cfg: Config, registry: rtk.Registry) -> torch.nn.Module:
    spec = registry.get("model", cfg.arch)
    return spec.build(info_for(cfg), rtk.validate_options(spec.options, cfg.options, f"model {cfg.arch}"))


def flops_per_image(model: torch.nn.Module, cfg: Config, batch: int = 4) -> float:
    """FLOPs of one forward + backward (weights and inputs) per image."""
    x = torch.rand(batch, cfg.channels, cfg.size, cfg.size)
    y = torch.randint(0, 10, (batch,))
    model.train()
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def objectives(pgd_steps: int, eps: float) -> dict[str, object]:
    return {
        "standard": StandardObjective(),
        f"pgd-at-{pgd_steps}": PGDATObjective(eps=eps, steps=pgd_steps),
        f"trades-{pgd_steps}": TRADESObjective(eps=eps, steps=pgd_steps),
    }


def time_steps(model, objective, cfg: Config, timing: Timing) -> float:
    """Median seconds per optimizer step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(timing.batch, cfg.channels, cfg.size, cfg.size, generator=g)
    y = torch.randint(0, 10, (timing.batch,), generator=g)

    def step() -> None:
        model.train()
        out = objective(model, x, y, progress=0.5)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for _ in range(timing.warmup):
        step()
    times = []
    for _ in range(timing.repeats):
        t0 = time.perf_counter()
        for _ in range(timing.steps):
            step()
        times.append((time.perf_counter() - t0) / timing.steps)
    return statistics.median(times)


def measure(configs, timing: Timing, *, pgd_steps, eps, only=None) -> pd.DataFrame:
    registry = rtk.default_registry()
    batch = timing.batch
    rows = []
    for cfg in configs:
        model = build(cfg, registry)
        params = sum(p.numel() for p in model.parameters())
        fl = flops_per_image(model, cfg)
        for name, obj in objectives(pgd_steps, eps).items():
            if only and not any(name.startswith(o) for o in only):
                continue
            sec = time_steps(model, obj, cfg, timing)
            rows.append(
                {
                    "arch": cfg.arch,
                    "options": ",".join(f"{k}={v}" for k, v in cfg.options.items()),
                    "input": f"{cfg.channels}x{cfg.size}x{cfg.size}",
                    "params": params,
                    "trainer": name,
                    "batch": batch,
                    "s_per_step": sec,
                    "images_per_s": batch / sec,
                    "gflop_fwd_bwd_per_image": fl / 1e9,
                    "threads": torch.get_num_threads(),
                }
            )
            print(f"{cfg.label:45s} {name:12s} {batch / sec:9.1f} img/s  ({sec * 1000:.0f} ms/step)", flush=True)
    return pd.DataFrame(rows)


#: FLOPs of one training image under each objective, in units of one forward + backward pass
#: (F): an attack step is a forward pass and a backward pass to the input only, about 2/3 F.
ATTACK_STEP = 2 / 3
COST = {"standard": 1.0, "pgd-at-10": 1 + 10 * ATTACK_STEP, "trades-10": 1 + 1 / 3 + 10 * ATTACK_STEP + 1 / 3}


def paper_scale_estimate(tflops: float, registry: rtk.Registry | None = None) -> pd.DataFrame:
    """GPU hours of experiments/paper1-cifar10-wrn.toml and paper2-cifar10-hydra.toml at a
    sustained ``tflops`` (an assumption, not a measurement), from counted FLOPs per image and
    the epochs of those files (CIFAR-10: 50,000 training images). Evaluation and CKA cost less
    than 2% of the training and are left out."""
    registry = registry or rtk.default_registry()
    n = 50_000
    rows = []

    def add(experiment: str, what: str, cfg: Config, image_passes: float) -> None:
        f = flops_per_image(build(cfg, registry), cfg, batch=2)
        total = image_passes * f
        rows.append(
            {
                "experiment": experiment,
                "part": what,
                "gflop_fwd_bwd_per_image": f / 1e9,
                "total_pflop": total / 1e15,
                "gpu_hours": total / (tflops * 1e12) / 3600,
            }
        )

    for k in range(1, 11):
        passes = n * 100 * (COST["standard"] + 2 * COST["pgd-at-10"])  # std, L-inf and L2 PGD-AT, 100 epochs
        add(
            "paper1-cifar10-wrn",
            f"WRN-28-{k}: 3 models x 100 epochs",
            Config("wrn", {"depth": 28, "width": k}, 32, 3),
            passes,
        )
    epochs = 100 + 3 * 20 + 6 * 100  # pre-train; HYDRA scores at 3 ratios; fine-tune 2 methods x 3 ratios
    for name, cfg in (("VGG-16", GPU_CONFIGS[3]), ("WRN-28-4", GPU_CONFIGS[1])):
        add("paper2-cifar10-hydra", f"{name}: {epochs} TRADES epochs", cfg, n * epochs * COST["trades-10"])
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few configurations, fewer steps")
    ap.add_argument("--gpu-configs", action="store_true", help="CIFAR-10 WRN-28-k and VGG-16 (slow on a CPU)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="trainers to time (prefixes: standard, pgd-at, trades)")
    ap.add_argument("--sizes", type=int, nargs="*", help="resnet-small grid: input sides (with --blocks, --widths)")
    ap.add_argument("--blocks", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--widths", type=int, nargs="*", default=[8, 16, 32])
    ap.add_argument("--out", help="write the table as CSV here")
    ap.add_argument(
        "--estimate-gpu",
        type=float,
        metavar="TFLOPS",
        help="print the GPU hours of the paper-scale files at this sustained rate (an assumption) and exit",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.estimate_gpu:
        est = paper_scale_estimate(args.estimate_gpu)
        print(est.to_string(index=False))
        for exp, part in est.groupby("experiment"):
            print(f"{exp}: {part['gpu_hours'].sum():.1f} GPU hours at {args.estimate_gpu:g} TFLOP/s sustained")
        if args.out:
            est.to_csv(args.out, index=False)
        return 0
    configs = GPU_CONFIGS if args.gpu_configs else (QUICK_CONFIGS if args.quick else CPU_CONFIGS)
    if args.sizes:
        configs = [
            Config("resnet-small", {"blocks": b, "width": w}, s)
            for s in args.sizes
            for b in args.blocks
            for w in args.widths
        ]
    steps, repeats = (min(args.steps, 2), min(args.repeats, 2)) if args.quick else (args.steps, args.repeats)
    timing = Timing(batch=args.batch, steps=steps, warmup=args.warmup, repeats=repeats)
    df = measure(configs, timing, pgd_steps=args.pgd_steps, eps=args.eps, only=args.only)
    if args.out:
        df.to_csv(args.out, index=False)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
