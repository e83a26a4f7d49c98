"""The designed studies (issue 18) and the paper-scale GPU files validate with ``rtk run
--dry-run``: every point of every sweep resolves against the registry before any work. CIFAR-10
is not on this machine; its files are written in the same format by the test (as in
tests/test_data_loaders.py), so only their presence is faked."""

from __future__ import annotations

import pytest
import tomllib
from click.testing import CliRunner
from experimenthelpers import EXPERIMENTS
from test_data_loaders import make_cifar10

import rtk
from rtk.cli.main import cli

DESIGN = sorted(p.name for p in EXPERIMENTS.glob("paper*-design-*.toml"))
GPU = ["paper1-cifar10-wrn.toml", "paper2-cifar10-hydra.toml"]


@pytest.fixture(scope="module")
def cifar_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("rtk-data")
    make_cifar10(home / "cifar10")
    return home


def _dry_run(name: str, env: dict[str, str] | None = None) -> str:
    pm = rtk.plugin_manager(entry_points=False)
    res = CliRunner().invoke(cli, ["run", str(EXPERIMENTS / name), "--dry-run"], obj=pm, env=env)
    assert res.exit_code == 0, f"{name}: {res.output}"
    return res.output


def test_the_design_files_are_there():
    assert DESIGN == [
        "paper1-design-blocks.toml",
        "paper1-design-depth.toml",
        "paper1-design-fraction.toml",
        "paper1-design-overfitting-fmnist.toml",
        "paper1-design-overfitting-hard.toml",
        "paper1-design-overfitting-small.toml",
        "paper1-design-overfitting.toml",
        "paper1-design-width.toml",
        "paper2-design-high-compression.toml",
        "paper2-design-retention.toml",
    ]


@pytest.mark.parametrize("name", DESIGN)
def test_design_studies_plan_with_three_seeds(name):
    table = tomllib.loads((EXPERIMENTS / name).read_text())
    # design 4 of finding 3 fixed six seeds before its runs (design 3's power estimate); the others three
    seeds = [0, 1, 2, 3, 4, 5] if name == "paper1-design-overfitting-small.toml" else [0, 1, 2]
    assert table["sweep"]["seed"] == seeds, "every configuration of the design has its fixed seeds, at least three"
    out = _dry_run(name)
    points = {"depth": 9, "width": 9, "fraction": 9}.get(name.split("-")[2].removesuffix(".toml"), len(seeds))
    assert f"all {points} points are valid" in out


@pytest.mark.parametrize("name,key,ladder", [("depth", "blocks", [1, 2, 4]), ("width", "width", [8, 16, 32])])
def test_capacity_ladders_and_paper1_protocol(name, key, ladder):
    t = tomllib.loads((EXPERIMENTS / f"paper1-design-{name}.toml").read_text())
    (zipped,) = t["sweep"]["zip"]
    for m in ("std", "pgd", "trades"):  # the three models of a point always share their shape
        assert zipped[f"models.{m}.{key}"] == ladder
        assert (t["models"][m]["blocks"], t["models"][m]["width"]) == (2, 16)  # the point both ladders share
    stages = {s["id"]: s for s in t["stages"]}
    assert stages["train-pgd"]["trainer"]["steps"] == 7 and stages["train-trades"]["trainer"]["steps"] == 7
    assert stages["evaluate"]["attacks"][0] == {"name": "pgd", "eps": 0.1, "steps": 20}
    assert {a["name"] for a in stages["evaluate"]["attacks"]} == {"pgd", "jpeg", "gabor", "snow"}
    assert "cross-class" in stages["similarity-benign"]["analyses"]


