"""The example third-party plugin in docs/plugins/rtk-example, registered exactly as pip
would install it (a dist-info folder with entry_points.txt on sys.path)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from click.testing import CliRunner
from experimenthelpers import digits_experiment, experiment_toml
from pluginhelpers import install_distribution

import rtk
from rtk.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "plugins" / "rtk-example"


@pytest.fixture()
def example_installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE / "src" / "rtk_example", site / "rtk_example")
    # the entry points exactly as declared in the example's pyproject.toml
    eps = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["rtk"]
    install_distribution(site, monkeypatch, dist="rtk-example", version="0.1.0", entry_points=eps)
    monkeypatch.setenv("RTK_STRICT_PLUGINS", "1")
    yield site
    sys.modules.pop("rtk_example", None)


def test_example_plugin_shows_in_rtk_plugins(example_installed):
    res = CliRunner().invoke(cli, ["plugins"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "uniform-noise" in res.output and "gram-cosine" in res.output
    assert "[example; rtk-example 0.1.0]" in res.output


def test_example_metric_is_a_similarity(example_installed):
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager())
    spec = reg.get("similarity", "gram-cosine")
    metric = spec.build(spec.options())
    x = torch.randn(50, 7)
    q, _ = torch.linalg.qr(torch.randn(7, 7))
    assert metric(x, x) == pytest.approx(1.0)
    assert metric(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-9)  # orthogonal + scale invariant
    assert metric(x, torch.randn(50, 5)) < 0.99


def test_experiment_uses_the_example_attack(example_installed, tmp_path):
    exp = tmp_path / "e.toml"
    attacks = [{"name": "uniform-noise", "eps": "8/255"}, {"name": "pgd", "eps": "8/255", "steps": 5}]
    experiment = digits_experiment(
        "with-plugin",
        {"kind": "train", "model": "net", "epochs": 2},
        {"kind": "evaluate", "models": ["net"], "attacks": attacks},
        limits=(300, 100),
        model={"arch": "mlp", "hidden": [32]},
    )
    exp.write_text(experiment_toml(experiment))
    res = CliRunner().invoke(cli, ["--quiet", "run", str(exp), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "out" / "tables" / "02-evaluate" / "accuracy.csv")
    noise = df[df.attack.str.startswith("uniform-noise")]
    assert len(noise) == 1
    clean = df[df.attack == "clean"].accuracy.item()
    # random noise is weak: it costs less than PGD at the same eps
    pgd = df[df.attack.str.startswith("pgd")].accuracy.item()
    assert noise.accuracy.item() >= pgd
    assert df[df.attack == "worst_case"].accuracy.item() <= min(clean, pgd) + 1e-9


def test_example_plugin_passes_rtk_plugins_check(example_installed):
    res = CliRunner().invoke(cli, ["plugins", "--check", "example"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "ok   attack 'uniform-noise' (example)" in res.output
    assert "2 of 2 components meet their contracts" in res.output


def test_example_plugins_own_tests_use_rtk_testing(example_installed, monkeypatch):
    """The example package's tests/ (what its author runs) pass against the installed plugin."""
    import importlib.util

    from rtk.registry import default_registry

    monkeypatch.setattr("rtk.registry._DEFAULT", None)  # a registry that sees the example plugin
    spec = importlib.util.spec_from_file_location("example_contracts", EXAMPLE / "tests" / "test_contracts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_every_component_meets_rtk_contracts()
    for name in ("uniform-noise", "gram-cosine"):
        module.test_one_component(name)
    assert "uniform-noise" in default_registry().names("attack")
