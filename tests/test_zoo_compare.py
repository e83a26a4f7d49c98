"""Zoo models beside the user's models: the ``zoo`` stage and ``rtk zoo compare``.

Offline: the zoo weights are random (written in robustbench's layout), the data is a tiny
CIFAR-10-format folder made from scikit-learn's digits (upsampled to 3x32x32), read by
rtk's own ``cifar10`` dataset. The zoo entry is the smallest CIFAR-10 architecture of the
zoo, Hendrycks2020AugMix_WRN (a WRN-40-2 of 2.2M parameters), to keep the tests quick.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rtk
from rtk.zoo import build_architecture, robustbench_available, save_zoo_checkpoint

pytestmark = pytest.mark.skipif(
    not robustbench_available() and not os.environ.get("CI"),
    reason="robustbench (pip install 'rtk[zoo]') is not installed here",
)

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


@pytest.fixture(scope="module")
def mine_ckpt(cifar_root, tmp_path_factory):
    """The user's model: a small CNN trained briefly on the digits folder, as an rtk checkpoint."""
    from rtk.data import batches
    from rtk.data.cifar import load_cifar10
    from rtk.models import ModelRecipe, save_checkpoint
    from rtk.models.small import cnn_small

    data = load_cifar10(cifar_root)
    torch.manual_seed(0)
    model = cnn_small(data.info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for x, y in batches(data.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0)):  # one epoch
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    recipe = ModelRecipe("cnn-small", {"width": 1, "fc": 100}, data.info)
    return save_checkpoint(tmp_path_factory.mktemp("mine") / "mine", model.eval(), recipe)


#: small sanity-check budgets for tiny models on 16 examples
QUICK_CHECKS = {"examples": 8, "min_examples": 4, "unbounded_steps": 5, "noise_draws": 2, "square_queries": 20}


def _exp(cifar_root, zoo_dir, mine, **stage):
    return {
        "name": "zoo-test",
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "cifar10", "root": str(cifar_root)},
        "models": {
            "mine": {"arch": "cnn-small", "checkpoint": str(mine)},
            "aug": {"arch": f"robustbench:{ZID}", "model_dir": str(zoo_dir)},
        },
        "stages": [
            {
                "kind": "zoo",
                "id": "zoo",
                "models": ["mine", "aug"],
                "attacks": [{"name": "pgd", "eps": "2/255", "steps": 2}],
                "limit": 16,
                "check_settings": QUICK_CHECKS,
                **stage,
            }
        ],
    }


def test_zoo_stage_puts_zoo_and_user_models_in_one_table(cifar_root, model_dir, mine_ckpt, registry, tmp_path):
    exp = _exp(cifar_root, model_dir, mine_ckpt, cka={"limit": 32, "batch_size": 16, "max_layers": 4})
    result = rtk.run(exp, registry=registry, out=tmp_path / "run")
    wide = result.table("zoo/comparison").set_index("model")
    assert list(wide.index) == ["mine", "aug"] and list(wide["source"]) == ["rtk", "zoo"]
    assert set(wide["n"]) == {16}
    assert (wide["worst_case"] <= wide["clean"]).all()
    # the trained small CNN beats the zoo architecture with random weights on clean data
    assert wide.loc["mine", "clean"] > wide.loc["aug", "clean"] + 0.2
    assert wide.loc["aug", "zoo_id"] == ZID and np.isnan(wide.loc["mine", "reported_clean"])
    assert 0 < wide.loc["aug", "reported_robust"] < wide.loc["aug", "reported_clean"] < 1
    assert list(wide["threat"]) == ["Linf 2/255"] * 2 and "pgd(eps=2/255, steps=2)" in wide.columns
    long = result.table("zoo/accuracy")
    assert set(long["attack"]) == {"clean", "pgd(eps=2/255, steps=2)", "worst_case"}
    # the same sanity checks ran on both models
    checks = result.table("zoo/checks")
    per_model = checks.groupby("model")["check"].apply(set)
    assert per_model["mine"] == per_model["aug"] and {"perturbation_bounds", "robust_le_clean"} <= per_model["aug"]
    assert (wide["checks_passed"] + wide["checks_failed"] > 0).all()
    summary = result.stages["zoo"].summary
    assert "common-corruptions entry" in summary  # its reported robustness is not under the suite's threat
    # CKA: the zoo model against the user's model, one row per layer pair, one heatmap
    cka = result.table("zoo/cka")
    assert set(zip(cka["zoo_model"], cka["model"])) == {("aug", "mine")}
    assert len(cka) == 4 * 4 and cka["cka"].between(-1e-6, 1 + 1e-6).all()
    assert list(cka["zoo_layer"].unique())[-1] == "fc" and list(cka["layer"].unique())[-1] == "head"
    figures = result.stages["zoo"].figures
    assert set(figures) == {"cka-aug-vs-mine"} and figures["cka-aug-vs-mine"].exists()
    report = (result.path / "report.md").read_text()
    assert "Linear CKA" in report and "cka-aug-vs-mine" in report