def test_overfitting_design_2_changes_only_eps_and_data():
    """Design 2 of finding 3 is design 1 with a harder task: eps 0.2 (everywhere) and a quarter of the data."""
    first = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting.toml").read_text())
    second = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting-hard.toml").read_text())

    def harder(value, key=""):
        if isinstance(value, dict):
            return {k: harder(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [harder(v, key) for v in value]
        if key in ("eps", "eval_eps") and value == 0.1:
            return 0.2
        if key == "train_fraction":
            return 0.25
        return value

    expected = harder(first)
    for key in ("name", "description"):
        expected.pop(key), second.pop(key)
    assert second == expected


def test_overfitting_design_3_keeps_the_recipe_on_fashion_mnist():
    """Design 3 of finding 3: design 1's training recipe (Rice et al.'s 200 epochs and decays, PGD-7
    at eps 0.1, checkpoints every 25 epochs) on 2,000 Fashion-MNIST images at 14x14."""
    first = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting.toml").read_text())
    third = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting-fmnist.toml").read_text())
    assert third["dataset"]["name"] == "fashion-mnist" and third["dataset"]["resolution"] == 14
    assert round(6000 * third["dataset"]["train_fraction"]) == 200  # 200 of each class's 6,000
    assert third["models"] == first["models"]
    recipe = ("trainer", "epochs", "lr", "batch_size", "schedule", "milestones", "weight_decay", "checkpoint_every")
    train1, train3 = first["stages"][0], third["stages"][0]
    assert {k: train3[k] for k in recipe} == {k: train1[k] for k in recipe}
    assert [s["id"] for s in third["stages"]] == [s["id"] for s in first["stages"]]
    assert third["stages"][1]["attacks"] == first["stages"][1]["attacks"]  # PGD-20 at eps 0.1


def test_overfitting_design_4_is_design_3_on_half_the_images():
    """Design 4 of finding 3: design 3 unchanged except the training set (1/60 of every class, 1,000
    images, instead of 1/30) and its six seeds."""
    third = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting-fmnist.toml").read_text())
    fourth = tomllib.loads((EXPERIMENTS / "paper1-design-overfitting-small.toml").read_text())
    assert round(6000 * fourth["dataset"]["train_fraction"]) == 100  # 100 of each class's 6,000
    assert fourth["sweep"]["seed"] == [0, 1, 2, 3, 4, 5]
    for t in (third, fourth):
        t.pop("name"), t.pop("description"), t["dataset"].pop("train_fraction"), t.pop("sweep")
    assert fourth == third


def test_block_design_uses_a_pilot_shape_for_both_models():
    """The block design's standard and PGD-AT models share one shape, and that shape is one the
    standard-only pilot trained (the pilot chose it; no robust model was part of the choice)."""
    pilot = tomllib.loads((EXPERIMENTS / "paper1-block-pilot.toml").read_text())
    design = tomllib.loads((EXPERIMENTS / "paper1-design-blocks.toml").read_text())
    (zipped,) = pilot["sweep"]["zip"]
    shapes = set(zip(zipped["models.std.blocks"], zipped["models.std.width"], strict=True))
    assert set(pilot["models"]) == {"std"} and all(s.get("trainer", "standard") == "standard" for s in pilot["stages"])
    std, pgd = design["models"]["std"], design["models"]["pgd"]
    assert (std["blocks"], std["width"]) == (pgd["blocks"], pgd["width"]) and (std["blocks"], std["width"]) in shapes
    assert design["dataset"] == pilot["dataset"] | {"limit_test": 500}
    assert "all 3 points are valid" in _dry_run("paper1-block-pilot.toml")


def test_fraction_points_keep_the_optimizer_steps():
    t = tomllib.loads((EXPERIMENTS / "paper1-design-fraction.toml").read_text())
    (zipped,) = t["sweep"]["zip"]
    for key, full in (("train-std", 20), ("train-pgd", 30), ("train-trades", 30)):
        for frac, epochs in zip(zipped["dataset.train_fraction"], zipped[f"stages.{key}.epochs"], strict=True):
            assert frac * epochs == full


@pytest.mark.parametrize("name", GPU)
def test_paper_scale_files_plan(name, cifar_home):
    out = _dry_run(name, env={"RTK_DATA": str(cifar_home)})
    assert "valid" in out
    t = tomllib.loads((EXPERIMENTS / name).read_text())
    if name.startswith("paper1"):
        (zipped,) = t["sweep"]["zip"]
        assert zipped["models.std.width"] == list(range(1, 11))
        trainers = {s["id"]: s.get("trainer") for s in t["stages"] if s["kind"] == "train"}
        assert trainers["train-linf"] == {
            "name": "pgd-at",
            "norm": "Linf",
            "eps": "8/255",
            "alpha": "2/255",
            "steps": 10,
        }
        assert trainers["train-l2"]["eps"] == 1.0 and trainers["train-l2"]["steps"] == 10
        sims = [s for s in t["stages"] if s["kind"] == "similarity"]
        assert all(s["metric"] == {"name": "minibatch-cka", "batch_size": 1024} for s in sims)
        assert all(s["passes"] == 3 for s in sims)  # paper 1's --dataset_passes 3
        assert all(s["augment"] == ["crop", "flip"] for s in t["stages"] if s["kind"] == "train")
    else:
        prunes = [s for s in t["stages"] if s["kind"] == "prune"]
        assert {t["models"][s["model"]]["arch"] for s in prunes} == {"vgg16", "wrn"}
        for s in prunes:
            assert s["compression"] == [10, 20, 100] and s["trainer"]["name"] == "trades"
            assert set(s["pruners"]) == {"lwm", "hydra"}
            assert s["loop"]["augment"] == ["crop", "flip"]  # HYDRA's crops and flips, every phase


def test_missing_cifar_is_named_by_the_dry_run(tmp_path):
    pm = rtk.plugin_manager(entry_points=False)
    res = CliRunner().invoke(
        cli, ["run", str(EXPERIMENTS / GPU[1]), "--dry-run"], obj=pm, env={"RTK_DATA": str(tmp_path)}
    )
    assert res.exit_code != 0 and "cifar10" in res.output and "files not found" in res.output
