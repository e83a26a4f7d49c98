"""Install a plugin module or package exactly as pip would (a dist-info folder with entry_points.txt on
sys.path), for tests of entry-point loading; a small run for plugins that observe one."""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_distribution(site: Path, monkeypatch, *, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Write the dist-info of ``dist`` whose entry points (group ``rtk``, name -> module) are ``entry_points``,
    as pip leaves it in ``site``, and put ``site`` on sys.path."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[rtk]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("RTK_NO_ENTRY_POINTS", raising=False)


def install_plugin(site: Path, monkeypatch, *, dist: str, version: str, entry: str, module: str, source: str) -> None:
    """Write ``module``.py (``source``) and the dist-info of ``dist`` whose entry point
    ``entry`` (group ``rtk``) loads it, and put ``site`` on sys.path."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    install_distribution(site, monkeypatch, dist=dist, version=version, entry_points={entry: module})


def observed_experiment(name: str, seed: int) -> dict:
    """A small experiment for plugins that observe a run (lifecycle hooks, loggers): an MLP trained for
    two epochs on digits, then evaluated under FGSM."""
    return {
        "name": name,
        "seed": seed,
        "dataset": {"name": "digits", "limit_train": 200, "limit_test": 100},
        "models": {"net": {"arch": "mlp", "hidden": [16]}},
        "stages": [
            {"kind": "train", "model": "net", "epochs": 2, "lr": 0.1, "batch_size": 64},
            {"kind": "evaluate", "models": ["net"], "attacks": [{"name": "fgsm", "eps": "8/255"}]},
        ],
    }
