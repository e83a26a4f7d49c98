"""Helpers of the tests that read or run the experiments shipped in experiments/."""

from __future__ import annotations

from pathlib import Path

import pytest

import rtk

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def shipped_run(name: str):
    """A module-scoped fixture: the result of ``experiments/<name>-digits.toml`` run as shipped."""

    @pytest.fixture(scope="module")
    def run(tmp_path_factory) -> rtk.RunResult:
        return rtk.run(EXPERIMENTS / f"{name}-digits.toml", out=tmp_path_factory.mktemp(name) / "run")

    return run
