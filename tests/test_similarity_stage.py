"""Features from models (hooks, layer patterns, DDP, adversarial inputs) and the
``similarity`` stage / ``rtk similarity`` on real data (digits) with tiny models."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import rtk
from rtk.similarity import features as F
from rtk.similarity import linear_cka


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 4, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(4)),
                ("relu1", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(4 * 16, 10)),
            ]
        )
    ).eval()


class SharedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(x))))


def test_default_layers_and_patterns():
    m = _cnn()
    assert [n for n, _ in F.select_layers(m)] == ["conv1", "bn1", "relu1", "pool", "fc"]
    assert [n for n, _ in F.select_layers(m, ["*1"])] == ["conv1", "bn1", "relu1"]
    assert [n for n, _ in F.select_layers(m, ["re:(conv|fc).*"])] == ["conv1", "fc"]
    with pytest.raises(rtk.ConfigError, match="module names: conv1, bn1"):
        F.select_layers(m, ["nothing*"])


def test_hooks_record_before_inplace_ops_and_count_shared_modules():
    m = _cnn()
    x = torch.rand(6, 1, 8, 8)
    with F.FeatureHooks(F.select_layers(m)) as hooks:
        with torch.no_grad():
            m(x)
        got = hooks.take()
    with torch.no_grad():
        bn = m.bn1(m.conv1(x))
    assert torch.allclose(got["bn1"], bn.reshape(6, -1))  # not overwritten by the in-place ReLU
    assert (got["bn1"] < 0).any()
    s = SharedRelu()
    with F.FeatureHooks(F.select_layers(s, ["relu"]), pooling="flatten") as hooks:
        s(torch.randn(3, 5))
        assert list(hooks.take()) == ["relu", "relu#2"]
    with F.FeatureHooks(F.select_layers(m, ["conv1"]), pooling="avg") as hooks:
        m(x)
        assert hooks.take()["conv1"].shape == (6, 4)
    with F.FeatureHooks(F.select_layers(m, ["conv1"]), pooling="avg2") as hooks:
        m(x)
        assert hooks.take()["conv1"].shape == (6, 16)


def test_ddp_wrapped_model_gives_the_same_layers_and_features(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = _cnn()
        ddp = nn.parallel.DistributedDataParallel(m)
        assert [n for n, _ in F.select_layers(ddp)] == [n for n, _ in F.select_layers(m)]
        from rtk.data.core import TensorSplit

        split = TensorSplit(torch.rand(20, 1, 8, 8), torch.arange(20) % 10)
        (a,), _ = F.collect_features([F.ModelInput("m", m)], split, batch_size=8)
        (b,), _ = F.collect_features([F.ModelInput("m", ddp)], split, batch_size=8)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        dist.destroy_process_group()


def test_adversarial_inputs_per_model_and_attack_passes_are_not_recorded():
    from rtk.data.core import TensorSplit

    m = _cnn()
    split = TensorSplit(torch.rand(10, 1, 8, 8), torch.arange(10))
    seen = []

    def attack(x, y):
        out = m(x)  # an attack's own forward: must not be recorded
        seen.append(out.shape[0])
        return (x + 0.1).clamp(0, 1)

    feats, labels = F.collect_features(
        [F.ModelInput("clean", m), F.ModelInput("adv", m, attack=attack)], split, batch_size=4
    )
    assert seen == [4, 4, 2] and torch.equal(labels, torch.arange(10))
    with torch.no_grad():
        fc_adv = m((split.x + 0.1).clamp(0, 1))
        fc_clean = m(split.x)
    assert torch.allclose(feats[1]["fc"], fc_adv) and torch.allclose(feats[0]["fc"], fc_clean)
    assert feats[0]["conv1"].shape == (10, 4 * 64)


EXPERIMENT = {
    "name": "sim-test",
    "seed": 0,
    "dataset": {"name": "digits", "limit_train": 400, "limit_test": 120},
    "models": {"a": {"arch": "mlp", "hidden": [32, 16]}, "b": {"arch": "mlp", "hidden": [32, 16]}},
    "stages": [
        {"kind": "train", "model": "a", "epochs": 1, "eval_size": 0, "checkpoint_every": 1},
        {"kind": "train", "model": "b", "epochs": 1, "eval_size": 0},
    ],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    return rtk.run(EXPERIMENT, out=out)


def _with_stage(stage, out):
    import copy

    exp = copy.deepcopy(EXPERIMENT)
    exp["stages"] = EXPERIMENT["stages"] + [stage]
    return rtk.run(exp, out=out)


def test_similarity_stage_full_and_streamed(tmp_path):
    stages = [
        {
            "kind": "similarity",
            "id": "full",
            "models": ["a"],
            "pairs": [["a", "b"]],
            "checkpoints": ["a@epoch-1", "a@last"],
            "limit": 100,
        },
        {
            "kind": "similarity",
            "id": "mb",
            "models": ["a"],
            "pairs": [["a", "b"]],
            "metric": {"name": "minibatch-cka", "batch_size": 50},
            "analyses": ["heatmap", "diagonal", "block-structure", "cross-class"],
            "limit": 100,
            "adversarial": {"b": {"name": "pgd", "eps": "0.1", "steps": 2}},
        },
    ]
    import copy

    exp = copy.deepcopy(EXPERIMENT)
    exp["stages"] = EXPERIMENT["stages"] + stages
    res = rtk.run(exp, out=tmp_path / "r")
    full, mb = res.stages["full"], res.stages["mb"]
    assert {
        "heatmaps",
        "block_structure",
        "blocks",
        "diagonal",
        "overfitting",
        "specialization",
        "class_similarity",
    } <= set(full.tables)
    hm = full.tables["heatmaps"]
    within = hm[(hm.model_a == "a") & (hm.model_b == "a")]
    layers = ["fc1", "relu1", "fc2", "relu2", "head"]
    assert within.layer_a.unique().tolist() == layers
    assert within[within.layer_a == within.layer_b].value.round(6).eq(1.0).all()
    ov = full.tables["overfitting"]
    assert ov.value.round(6).eq(1.0).all()  # epoch-1 is the last epoch: the same weights
    assert set(full.figures) >= {"heatmap a", "heatmap a vs b", "diagonal", "overfitting", "specialization"}
    assert all(p.exists() and p.stat().st_size > 1000 for p in full.figures.values())
    assert "specialization" not in mb.tables and "cross_class" not in full.tables  # only where listed
    cc = mb.tables["cross_class"]
    assert cc.layer.tolist() == layers and cc.cross_class_similarity.between(-1, 1).all()
    assert len(mb.tables["cross_class_pairs"]) == len(layers) * 45 and "cross_class" in mb.figures
    d = mb.tables["diagonal"]
    assert len(d) == 5 and d.value.between(-1, 1).all()
    assert (mb.tables["heatmaps"].inputs_b.str.startswith("adversarial")).any()
    # the stage's numbers are the kernel applied to hooked features of the same examples
    from rtk.data.core import apply_limits

    spec = res.stages and rtk.default_registry().get("dataset", "digits")
    opts = rtk.validate_options(spec.options, {"limit_train": 400, "limit_test": 120}, "dataset")
    bundle = apply_limits(spec.load(opts), opts)
    ma = rtk.models.load_checkpoint(res.path / "checkpoints" / "a" / "last")[0]
    mb_ = rtk.models.load_checkpoint(res.path / "checkpoints" / "b" / "last")[0]
    (fa, fb), _ = F.collect_features([F.ModelInput("a", ma), F.ModelInput("b", mb_)], bundle.test, limit=100, seed=0)
    diag = full.tables["diagonal"].set_index("layer")["value"]
    for layer in ("fc1", "relu2", "head"):
        assert diag[layer] == pytest.approx(linear_cka(fa[layer], fb[layer]), abs=1e-6)


def test_stage_options_are_checked_before_work(tmp_path):
    bad = {"kind": "similarity", "pairs": [["a", "c"]], "checkpoints": ["a@last"], "pooling": "max"}
    import copy

    exp = copy.deepcopy(EXPERIMENT)
    exp["stages"] = [bad]
    with pytest.raises(rtk.ConfigError) as err:
        rtk.plan(rtk.experiment_from_dict(exp))
    msg = str(err.value)
    assert "stages[0].pooling" in msg and "stages[0].checkpoints" in msg
    exp["stages"] = [{"kind": "similarity", "models": ["a"], "metric": {"name": "linear-ckaa"}}]
    with pytest.raises(rtk.ConfigError, match="did you mean 'linear-cka'"):
        rtk.plan(rtk.experiment_from_dict(exp))
    exp["stages"] = [{"kind": "similarity", "models": ["a"], "metric": {"name": "rbf-cka", "sigma": -1}}]
    with pytest.raises(rtk.ConfigError, match="sigma"):
        rtk.plan(rtk.experiment_from_dict(exp))
    exp["stages"] = [{"kind": "similarity", "pairs": [["a", "c"]]}]
    with pytest.raises(rtk.ConfigError, match=r"pairs\[0\]\[1\]: unknown model 'c'"):
        rtk.plan(rtk.experiment_from_dict(exp))


def test_cli_compares_two_checkpoints(trained, tmp_path):
    from rtk.cli.main import cli

    run = trained.path
    res = CliRunner().invoke(
        cli,
        ["--quiet", "similarity", "--run", str(run), "a", "b", "--limit", "64", "--out", str(tmp_path / "cli")],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "== block_structure" in res.output and "== diagonal" in res.output
    assert (tmp_path / "cli" / "figures" / "similarity" / "heatmap_a-vs-b.png").exists()
    res = CliRunner().invoke(
        cli,
        [
            "similarity",
            str(run / "checkpoints" / "a" / "last"),
            "--metric",
            "svcca",
            "-o",
            "dims=3",
            "--layers",
            "fc*",
            "--limit",
            "64",
            "--out",
            str(tmp_path / "c2"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["similarity", "--run", str(run), "a@nope"])
    assert res.exit_code != 0 and "no checkpoint 'a@nope'" in res.output
