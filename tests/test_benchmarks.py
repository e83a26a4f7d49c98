"""The benchmark driver cannot rot: its quick mode runs here (tiny sizes, seconds) and
must produce every similarity row of issue 19's table and the scaling curves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("rtk_bench_run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(ROOT / "benchmarks"))


def test_quick_run_writes_the_table(run_all, tmp_path, monkeypatch):
    # an external bench module that exposes rows() is merged; one without is listed, not dropped
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "bench_evaluation.py").write_text(
        "def rows(quick):\n"
        "    return [dict(workload='PGD-10 evaluation', rtk_s=2.0, peer='bare loop', peer_s=1.0, ratio=2.0,\n"
        "                 bound_ratio=None, goal='g', note='from a module')]\n"
    )
    (ext / "bench_startup.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(ext))
    for name in ("bench_evaluation", "bench_startup"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    out = tmp_path / "performance.md"
    res = run_all.main(
        [
            "--quick",
            "--repeats",
            "1",
            "--peers-dir",
            str(tmp_path / "no-peers"),
            "--out",
            str(out),
            "--only",
            "similarity",
            "scaling",
            "bench_evaluation",
            "bench_startup",
        ]
    )
    page = out.read_text()
    workloads = [r["workload"] for r in res["rows"]]
    for start in ("minibatch unbiased CKA", "RBF CKA", "linear CKA,", "SVCCA", "12x12 linear CKA heatmap"):
        assert any(w.startswith(start) for w in workloads), start
        assert start in page
    for r in res["rows"]:
        assert r["rtk_s"] > 0
        assert set(run_all.KEYS) <= set(r)
    # peers written in benchmarks/ always run: rtk's RBF, linear and SVCCA rows have a ratio
    assert all(r["ratio"] is not None for r in res["rows"] if r["workload"].startswith(("RBF", "linear CKA,", "SVCCA")))
    assert "| PGD-10 evaluation | 2.000 s | bare loop | 1.000 s | 2.00x slower |" in page
    assert "`bench_startup`: has no `rows(quick)` yet" in page
    assert {c["kernel"] for c in res["curves"]} == {"linear_cka", "rbf_cka", "svcca"}
    assert "## Scaling" in page and "peak memory" in page


def test_reference_formulas_agree_with_rtk():
    """The peers written in benchmarks/ compute the same quantities as rtk (in float64)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_similarity as bs
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from rtk.similarity import kernels as K

    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 8, generator=g, dtype=torch.float64)
    x = torch.relu(z @ torch.randn(8, 20, generator=g, dtype=torch.float64))
    y = torch.tanh(z @ torch.randn(8, 15, generator=g, dtype=torch.float64))
    xn, yn = x.numpy(), y.numpy()
    assert bs.numpy_rbf_cka(xn, yn) == pytest.approx(K.rbf_cka(x, y), abs=1e-10)
    assert bs.svcca_google_formula(xn, yn) == pytest.approx(K.svcca(x, y), abs=1e-6)
    assert bs.numpy_linear_cka64(xn, yn) == pytest.approx(K.linear_cka(x, y), abs=1e-12)
    batches = [[x[i : i + 50], y[i : i + 50]] for i in range(0, 300, 50)]
    ref = bs.minibatch_reference64(batches)
    assert ref[0, 1] == pytest.approx(K.minibatch_cka(x, y, batch_size=50), abs=1e-10)
    assert np.allclose(np.diag(ref), 1.0)
