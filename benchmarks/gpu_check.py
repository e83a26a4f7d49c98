"""rtk on a GPU: kernels against the device's measured matmul peak, one AMP training epoch,
one PGD evaluation; results as JSON. Run through ``benchmarks/gpu_check.sh``.

Sections (each timed with CUDA events after a warm-up, and each failing on its own without
stopping the others; a failure is recorded in the JSON with its message):

- ``peak``: the device's matmul throughput, measured (fp32 with TF32 allowed, bf16), the
  reference every kernel's achieved TFLOP/s is compared with.
- ``kernels``: rtk's linear CKA, minibatch CKA, RBF CKA and SVCCA on the GPU, with their
  FLOP counts (the Gram products), achieved TFLOP/s and the share of the fp32 peak; the
  peers' GPU paths (pytorch-cka, ckatorch) next to them when they are installed.
- ``training``: one epoch of PGD-AT with AMP on CIFAR-size data (ResNet-20, random data).
- ``evaluation``: PGD-10 with rtk's evaluation engine against a bare channels_last loop.

``--dry-run`` runs every section on the CPU with tiny sizes (what the test suite does): it
checks the script end to end, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    """Seconds per call of ``fn`` (median of ``repeats``), synchronised on CUDA."""

    def run(fn: Callable[[], Any], repeats: int) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    return run


def peak(device: torch.device, n: int, timed) -> dict[str, float]:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        s = timed(lambda a=a, b=b: a @ b, 5)
        out[f"{name}_tflops"] = 2 * n**3 / s / 1e12
    return out


def kernels(device: torch.device, n: int, d: int, timed, fp32_peak: float) -> list[dict[str, Any]]:
    from rtk.similarity import kernels as K

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device)
    y = (x @ torch.randn(d, d, generator=g).to(device) / d**0.5 + 0.1 * torch.randn(n, d, generator=g).to(device)).to(
        device
    )
    rows = []
    work = {
        # the Gram-free linear CKA: three d x d cross products of n rows
        "linear_cka": (lambda: K.linear_cka(x, y), 3 * 2 * n * d * d),
        "minibatch_cka (batch 256)": (lambda: K.minibatch_cka(x, y, batch_size=256), 3 * 2 * n * 256 * d),
        "rbf_cka": (lambda: K.rbf_cka(x, y), 2 * 2 * n * n * d),
        "svcca (dims 20)": (lambda: K.svcca(x, y, dims=20), 2 * 2 * n * d * d),
    }
    for name, (fn, flops) in work.items():
        try:
            s = timed(fn, 3)
            tf = flops / s / 1e12
            rows.append({"kernel": name, "seconds": s, "tflops": tf, "share_of_fp32_peak": tf / fp32_peak})
        except Exception as exc:  # one kernel's failure is a row, not the end of the check
            rows.append({"kernel": name, "error": f"{type(exc).__name__}: {exc}"})
    try:  # the peers' pair functions of the similarity benchmark, on the same GPU tensors
        from bench_similarity import load_peers, peer_pair_functions

        for label, fn in peer_pair_functions(load_peers(None, False)).items():
            try:
                s = timed(lambda fn=fn: fn(x, y), 3)
                rows.append(
                    {"kernel": "linear_cka", "peer": label, "seconds": s, "tflops": 3 * 2 * n * d * d / s / 1e12}
                )
            except Exception as exc:
                rows.append({"kernel": "linear_cka", "peer": label, "error": f"{type(exc).__name__}: {exc}"})
    except Exception as exc:
        rows.append({"peer": "any", "error": f"peers unavailable: {type(exc).__name__}: {exc}"})
    return rows


#: Image side and ResNet size: ResNet-20 on CIFAR-size images; the dry run's is tiny.
MODEL = {"side": 32, "blocks": 3, "width": 16, "steps": 10}


def _resnet20(device: torch.device):
    from benchcommon import resnet20  # benchmarks/benchcommon.py

    info, model = resnet20(MODEL["side"], blocks=MODEL["blocks"], width=MODEL["width"])
    return info, model.to(device)


def training(device: torch.device, n: int) -> dict[str, Any]:
    from rtk.data import TensorSplit
    from rtk.data.core import DatasetBundle
    from rtk.training import LoopConfig, train_model

    info, model = _resnet20(device)
    g = torch.Generator().manual_seed(0)
    data = DatasetBundle(
        info,
        TensorSplit(
            torch.rand(n, 3, MODEL["side"], MODEL["side"], generator=g), torch.randint(0, 10, (n,), generator=g)
        ),
        TensorSplit(
            torch.rand(64, 3, MODEL["side"], MODEL["side"], generator=g), torch.randint(0, 10, (64,), generator=g)
        ),
    )
    from rtk.training import PGDATObjective

    objective = PGDATObjective(eps=8 / 255, steps=MODEL["steps"])
    cfg = LoopConfig(epochs=1, batch_size=128, amp=device.type == "cuda", eval_every=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_model(model, objective, data, cfg, device=device, plot=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    return {
        "workload": f"PGD-AT ({MODEL['steps']} steps) epoch, AMP, {n} images, ResNet {MODEL}",
        "seconds": s,
        "images_s": n / s,
    }


def evaluation(device: torch.device, n: int, timed) -> dict[str, Any]:
    from benchcommon import bare_pgd, self_labelled

    import rtk
    from rtk.evaluation import evaluate, make_units

    _, model = _resnet20(device)
    model.eval()
    split = self_labelled(model, n, MODEL["side"], device)
    spec = rtk.default_registry().get("attack", "pgd")
    units = make_units([(spec, rtk.validate_options(spec.options, {"steps": MODEL["steps"]}, "pgd"), "pgd")])
    eps = 8 / 255

    rtk_s = timed(
        lambda: evaluate(model, split, units, batch_size=128, device=device, checks=False, save_adversarial="none"), 3
    )
    bare_s = timed(lambda: bare_pgd(model, split, 128, eps, MODEL["steps"], device), 3)
    return {
        "workload": f"PGD-{MODEL['steps']} evaluation, {n} images, batch 128, ResNet {MODEL}",
        "rtk_s": rtk_s,
        "bare_channels_last_s": bare_s,
        "ratio": rtk_s / bare_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, not the GPU")
    args = ap.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        sizes = {"gemm": 256, "n": 256, "d": 32, "train": 32, "eval": 16}
        MODEL.update(side=8, blocks=1, width=4, steps=2)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        sizes = {"gemm": 8192, "n": 10_000, "d": 2048, "train": 10_000, "eval": 2048}
    else:
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on the CPU)")
    timed = _timer(device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "sizes": {**sizes, **MODEL},
    }
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("peak", lambda: peak(device, sizes["gemm"], timed)),
        (
            "kernels",
            lambda: kernels(
                device, sizes["n"], sizes["d"], timed, result.get("peak", {}).get("fp32_tflops", float("nan"))
            ),
        ),
        ("training", lambda: training(device, sizes["train"])),
        ("evaluation", lambda: evaluation(device, sizes["eval"], timed)),
    ]
    for name, fn in sections:
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
        print(f"gpu_check: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(f"gpu_check: wrote {args.out}")


if __name__ == "__main__":
    main()
