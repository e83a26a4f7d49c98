"""Scaling from 1 to 2 processes on this machine: PGD adversarial training with DDP (gloo).

The workload is one epoch of PGD-AT (L-inf PGD-5 from a random start, rtk's ``pgd`` through
the registry, run on the bare module) of the small CNN (conv16-conv32-fc100) on a subset of
Fashion-MNIST (digits when the IDX files are missing), global batch 128, SGD with momentum.
Three configurations train from the same weights on the same global batches:

- ``1p x 1t``: one process, one thread (the baseline of scaling efficiency);
- ``1p x 2t``: one process, two threads (what one process makes of both cores);
- ``2p x 1t``: two processes with one thread each, DDP over gloo, per-rank batch 64,
  :class:`rtk.distributed.DistributedBatchSampler` and :func:`rtk.distributed.wrap_model`.

For the two-process side the communication share is measured twice: (a) the time from
launching each gradient all-reduce (a timing DDP comm hook around the usual averaging
all-reduce) to its completion, summed over the epoch, over the epoch time; (b) the exposed
cost, ``1 - t(no_sync) / t(sync)``, where ``no_sync`` epochs skip the all-reduce (their
training is wrong; they only time the compute).

The configurations run interleaved, round after round (the two workers stay up, idle while
the single process runs); the printed numbers are medians over rounds. Timings on a shared
machine are noisy: the load average is printed, and CPU seconds per epoch (summed over the
processes) show the work each configuration does regardless of the machine's load.

    python benchmarks/bench_distributed.py [--rounds 3] [--train 1024] [--steps 5] [--quick]
    python benchmarks/bench_distributed.py --stages [--rounds 2]

``--stages`` measures the wired stages instead: the same experiment (PGD-AT ``train``,
``evaluate`` under PGD-50 on the digits test set, ``similarity`` with minibatch CKA) through
``rtk run --nproc 1`` and ``rtk run --nproc 2`` (torchrun, 1 thread per process), runs
interleaved; it prints each stage's median seconds (from ``state.json``, so process start-up
and the rendezvous are not counted) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import rtk
import rtk.distributed as rd

GLOBAL_BATCH = 128
EPS = 0.1


def load_data(n_train: int):
    """A fixed subset of Fashion-MNIST's training split (digits if it is not installed)."""
    from rtk.data import subset

    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    try:
        spec = reg.get("dataset", "fashion-mnist")
        bundle = spec.load(spec.options())
    except (rtk.RtkError, OSError):
        spec = reg.get("dataset", "digits")
        bundle = spec.load(spec.options())
    return reg, bundle.info, subset(bundle.train, n_train, seed=0)


def build(reg, info, steps: int, seed: int):
    """The model (fixed initial weights) and a PGD attack factory through the registry."""
    torch.manual_seed(0)
    mspec = reg.get("model", "cnn-small")
    model = mspec.build(info, mspec.options())
    aspec = reg.get("attack", "pgd")
    opts = rtk.validate_options(aspec.options, {"eps": EPS, "steps": steps, "seed": seed}, "attack")
    return model, (lambda m: aspec.build(m, opts))


