"""Where a study's points run: local processes, Ray tasks, or Slurm jobs (through submitit).

Every executor runs a point the same way, :func:`run_point_process`: a fresh Python process
``python -m rtk.study.worker STUDY_DIR POINT_ID`` (under torchrun when the point asks for
``nproc > 1``), with its threads capped so that parallel points do not oversubscribe the
cores, its output in ``STUDY_DIR/logs/<point>.log``. The executors differ only in where that
call happens: a local thread pool, a Ray task, a submitit job. Ray and submitit are
optional extras (``rtk[ray]``, ``rtk[slurm]``); :meth:`Executor.check` reports a missing one,
or a Ray cluster that does not answer, before any point starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run one point (picklable: it travels to Ray and Slurm)."""

    study_dir: str
    point_id: str
    threads: int = 1
    nproc: int = 1
    python: str = sys.executable


@dataclass(frozen=True)
class PointOutcome:
    point_id: str
    returncode: int
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def available_cpus(*, omp_cap: bool = True) -> int:
    """The cores this process may use (its CPU affinity), capped by ``OMP_NUM_THREADS`` when
    set (unless ``omp_cap`` is false)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "") if omp_cap else ""
    if cap.isdigit() and int(cap) > 0:
        n = min(n, int(cap)) if n else int(cap)
    return max(1, n)


def threads_per_point(jobs: int, nproc: int = 1, cpus: int | None = None) -> int:
    """Threads for each process of a point when ``jobs`` points run at once, each on ``nproc``
    processes: the cores split evenly, at least one."""
    return max(1, (cpus or available_cpus()) // max(1, jobs) // max(1, nproc))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the point's process gets SIGTERM when the thread that started it dies, so killing
    the study never leaves orphans writing into its points."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def point_command(task: PointTask) -> list[str]:
    worker = ["-m", "rtk.study.worker", task.study_dir, task.point_id]
    if task.nproc > 1:
        return [task.python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(task.nproc), *worker]  # fmt: skip
    return [task.python, *worker]


def point_dir(study_dir: str | os.PathLike, point_id: str) -> Path:
    """A point's run directory in its study directory, ``points/<point>``."""
    return Path(study_dir) / "points" / point_id


def point_log(study_dir: str | os.PathLike, point_id: str) -> Path:
    """A point's output, ``logs/<point>.log``."""
    return Path(study_dir) / "logs" / f"{point_id}.log"


def run_point_process(task: PointTask) -> PointOutcome:
    """Run one point in a child process and wait; never raises for a failed point."""
    directory = point_dir(task.study_dir, task.point_id)
    if directory.exists() and not (directory / "state.json").exists():
        shutil.rmtree(directory)  # started but nothing recorded: start afresh
    log_path = point_log(task.study_dir, task.point_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(task.threads)}  # torch sizes its intra-op pool from it
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # never inherit a process group
        env.pop(var, None)
    t0 = time.perf_counter()
    with open(log_path, "ab") as out:
        kwargs: dict[str, Any] = {"stdout": out, "stderr": subprocess.STDOUT, "env": env}
        if sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _die_with_parent
        proc = subprocess.Popen(point_command(task), **kwargs)  # noqa: S603 - our own worker module
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            code = proc.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
            if proc.poll() is None:
                proc.terminate()
    error = "" if code == 0 else _error_tail(log_path, code)
    return PointOutcome(task.point_id, code, round(time.perf_counter() - t0, 3), error)


def _error_tail(log_path: Path, code: int) -> str:
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errs = [ln for ln in lines if "Error" in ln or "rtk: " in ln]
    tail = errs[-1] if errs else (lines[-1] if lines else "")
    return f"exit status {code}: {tail}".strip() if tail else f"exit status {code}"


def stop_running_points() -> None:
    """Terminate the point processes this process started (on interrupt)."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()


Callback = Callable[[PointTask], None]
DoneCallback = Callable[[PointTask, PointOutcome], None]


@dataclass(eq=False, kw_only=True)
class Executor:
    """Runs point tasks. ``check()`` raises a :class:`~rtk.ConfigError` when the executor
    cannot work (not installed, cluster unreachable); ``run()`` runs every task, calling
    ``on_start`` when a point is handed over and ``on_done`` when it ends. Its settings are
    keyword arguments: ``jobs`` (points at once), ``nproc`` (processes per point), and each
    executor's own."""

    name = "executor"

    jobs: int = 1
    nproc: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")

    def threads(self) -> int:
        return threads_per_point(self.jobs, self.nproc)

    def check(self) -> None:
        """Raise before any point starts when this executor cannot run points."""

    def run(self, tasks: Sequence[PointTask], on_start: Callback, on_done: DoneCallback) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} (jobs {self.jobs}, {self.threads()} thread(s) per process)"


class LocalExecutor(Executor):
    """``jobs`` points at once, each in its own local process."""

    name = "local"

    def run(self, tasks: Sequence[PointTask], on_start: Callback, on_done: DoneCallback) -> None:
        pending = list(tasks)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="rtk-point") as pool:
            running: dict[Any, PointTask] = {}
            try:
                while pending or running:
                    while pending and len(running) < self.jobs:
                        task = pending.pop(0)
                        on_start(task)
                        running[pool.submit(run_point_process, task)] = task
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        task = running.pop(fut)
                        on_done(task, fut.result())
            except BaseException:
                stop_running_points()
                raise


def _require(module: str, extra: str, executor: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--executor {executor} needs the package {module!r}, which is not installed; "
            f"install it with: pip install 'rtk[{extra}]'"
        ) from None


def _ray_point(task: PointTask) -> PointOutcome:  # a Ray task (module level, so workers import it)
    return run_point_process(task)


