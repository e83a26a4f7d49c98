"""Shared fixtures. Tests run offline on small real data (digits) with tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# One intra-op thread: the suite's models are tiny, where a second thread buys little and,
# on a busy machine, spinning threads cost several times the work. Benchmarks use more.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module starts on one thread and restores the count after, whatever its tests set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def registry():
    import rtk

    return rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


@pytest.fixture(scope="session")
def digits():
    from rtk.data.digits import load_digits

    return load_digits()


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
