"""scripts/results_common.py: one reader for the time files of the three formats the experiments run under."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from results_common import read_time  # noqa: E402

BASH_TIME = "\nreal\t1m2.500s\nuser\t0m50.250s\nsys\t0m9.750s\n"
USR_BIN_TIME_F = "wall_s=62.50 user_s=50.25 sys_s=9.75\n"
USR_BIN_TIME_V = (
    '\tCommand being timed: "rtk run experiments/x.toml --out runs/x"\n'
    "\tUser time (seconds): 50.25\n\tSystem time (seconds): 9.75\n\tPercent of CPU this job got: 96%\n"
    "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02.50\n\tMaximum resident set size (kbytes): 812344\n"
)


@pytest.mark.parametrize("text", [BASH_TIME, USR_BIN_TIME_F, USR_BIN_TIME_V], ids=["bash", "f", "v"])
def test_each_format_gives_wall_user_sys_and_cpu_seconds(tmp_path: Path, text: str) -> None:
    path = tmp_path / "run.time"
    path.write_text("epoch 1/2 ... loss 0.31 (user 3, real data)\n" + text)  # a run's log may precede it
    assert read_time(path) == pytest.approx({"wall_s": 62.5, "user_s": 50.25, "sys_s": 9.75, "cpu_s": 60.0})


def test_hours_blocks_added_up_and_partial_or_absent_files(tmp_path: Path) -> None:
    path = tmp_path / "run.time"
    path.write_text(
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n\tUser time (seconds): 100.5\n"
        "\tSystem time (seconds): 19.5\n"
    )
    assert read_time(path) == pytest.approx({"wall_s": 3723.0, "user_s": 100.5, "sys_s": 19.5, "cpu_s": 120.0})
    path.write_text(BASH_TIME + "resumed\n" + BASH_TIME)  # a resumed run appends a second block
    assert read_time(path) == pytest.approx({"wall_s": 125.0, "user_s": 100.5, "sys_s": 19.5, "cpu_s": 120.0})
    path.write_text("wall_s=12.0\n")  # no CPU without both user and system time
    assert read_time(path) == {"wall_s": 12.0}
    assert read_time(tmp_path / "absent.time") == {}
