"""Start-up time of the ``rtk`` command: ``--help``, ``plugins`` and ``reference``.

Each command runs in a fresh Python process (``python -m rtk.cli.main ...``, what the
``rtk`` script runs), interleaved with ``python -c "import torch"`` (the peer: what printing
help used to cost) and ``python -c pass`` (the interpreter alone). Times are the child
processes' CPU time (user + system, from ``getrusage``), which another process's load on a
shared machine barely moves, and wall time; medians. The heavy modules each command imports
are listed from ``-X importtime``. The children keep bytecode caches (in a temporary
``PYTHONPYCACHEPREFIX``, written by the warm-up round), as an installed rtk has them, even where
the environment sets ``PYTHONDONTWRITEBYTECODE``.

    python benchmarks/bench_startup.py            # about a minute on 2 cores
    python benchmarks/bench_startup.py --quick
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "pandas", "pydantic", "numpy")
COMMANDS = {
    "rtk --help": ["-m", "rtk.cli.main", "--help"],
    "rtk plugins": ["-m", "rtk.cli.main", "plugins"],
    "rtk reference": ["-m", "rtk.cli.main", "reference"],
    "import torch": ["-c", "import torch"],
    "python": ["-c", "pass"],
}


def _run(args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=_env())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


@functools.cache
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pycache = tempfile.mkdtemp(prefix="rtk-bench-pycache-")
    atexit.register(shutil.rmtree, pycache, ignore_errors=True)
    return {**env, "RTK_NO_ENTRY_POINTS": "1", "OMP_NUM_THREADS": "1", "PYTHONPYCACHEPREFIX": pycache}


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy top-level modules a command imports (from ``-X importtime``)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, check=True, env=_env()
    )
    found = set()
    for line in proc.stderr.splitlines():
        name = line.rsplit("|", 1)[-1].strip()
        if name in HEAVY:
            found.add(name)
    return sorted(found)


def measure(repeats: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in COMMANDS}
    names = list(COMMANDS)
    for k in names:  # warm the disk cache
        _run(COMMANDS[k])
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            times[k].append(_run(COMMANDS[k]))
    return {
        k: {"cpu": statistics.median(c for c, _ in v), "wall": statistics.median(w for _, w in v)}
        for k, v in times.items()
    }


def rows(quick: bool) -> list[dict]:
    """Rows of docs/performance.md: each command against ``import torch``."""
    med = measure(3 if quick else 7)
    out = []
    for k in ("rtk --help", "rtk plugins", "rtk reference"):
        heavy = heavy_imports(COMMANDS[k])
        out.append(
            {
                "workload": f"`{k}` (fresh process)",
                "rtk_s": med[k]["cpu"],
                "peer": "python -c 'import torch'",
                "peer_s": med["import torch"]["cpu"],
                "ratio": med[k]["cpu"] / med["import torch"]["cpu"],
                "bound_ratio": None,
                "goal": "< 0.3 s, no torch/pandas/pydantic"
                if k == "rtk --help"
                else "< 0.3 s, no torch/pandas (pydantic: the option models)",
                "note": f"CPU time; wall {med[k]['wall']:.2f} s; the interpreter alone {med['python']['cpu']:.2f} s; "
                + (f"imports {', '.join(heavy)}" if heavy else "imports none of torch, pandas, pydantic, numpy")
                + (" (the records carry their option models, pydantic classes)" if heavy == ["pydantic"] else ""),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for row in rows(args.quick):
        print(row)


if __name__ == "__main__":
    main()
