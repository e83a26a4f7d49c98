"""benchmarks/gpu_check.sh end to end on the CPU (--dry-run: tiny sizes), so the script is
ready for the day a GPU is at hand: every section runs and the JSON has its fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["device"]
    for section in ("peak", "kernels", "training", "evaluation"):
        assert "error" not in res[section] if isinstance(res[section], dict) else True, res[section]
    assert res["peak"]["fp32_tflops"] > 0
    ours = [r for r in res["kernels"] if "peer" not in r]
    assert {r["kernel"] for r in ours} >= {"linear_cka", "rbf_cka"} and all(r["tflops"] > 0 for r in ours), ours
    assert res["training"]["images_s"] > 0
    assert res["evaluation"]["ratio"] > 0


def test_gpu_check_refuses_a_machine_without_cuda_unless_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "x.json").exists()
