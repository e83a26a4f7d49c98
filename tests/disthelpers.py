"""The process harness of the multi-process tests: ``world`` spawned gloo ranks that join a process
group on a free local port through ``rtk.distributed.session``, as ``torchrun`` workers would, and
run the tasks a test sends them. Start-up dominates these tests, so one pool serves a whole module;
every task is bounded by a deadline, and after a failure the workers are terminated and restarted.
"""

from __future__ import annotations

import os
import queue
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

import rtk.distributed as rd

WORLD = 2


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The environment ``torchrun`` gives rank ``rank`` of ``world`` on this host."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _pool_worker(rank: int, world: int, port: int, deadline_s: float, tasks, results) -> None:
    """One rank: join the gloo group, then run ``fn(rank, *args)`` for each task until None."""
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    with rd.session(timeout=deadline_s) as info:
        assert info.distributed and (info.rank, info.world_size, info.backend) == (rank, world, "gloo")
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                fn(rank, *args)
                results.put((rank, None))
            except BaseException:  # noqa: BLE001 - reported to the test
                results.put((rank, traceback.format_exc()))
    results.put((rank, "closed" if not rd.is_initialized() else "session() left the process group alive"))


class Workers:
    """``world`` spawned gloo ranks, started on the first task and reused by every later one;
    restarted after any failure. Each task and the session are bounded by ``deadline_s``."""

    def __init__(self, world: int = WORLD, deadline_s: float = 60.0) -> None:
        self.world = world
        self.deadline_s = deadline_s
        self.procs: list = []
        self.broken = True

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.tasks = [ctx.Queue() for _ in range(self.world)]
        self.results = ctx.Queue()
        port = rd.free_port()
        self.procs = [
            ctx.Process(
                target=_pool_worker,
                args=(r, self.world, port, self.deadline_s, self.tasks[r], self.results),
                daemon=True,
            )
            for r in range(self.world)
        ]
        for p in self.procs:
            p.start()
        self.broken = False

    def run(self, fn, *args) -> None:
        """Run ``fn(rank, *args)`` on every rank; fail with the workers' tracebacks."""
        if self.broken:
            self.close()
            self._start()
        for q in self.tasks:
            q.put((fn, args))
        errors = self._collect()
        if errors:
            self.broken = True
            raise AssertionError("distributed workers failed:\n" + "\n".join(errors))

    def _collect(self) -> list[str]:
        deadline = time.monotonic() + self.deadline_s
        errors, done = [], 0
        while done < self.world:
            try:
                rank, err = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                return errors + [f"no answer within {self.deadline_s:.0f} s (dead ranks: {dead})"]
            done += 1
            if err is not None:
                errors.append(f"rank {rank}:\n{err}")
        return errors

    def close(self) -> list[str]:
        """Stop the workers (terminating any that hang); return their closing reports."""
        reports = []
        if self.procs and not self.broken:
            for q in self.tasks:
                q.put(None)
            deadline = time.monotonic() + 20
            while len(reports) < self.world and time.monotonic() < deadline:
                try:
                    reports.append(self.results.get(timeout=max(0.1, deadline - time.monotonic()))[1])
                except queue.Empty:
                    break
        for p in self.procs:
            p.join(timeout=5 if not self.broken else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        self.procs = []
        self.broken = True
        return reports


def workers_fixture(deadline_s: float):
    """A module-scoped ``workers`` fixture: a :class:`Workers` pool for the module's tests; when it closes
    cleanly, every rank must report that its session destroyed the process group."""

    @pytest.fixture(scope="module")
    def workers():
        w = Workers(WORLD, deadline_s)
        yield w
        broken = w.broken  # a failed task, or no task at all: nothing to report
        reports = w.close()
        assert broken or reports == ["closed"] * WORLD, reports

    return workers