class Trainer:
    """PGD-AT epochs with the distributed sampler; DDP when a process group is active."""

    def __init__(self, reg, info, split, steps: int) -> None:
        self.split = split
        model, make_attack = build(reg, info, steps, rd.rank_seed(0))
        self.model = rd.wrap_model(model, "cpu")
        self.attack = make_attack(rd.unwrap(self.model))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        self.sampler = rd.DistributedBatchSampler(len(split), GLOBAL_BATCH // rd.world_size(), seed=0)
        self.epoch = 0
        self.comm = 0.0
        if rd.is_distributed():
            self.model.register_comm_hook(self, _timed_allreduce)

    def run_epoch(self, sync: bool = True) -> tuple[float, float, float]:
        """Train one epoch; return (seconds, CPU seconds of this process, seconds of all-reduce in flight)."""
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        self.comm = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y, weight in self.sampler.iterate(self.split):
            x_adv = self.attack(x, y)
            self.model.train()
            ctx = self.model.no_sync() if (not sync and rd.is_distributed()) else _null()
            with ctx:
                loss = F.cross_entropy(self.model(x_adv), y) * weight
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            self.opt.step()
        return time.perf_counter() - t0, time.process_time() - c0, self.comm


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _timed_allreduce(state: Trainer, bucket):
    """DDP's default averaging all-reduce, timed from launch to completion."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    buf = bucket.buffer().div_(rd.world_size())
    fut = dist.all_reduce(buf, async_op=True).get_future()

    def done(f):
        state.comm += time.perf_counter() - t0
        return f.value()[0]

    return fut.then(done)


# ---------------------------------------------------------------------------- 2-process workers
def _worker(rank: int, world: int, port: int, n_train: int, steps: int, tasks, results) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    with rd.session(timeout=300):
        reg, info, split = load_data(n_train)
        trainer = Trainer(reg, info, split, steps)
        results.put((rank, "ready", 0.0, 0.0, 0.0))
        while (task := tasks.get()) is not None:
            rd.barrier()
            results.put((rank, task, *trainer.run_epoch(sync=task == "sync")))


class Workers:
    def __init__(self, n_train: int, steps: int, world: int = 2) -> None:
        ctx = mp.get_context("spawn")
        self.world = world
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        port = rd.free_port()
        self.procs = [
            ctx.Process(target=_worker, args=(r, world, port, n_train, steps, self.tasks[r], self.results), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()
        self._wait()

    def _wait(self) -> list[tuple[int, str, float, float, float]]:
        out = []
        while len(out) < self.world:
            try:
                out.append(self.results.get(timeout=600))
            except queue.Empty:
                raise RuntimeError("the benchmark workers stopped answering") from None
        return sorted(out)

    def epoch(self, sync: bool) -> tuple[float, float, float]:
        """(seconds, CPU seconds summed over ranks, mean all-reduce seconds) of one epoch."""
        for q in self.tasks:
            q.put("sync" if sync else "nosync")
        res = self._wait()
        secs = max(r[2] for r in res)  # the epoch ends when the slowest rank ends
        return secs, sum(r[3] for r in res), statistics.mean(r[4] for r in res)

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()


STAGES_TOML = """
name = "bench-stages"
seed = 0
[dataset]
name = "digits"
[models.net]
arch = "cnn-small"
[[stages]]
kind = "train"
id = "train"
model = "net"
trainer = { name = "pgd-at", eps = 0.1, steps = 5 }
epochs = 3
batch_size = 128
eval_size = 0
eval_train_size = 0
monitor = "test_clean_acc"
[[stages]]
kind = "evaluate"
id = "evaluate"
models = ["net"]
attacks = [{ name = "pgd", steps = 50 }]
eps = [0.1]
batch_size = 64
checks = false
plot = false
[[stages]]
kind = "similarity"
id = "similarity"
models = ["net"]
analyses = ["heatmap"]
metric = { name = "minibatch-cka", batch_size = 64 }
"""


def bench_stages(rounds: int) -> None:
    """Stage seconds of one experiment under ``rtk run --nproc 1`` and ``--nproc 2``."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    rtk_bin = str(Path(sys.executable).with_name("rtk"))
    secs: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "bench.toml"
        exp.write_text(STAGES_TOML)
        for r in range(rounds):
            for nproc in (1, 2) if r % 2 == 0 else (2, 1):
                out = Path(tmp) / f"run-{r}-{nproc}"
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                cmd = [rtk_bin, "-q", "run", str(exp), "--out", str(out)] + (["--nproc", "2"] if nproc == 2 else [])
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, timeout=900)
                state = json.loads((out / "state.json").read_text())
                for sid, st in state["stages"].items():
                    secs[nproc].setdefault(sid, []).append(float(st["seconds"]))
    med = statistics.median
    print(
        f"wired stages through `rtk run` (digits; PGD-5 AT 3 epochs, PGD-50 evaluation, minibatch CKA), {rounds} "
        f"rounds, medians; {os.cpu_count()} CPU cores, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for sid in secs[1]:
        a, b = med(secs[1][sid]), med(secs[2][sid])
        print(
            f"  {sid:<11}: 1 process {a:7.2f} s   2 processes {b:7.2f} s   speedup {a / b:.2f}x "
            f"(scaling efficiency {a / b / 2:.0%})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=1024, help="training examples per epoch")
    ap.add_argument("--steps", type=int, default=5, help="PGD steps")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 512 examples (a smoke run)")
    ap.add_argument("--stages", action="store_true", help="time the wired train/evaluate/similarity stages instead")
    args = ap.parse_args()
    if args.stages:
        for k in rd.TORCHRUN_ENV:
            os.environ.pop(k, None)
        bench_stages(args.rounds if args.rounds != 3 else 2)
        return
    if args.quick:
        args.rounds, args.train = 2, 512
    for k in rd.TORCHRUN_ENV:
        os.environ.pop(k, None)

    reg, info, split = load_data(args.train)
    single = Trainer(reg, info, split, args.steps)
    workers = Workers(args.train, args.steps)
    t11, t12, t21, t21_nosync, comm21 = [], [], [], [], []
    c11, c12, c21 = [], [], []
    load0 = os.getloadavg()[0]
    try:
        # warm-up (one epoch each), then interleaved rounds, alternating the order
        torch.set_num_threads(1)
        single.run_epoch()
        workers.epoch(sync=True)
        for r in range(args.rounds):
            sides = ["1x1", "1x2", "2x1", "2x1-nosync"]
            if r % 2:
                sides.reverse()
            for side in sides:
                if side == "1x1":
                    torch.set_num_threads(1)
                    secs, cpu, _ = single.run_epoch()
                    t11.append(secs)
                    c11.append(cpu)
                elif side == "1x2":
                    torch.set_num_threads(2)
                    secs, cpu, _ = single.run_epoch()
                    t12.append(secs)
                    c12.append(cpu)
                elif side == "2x1":
                    secs, cpu, comm = workers.epoch(sync=True)
                    t21.append(secs)
                    c21.append(cpu)
                    comm21.append(comm / secs)
                else:
                    t21_nosync.append(workers.epoch(sync=False)[0])
    finally:
        workers.close()

    med = statistics.median
    n = len(split)
    print(
        f"PGD-{args.steps} adversarial training, cnn-small on {info.name} ({n} examples, global batch {GLOBAL_BATCH}), "
        f"{args.rounds} rounds, medians; {os.cpu_count()} CPU cores, load average {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f} (other work on the machine skews wall times)"
    )
    for name, ts, cs in (
        ("1 process  x 1 thread ", t11, c11),
        ("1 process  x 2 threads", t12, c12),
        ("2 processes x 1 thread", t21, c21),
    ):
        print(f"  {name}: {med(ts):7.3f} s/epoch  {n / med(ts):8.1f} examples/s  {med(cs):7.3f} CPU s/epoch")
    speed_11 = med(t11) / med(t21)
    print(f"speedup 2 processes vs 1 process x 1 thread : {speed_11:.2f}x  (scaling efficiency {speed_11 / 2:.0%})")
    print(f"speedup 2 processes vs 1 process x 2 threads: {med(t12) / med(t21):.2f}x  (throughput ratio)")
    print(f"speedup 1 process: 2 threads vs 1 thread    : {med(t11) / med(t12):.2f}x")
    print(f"CPU work of 2 processes / 1 process x 1 thread: {med(c21) / med(c11):.2f}x  (distribution overhead)")
    print(f"communication share (all-reduce in flight / epoch, comm hook): {med(comm21):.1%}")
    exposed = 1 - med(t21_nosync) / med(t21)
    print(f"communication share (exposed: 1 - t(no_sync) / t(sync))       : {exposed:.1%}")


if __name__ == "__main__":
    main()
