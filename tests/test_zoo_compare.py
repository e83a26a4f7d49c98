"""Zoo models beside the user's models: the ``zoo`` stage and ``rtk zoo compare``.

Offline: the zoo weights are random (written in robustbench's layout), the data is a tiny
CIFAR-10-format folder made from scikit-learn's digits (upsampled to 3x32x32), read by
rtk's own ``cifar10`` dataset.
"""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rtk
from rtk.zoo import build_architecture, robustbench_available, save_zoo_checkpoint

pytestmark = pytest.mark.skipif(not robustbench_available() and not os.environ.get("CI"),
                                reason="robustbench (pip install 'rtk[zoo]') is not installed here")

ZID = "cifar10/Linf/Ding2020MMA"


def write_cifar10_folder(root, x: np.ndarray, y: np.ndarray, n_test: int) -> None:
    """CIFAR-10's python layout: data_batch_1..5 and test_batch, pickled dicts of uint8 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = x.reshape(len(x), -1)
    train = np.array_split(np.arange(n_test, len(x)), 5)
    for i, idx in enumerate(train, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": rows[idx], b"labels": y[idx].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rows[:n_test], b"labels": y[:n_test].tolist()}, f)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="nearest").repeat(1, 3, 1, 1)
    root = tmp_path_factory.mktemp("cifar-digits")
    write_cifar10_folder(root, (x * 255).round().to(torch.uint8).numpy(), d.target.astype(np.int64), n_test=297)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    save_zoo_checkpoint(build_architecture(ZID), root / f"{ZID}.pt")
    return root


def _exp(cifar_root, zoo_dir, **stage):
    return {
        "name": "zoo-test", "seed": 0, "device": "cpu",
        "dataset": {"name": "cifar10", "root": str(cifar_root)},
        "models": {"mine": {"arch": "cnn-small"},
                   "ding": {"arch": f"robustbench:{ZID}", "model_dir": str(zoo_dir)}},
        "stages": [{"kind": "train", "model": "mine", "epochs": 1, "lr": 0.05, "batch_size": 64},
                   {"kind": "zoo", "id": "zoo", "models": ["mine", "ding"],
                    "attacks": [{"name": "pgd", "eps": "2/255", "steps": 2}], "limit": 16, **stage}],
    }


def test_zoo_stage_puts_zoo_and_user_models_in_one_table(cifar_root, model_dir, registry, tmp_path):
    l2_dir = tmp_path / "more-models"  # a second entry, loaded by the stage itself (same architecture)
    shutil.copytree(model_dir, l2_dir)
    (l2_dir / "cifar10/L2").mkdir()
    shutil.copyfile(model_dir / f"{ZID}.pt", l2_dir / "cifar10/L2/Ding2020MMA.pt")
    exp = _exp(cifar_root, model_dir, zoo=["cifar10/L2/Ding2020MMA"], model_dir=str(l2_dir),
               cka={"enabled": False})
    result = rtk.run(exp, registry=registry, out=tmp_path / "run")
    wide = result.table("zoo/comparison").set_index("model")
    assert list(wide.index) == ["mine", "ding", "Ding2020MMA"]
    assert list(wide["source"]) == ["rtk", "zoo", "zoo"]
    assert set(wide["n"]) == {16}
    assert (wide["worst_case"] <= wide["clean"]).all()
    # the trained small CNN beats the zoo architecture with random weights on clean data
    assert wide.loc["mine", "clean"] > wide.loc["ding", "clean"] + 0.2
    assert wide.loc["ding", "zoo_id"] == ZID and wide.loc["Ding2020MMA", "zoo_id"] == "cifar10/L2/Ding2020MMA"
    assert wide.loc["ding", "reported_eps"] == "8/255" and wide.loc["Ding2020MMA", "reported_eps"] == "0.5"
    assert 0 < wide.loc["ding", "reported_robust"] < wide.loc["ding", "reported_clean"] < 1
    assert np.isnan(wide.loc["mine", "reported_clean"])
    long = result.table("zoo/accuracy")
    assert set(long["attack"]) == {"clean", "pgd(eps=2/255, steps=2)", "worst_case"}
    assert "zoo" in (result.path / "report.md").read_text()


def test_same_examples_and_attacks_for_every_contender(cifar_root):
    from rtk.data.cifar import load_cifar10
    from rtk.zoo.compare import Contender, compare_robustness

    data = load_cifar10(cifar_root)
    torch.manual_seed(1)
    model = rtk.default_registry().get("model", "cnn-small").build(data.info, rtk.default_registry().get(
        "model", "cnn-small").options())
    twin = Contender("twin", model)
    split = rtk.data.subset(data.test, 24, 0)
    pgd = rtk.default_registry().get("attack", "pgd")
    attacks = [("pgd", lambda m: pgd.build(m, pgd.options(eps=0.1, steps=2)))]
    long, wide = compare_robustness([Contender("a", model), twin], split, attacks)
    a, b = wide.iloc[0], wide.iloc[1]
    assert (a["clean"], a["pgd"], a["worst_case"]) == (b["clean"], b["pgd"], b["worst_case"])
    assert list(wide["n"]) == [24, 24] and len(long) == 6
    with pytest.raises(ValueError, match="unique"):
        compare_robustness([twin, twin], split, attacks)


def test_zoo_stage_checks_before_work(registry, model_dir):
    exp = rtk.experiment_from_dict({"dataset": "digits", "models": {"m": {"arch": "mlp"}},
                                    "stages": [{"kind": "zoo", "models": ["m", "nope"],
                                                "zoo": ["cifar10/Linf/Ding2020MAM", "Ding2020MMA"]},
                                               {"kind": "zoo"}]})
    with pytest.raises(rtk.ConfigError) as exc:
        rtk.plan(exp, registry)
    msg = str(exc.value)
    assert "stages[0].models[1]: unknown model 'nope'" in msg
    assert "stages[0].zoo[0]" in msg and "did you mean 'Ding2020MMA'" in msg
    assert "stages[0].zoo[1]" in msg and "<dataset>/<threat>/<name>" in msg
    assert "stages[1]: nothing to compare" in msg


def test_zoo_model_on_the_wrong_dataset_is_named(registry, model_dir, tmp_path):
    exp = {"dataset": "digits", "models": {"m": {"arch": "mlp"}},
           "stages": [{"kind": "zoo", "models": ["m"], "zoo": [ZID], "model_dir": str(model_dir), "limit": 4}]}
    with pytest.raises(rtk.StageError) as exc:
        rtk.run(exp, registry=registry, out=tmp_path / "run")
    assert "3 channels (the data has 1)" in str(exc.value) and "cifar10" in str(exc.value)


def test_cli_compare(cifar_root, model_dir, tmp_path, monkeypatch):
    from rtk.cli.main import cli
    from rtk.data.cifar import load_cifar10
    from rtk.models import ModelRecipe, save_checkpoint
    from rtk.models.small import cnn_small

    monkeypatch.chdir(tmp_path)
    info = load_cifar10(cifar_root).info
    ckpt = save_checkpoint(tmp_path / "mine", cnn_small(info), ModelRecipe("cnn-small", {"width": 1, "fc": 100}, info))
    args = ["zoo", "compare", "--zoo", ZID, "--model", f"mine={ckpt}", "--data", f"root={cifar_root}",
            "--model-dir", str(model_dir), "--attack", "pgd:eps=2/255,steps=1", "--limit", "8", "--no-cka",
            "--device", "cpu", "--out", str(tmp_path / "cmp")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "mine" in res.output and "Ding2020MMA" in res.output and "reported_robust" in res.output
    assert (tmp_path / "cmp" / "tables" / "zoo" / "comparison.csv").exists()
    res = CliRunner().invoke(cli, ["zoo", "compare", "--data", "root=x"])
    assert res.exit_code != 0 and "at least one --zoo" in res.output