def test_same_examples_and_attacks_for_every_contender(cifar_root, registry):
    from rtk.data.cifar import load_cifar10
    from rtk.evaluation import eval_indices, make_units
    from rtk.models.small import cnn_small
    from rtk.zoo.compare import Contender, compare_robustness

    data = load_cifar10(cifar_root)
    torch.manual_seed(1)
    model = cnn_small(data.info)
    pgd = registry.get("attack", "pgd")
    units = make_units([(pgd, pgd.options(eps=0.1, steps=2), "pgd")], eps=[0.05, 0.1])
    indices = eval_indices(len(data.test), 24, 0)
    cmp = compare_robustness(
        [Contender("a", model), Contender("twin", model)], data.test, units, indices=indices, checks=False
    )
    a, b = cmp.comparison.iloc[0], cmp.comparison.iloc[1]
    cols = ["clean", "pgd @ Linf 0.05", "pgd @ Linf 0.1", "worst_case @ Linf 0.05", "worst_case"]
    assert [a[c] for c in cols] == [b[c] for c in cols]
    assert a["threat"] == "Linf 0.1" and a["worst_case"] == a["worst_case @ Linf 0.1"] <= a["worst_case @ Linf 0.05"]
    assert list(cmp.comparison["n"]) == [24, 24] and cmp.checks is None
    assert set(cmp.accuracy["model"]) == {"a", "twin"}
    with pytest.raises(ValueError, match="unique"):
        compare_robustness([Contender("a", model)] * 2, data.test, units)


def test_layer_selection_and_cka_of_a_model_with_itself(model_dir, cifar_root):
    import pandas as pd

    from rtk.data.cifar import load_cifar10
    from rtk.models.small import cnn_large
    from rtk.zoo import build_architecture
    from rtk.zoo.compare import cka_summary, layer_cka, pick_layers

    zoo = build_architecture(ZID)
    names = pick_layers(zoo, max_layers=5)
    assert len(names) == 5 and names[0] == "conv1" and names[-1] == "fc"
    assert pick_layers(zoo, ["block1.*.conv*"]) == [
        n for n, _ in zoo.named_modules() if n.startswith("block1.") and n.rsplit(".", 1)[-1].startswith("conv")
    ]
    data = load_cifar10(cifar_root)
    torch.manual_seed(0)
    model = cnn_large(data.info)
    names = pick_layers(model, max_layers=5)
    split = rtk.data.subset(data.test, 26, 0)  # the last batch of 2 is too small for the unbiased estimator
    h = layer_cka(model, model, split, layers_a=names, layers_b=names, batch_size=8)
    mat = torch.from_numpy(h.values)
    assert list(h.rows) == names and list(h.cols) == names and mat.shape == (5, 5)
    assert torch.allclose(torch.diagonal(mat), torch.ones(5, dtype=mat.dtype), atol=1e-6)
    assert torch.allclose(mat, mat.T, atol=1e-6)
    rows = [
        {
            "zoo_model": "a",
            "model": "b",
            "zoo_layer": names[i],
            "layer": names[j],
            "zoo_depth": i / 4,
            "depth": j / 4,
            "cka": float(mat[i, j]),
        }
        for i in range(5)
        for j in range(5)
    ]
    s = cka_summary(pd.DataFrame(rows)).iloc[0]
    assert s["layers"] == "5x5" and abs(s["early"] - 1) < 1e-6 and abs(s["late"] - 1) < 1e-6 and s["mean"] < 1


