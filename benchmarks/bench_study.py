"""The overhead of a study: a 4-point digits sweep against its four runs alone.

The sweep is the tutorial's (docs/tutorials/studies.md): two widths of ``cnn-small`` x two
trainers (standard, PGD-AT), each point a ``train`` stage and an ``evaluate`` stage on the
8x8 digits; ``--epochs`` and ``--train`` override its epochs and training-set size. Three
configurations, each timed as a whole command (wall clock, process start-up included):

- ``alone``: the four points as four ``rtk run FILE --set ...`` commands one after another
  (the baseline: what a researcher did before studies);
- ``jobs1``: ``rtk run SWEEP.toml`` (the local executor, one point at a time);
- ``jobs2``: ``rtk run SWEEP.toml --jobs 2`` (two points at once, one thread each).

The configurations run interleaved, round after round, so they share the machine's noise;
the printed numbers are the medians over rounds and the ratios to ``alone``. Beside the wall
time, the seconds the stages themselves took (summed from each run's ``state.json``) are
printed, and their difference, the time outside the stages (process start-up, imports,
planning, the study's own bookkeeping). The load average is printed too: on a shared
machine only the ratios mean much.

    python benchmarks/bench_study.py [--rounds 2] [--epochs 2] [--train 400]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "studies.md"
WIDTHS = [1, 2]
TRAINERS = ['"standard"', '{ name = "pgd-at", eps = 0.1, steps = 2 }']


def tutorial_sweep() -> str:
    """The 2x2 study of docs/tutorials/studies.md (widths 1, 2 x standard, PGD-AT)."""
    text = TUTORIAL.read_text()
    start = text.index("<!-- file: width-by-trainer.toml -->")
    body = text[text.index("```toml\n", start) + len("```toml\n") :]
    return body[: body.index("```")]


def rtk(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtk.cli.main", "-q", *args]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def stage_seconds(run_dirs: list[Path]) -> float:
    total = 0.0
    for d in run_dirs:
        state = json.loads((d / "state.json").read_text())
        total += sum(st.get("seconds", 0.0) for st in state["stages"].values())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=400)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtk-bench-study-"))
    sweep_text = tutorial_sweep()
    sweep = work / "sweep.toml"
    sweep.write_text(sweep_text)
    single = work / "single.toml"
    single.write_text(sweep_text[: sweep_text.index("[sweep]")])
    common = ["--set", f"stages.train.epochs={args.epochs}", "--set", f"dataset.limit_train={args.train}"]
    times: dict[str, list[float]] = {"alone": [], "jobs1": [], "jobs2": []}
    stages: dict[str, list[float]] = {"alone": [], "jobs1": [], "jobs2": []}
    for r in range(args.rounds):
        alone = 0.0
        dirs = []
        for i, (w, t) in enumerate(itertools.product(WIDTHS, TRAINERS)):
            dirs.append(work / f"alone-{r}-{i}")
            alone += timed(
                rtk(
                    "run",
                    str(single),
                    "--set",
                    f"models.net.width={w}",
                    "--set",
                    f"stages.train.trainer={t}",
                    "--out",
                    str(dirs[-1]),
                )  # fmt: skip
            )
        times["alone"].append(alone)
        stages["alone"].append(stage_seconds(dirs))
        for name, extra in (("jobs1", []), ("jobs2", ["--jobs", "2"])):
            out = work / f"{name}-{r}"
            times[name].append(timed(rtk("run", str(sweep), *common, *extra, "--out", str(out))))
            stages[name].append(stage_seconds(sorted((out / "points").iterdir())))
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {times[k][-1]:.1f} s (stages {stages[k][-1]:.1f} s)" for k in times)
            + f"; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian over {args.rounds} rounds (cores: {os.cpu_count()}):")
    print("  config   wall s  ratio  stages s  outside stages s")
    for k, v in med.items():
        st = statistics.median(stages[k])
        print(f"  {k:6s} {v:8.1f} {v / med['alone']:6.2f} {st:9.1f} {v - st:17.1f}")
    print(f"(files in {work})")


if __name__ == "__main__":
    main()
