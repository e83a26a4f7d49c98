"""Zoo models beside the user's models: the ``zoo`` stage and ``rtk zoo compare``.

Offline: the zoo weights are random (written in robustbench's layout), the data is a tiny
CIFAR-10-format folder made from scikit-learn's digits (upsampled to 3x32x32), read by
rtk's own ``cifar10`` dataset. The zoo entry is the smallest CIFAR-10 architecture of the
zoo, Hendrycks2020AugMix_WRN (a WRN-40-2 of 2.2M parameters), to keep the tests quick.
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

ZID = "cifar10/corruptions/Hendrycks2020AugMix_WRN"


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
                   "aug": {"arch": f"robustbench:{ZID}", "model_dir": str(zoo_dir)}},
        "stages": [{"kind": "train", "model": "mine", "epochs": 1, "lr": 0.05, "batch_size": 64},
                   {"kind": "zoo", "id": "zoo", "models": ["mine", "aug"],
                    "attacks": [{"name": "pgd", "eps": "2/255", "steps": 2}], "limit": 16, **stage}],
    }


def test_zoo_stage_puts_zoo_and_user_models_in_one_table(cifar_root, model_dir, registry, tmp_path):
    exp = _exp(cifar_root, model_dir, cka={"limit": 32, "batch_size": 16, "max_layers": 4})
    result = rtk.run(exp, registry=registry, out=tmp_path / "run")
    wide = result.table("zoo/comparison").set_index("model")
    assert list(wide.index) == ["mine", "aug"] and list(wide["source"]) == ["rtk", "zoo"]
    assert set(wide["n"]) == {16}
    assert (wide["worst_case"] <= wide["clean"]).all()
    # the trained small CNN beats the zoo architecture with random weights on clean data
    assert wide.loc["mine", "clean"] > wide.loc["aug", "clean"] + 0.2
    assert wide.loc["aug", "zoo_id"] == ZID and np.isnan(wide.loc["mine", "reported_clean"])
    assert 0 < wide.loc["aug", "reported_robust"] < wide.loc["aug", "reported_clean"] < 1
    long = result.table("zoo/accuracy")
    assert set(long["attack"]) == {"clean", "pgd(eps=2/255, steps=2)", "worst_case"}
    # CKA: the zoo model against the user's model, one row per layer pair, one heatmap
    cka = result.table("zoo/cka")
    assert set(zip(cka["zoo_model"], cka["model"])) == {("aug", "mine")}
    assert len(cka) == 4 * 4 and cka["cka"].between(-1e-6, 1 + 1e-6).all()
    assert list(cka["zoo_layer"].unique())[-1] == "fc" and list(cka["layer"].unique())[-1] == "head"
    figures = result.stages["zoo"].figures
    assert set(figures) == {"cka-aug-vs-mine"} and figures["cka-aug-vs-mine"].exists()
    report = (result.path / "report.md").read_text()
    assert "Linear CKA" in report and "cka-aug-vs-mine" in report


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


def test_layer_selection_and_cka_of_a_model_with_itself(model_dir, cifar_root):
    import pandas as pd

    from rtk.data.cifar import load_cifar10
    from rtk.models.small import cnn_large
    from rtk.zoo import build_architecture
    from rtk.zoo.compare import cka_summary, layer_cka, select_layers

    zoo = build_architecture(ZID)
    names = select_layers(zoo, max_layers=5)
    assert len(names) == 5 and names[0] == "conv1" and names[-1] == "fc"
    assert select_layers(zoo, ["block1.*.conv*"], max_layers=None) == [
        n for n, _ in zoo.named_modules() if n.startswith("block1.") and n.rsplit(".", 1)[-1].startswith("conv")]
    data = load_cifar10(cifar_root)
    torch.manual_seed(0)
    model = cnn_large(data.info)
    names = select_layers(model, max_layers=5)
    split = rtk.data.subset(data.test, 24, 0)
    mat = layer_cka(model, model, split, layers_a=names, layers_b=names, batch_size=8)
    assert mat.shape == (5, 5)
    assert torch.allclose(torch.diagonal(mat), torch.ones(5, dtype=mat.dtype), atol=1e-6)
    assert torch.allclose(mat, mat.T, atol=1e-6)
    rows = [{"zoo_model": "a", "model": "b", "zoo_layer": names[i], "layer": names[j], "zoo_depth": i / 4,
             "depth": j / 4, "cka": float(mat[i, j])} for i in range(5) for j in range(5)]
    s = cka_summary(pd.DataFrame(rows)).iloc[0]
    assert s["layers"] == "5x5" and abs(s["early"] - 1) < 1e-6 and abs(s["late"] - 1) < 1e-6 and s["mean"] < 1


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
    assert "mine" in res.output and "Hendrycks2020AugMix_WRN" in res.output and "reported_robust" in res.output
    assert (tmp_path / "cmp" / "tables" / "zoo" / "comparison.csv").exists()
    res = CliRunner().invoke(cli, ["zoo", "compare", "--data", "root=x"])
    assert res.exit_code != 0 and "at least one --zoo" in res.output