def test_zoo_stage_checks_before_work(registry, model_dir):
    exp = rtk.experiment_from_dict(
        {
            "dataset": "digits",
            "models": {"m": {"arch": "mlp"}},
            "stages": [
                {"kind": "zoo", "models": ["m", "nope"], "zoo": ["cifar10/Linf/Ding2020MAM", "Ding2020MMA"]},
                {"kind": "zoo"},
            ],
        }
    )
    with pytest.raises(rtk.ConfigError) as exc:
        rtk.plan(exp, registry)
    msg = str(exc.value)
    assert "stages[0].models[1]: unknown model 'nope'" in msg
    assert "stages[0].zoo[0]" in msg and "did you mean 'Ding2020MMA'" in msg
    assert "stages[0].zoo[1]" in msg and "<dataset>/<threat>/<name>" in msg
    assert "stages[1]: nothing to compare" in msg


def test_missing_zoo_weights_are_found_before_any_work(registry, tmp_path):
    empty = tmp_path / "empty"
    exp = rtk.experiment_from_dict(
        {
            "dataset": "digits",
            "models": {"z": {"arch": f"robustbench:{ZID}", "model_dir": str(empty)}},
            "stages": [
                {
                    "kind": "zoo",
                    "models": ["z"],
                    "zoo": ["cifar10/Linf/Addepalli2022Efficient_RN18"],
                    "model_dir": str(empty),
                }
            ],
        }
    )
    with pytest.raises(rtk.ConfigError) as exc:
        rtk.plan(exp, registry)
    msg = str(exc.value)
    assert "stages[0].zoo[0]: weights of the zoo model cifar10/Linf/Addepalli2022Efficient_RN18 not found" in msg
    assert f"models.z: weights of the zoo model {ZID} not found: expected {(empty / ZID).resolve()}.pt" in msg
    assert not (tmp_path / "runs").exists()


def test_zoo_model_on_the_wrong_dataset_is_named(registry, model_dir, tmp_path):
    exp = {
        "dataset": "digits",
        "models": {"m": {"arch": "mlp"}},
        "stages": [{"kind": "zoo", "models": ["m"], "zoo": [ZID], "model_dir": str(model_dir), "limit": 4}],
    }
    with pytest.raises(rtk.StageError) as exc:
        rtk.run(exp, registry=registry, out=tmp_path / "run")
    assert "3 channels (the data has 1)" in str(exc.value) and "cifar10" in str(exc.value)


def test_cli_compare(cifar_root, model_dir, mine_ckpt, tmp_path, monkeypatch):
    from rtk.cli.main import cli

    monkeypatch.chdir(tmp_path)
    args = [
        "zoo",
        "compare",
        "--zoo",
        ZID,
        "--model",
        f"mine={mine_ckpt}",
        "--data",
        f"root={cifar_root}",
        "--model-dir",
        str(model_dir),
        "--attack",
        "pgd:eps=2/255,steps=1",
        "--limit",
        "8",
        "--no-cka",
        "--no-checks",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "cmp"),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "mine" in res.output and "Hendrycks2020AugMix_WRN" in res.output and "reported_robust" in res.output
    assert (tmp_path / "cmp" / "tables" / "zoo" / "comparison.csv").exists()
    res = CliRunner().invoke(cli, ["zoo", "compare", "--data", "root=x"])
    assert res.exit_code != 0 and "at least one --zoo" in res.output