@dataclass(eq=False, kw_only=True)
class RayExecutor(Executor):
    """Each point a Ray task with ``threads x nproc`` CPUs (and ``gpus`` GPUs). Without an
    address Ray starts locally with ``num_cpus`` CPUs (default: this machine's available
    cores) and stops at the end; with one it joins that cluster (the study directory must
    then be on a file system every node sees)."""

    name = "ray"

    address: str | None = None
    num_cpus: int | None = None
    gpus: float = 0
    connect_timeout: float = 5.0

    def check(self) -> None:
        _require("ray", "ray", "ray")
        if self.address and self.address != "auto":
            hostport = self.address.split("://", 1)[-1]
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--address {self.address!r}: expected HOST:PORT (or ray://HOST:PORT, or auto)")
            try:
                with socket.create_connection((host, int(port)), timeout=self.connect_timeout):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"--address {self.address}: no Ray cluster answers there ({exc}); start one with "
                    f"`ray start --head` or leave out --address to run Ray locally"
                ) from None

    def run(self, tasks: Sequence[PointTask], on_start: Callback, on_done: DoneCallback) -> None:
        import ray

        started_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
            if self.address:
                kwargs["address"] = self.address
            else:  # a small local instance: points pass only their outcome through the object store
                kwargs["num_cpus"] = self.num_cpus or available_cpus(omp_cap=False)
                kwargs["object_store_memory"] = 200 * 1024**2
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--executor ray: could not start or join Ray: {exc}") from None
            started_here = True
        refs: dict[Any, PointTask] = {}
        try:
            remote = ray.remote(num_cpus=self.threads() * self.nproc, num_gpus=self.gpus, max_retries=0)(_ray_point)
            for task in tasks:
                on_start(task)
                refs[remote.remote(task)] = task
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    task = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a lost worker fails this point only
                        outcome = PointOutcome(task.point_id, -1, 0.0, f"Ray task failed: {exc}")
                    on_done(task, outcome)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started_here:
                ray.shutdown()

    def describe(self) -> str:
        where = self.address or f"local Ray, {self.num_cpus or available_cpus(omp_cap=False)} CPUs"
        return f"ray ({where}; {self.threads() * self.nproc} CPU(s) per point)"


@dataclass(eq=False, kw_only=True)
class SlurmExecutor(Executor):
    """Each point a Slurm job through submitit: ``partition``, ``time_min`` and ``gpus`` per
    point (and ``cpus`` per point on Slurm). ``cluster`` is ``"slurm"`` (the default), or submitit's ``"local"`` / ``"debug"``
    executors, which run the same jobs on this machine (for tests and dry runs)."""

    name = "slurm"

    partition: str | None = None
    time_min: int = 60
    gpus: int = 0
    cpus: int | None = None
    cluster: str = "slurm"
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"--slurm-cluster {self.cluster!r}: allowed: slurm, local, debug")

    def threads(self) -> int:
        if self.cluster == "slurm" and self.cpus:  # a job's own cores, split between its processes
            return max(1, self.cpus // max(1, self.nproc))
        return super().threads()

    def check(self) -> None:
        _require("submitit", "slurm", "slurm")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                "--executor slurm: Slurm's sbatch is not on PATH on this machine; run from a Slurm login node, "
                "or use --slurm-cluster local to run the same jobs here"
            )

    def run(self, tasks: Sequence[PointTask], on_start: Callback, on_done: DoneCallback) -> None:
        import submitit

        if not tasks:
            return
        folder = Path(tasks[0].study_dir) / "slurm"
        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params: dict[str, Any] = {
            "timeout_min": self.time_min,
            "cpus_per_task": self.threads() * self.nproc,
            "gpus_per_node": self.gpus,
            "nodes": 1,
            "tasks_per_node": 1,
            "name": "rtk-point",
        }
        if self.partition and self.cluster == "slurm":
            params["slurm_partition"] = self.partition
        ex.update_parameters(**params)
        if self.cluster == "debug":  # runs each job in this process when its result is asked for
            for task in tasks:
                on_start(task)
                on_done(task, ex.submit(run_point_process, task).result())
            return
        pending = list(tasks)
        running: dict[Any, PointTask] = {}
        limit = self.jobs if self.cluster == "local" else len(tasks)
        try:
            while pending or running:
                while pending and len(running) < limit:
                    task = pending.pop(0)
                    on_start(task)
                    running[ex.submit(run_point_process, task)] = task
                for job in [j for j in running if j.done()]:
                    task = running.pop(job)
                    try:
                        outcome = job.result()
                    except Exception as exc:  # noqa: BLE001 - a failed job fails this point only
                        outcome = PointOutcome(task.point_id, -1, 0.0, f"job {job.job_id} failed: {exc}")
                    on_done(task, outcome)
                if running:
                    time.sleep(self.poll_s)
        except BaseException:
            for job in running:
                job.cancel(check=False)
            raise

    def describe(self) -> str:
        part = f", partition {self.partition}" if self.partition else ""
        return f"slurm ({self.cluster}{part}; {self.time_min} min, {self.gpus} GPU(s) per point)"


def make_executor(name: str, **options: Any) -> Executor:
    """An executor by name (``local``, ``ray``, ``slurm``) with its options; unknown options
    for that executor are an error naming them."""
    classes: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}
    if name not in classes:
        from ..errors import suggest

        raise ConfigError(
            f"--executor {name!r}: unknown executor{suggest(name, classes)}; allowed: {', '.join(classes)}"
        )
    import inspect

    allowed = set(inspect.signature(classes[name].__init__).parameters) - {"self"}
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - allowed)
    if wrong:
        raise ConfigError(
            f"--executor {name}: option(s) {', '.join(wrong)} do not apply; it takes {', '.join(sorted(allowed))}"
        )
    return classes[name](**given)
