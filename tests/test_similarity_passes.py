"""Minibatch CKA averaged over several passes, each a seeded shuffle of the examples into
minibatches (paper 1's code, ``--dataset_passes 3``): one pass is today's value; several passes
pool the HSIC estimates of every minibatch of every pass."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import rtk
from rtk.similarity import MinibatchCKA, MinibatchCKAMetric, SimilarityJob, run_similarity
from rtk.similarity import features as F
from rtk.similarity.stage import pass_orders

LIMIT, BATCH, SEED = 120, 32, 3  # 120 = 3 x 32 + 24: the last, smaller minibatch counts too


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(1, 4, 3, padding=1)),
                ("relu", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(4 * 64, 10)),
            ]
        )
    ).eval()


@pytest.fixture(scope="module")
def nets():
    return {"a": _net(0), "b": _net(1)}


def _run(nets, digits, passes, metric=None):
    job = SimilarityJob(
        metric=metric or MinibatchCKAMetric(BATCH),
        metric_name="minibatch-cka",
        models=["a"],
        pairs=[("a", "b")],
        analyses=["heatmap", "block-structure", "diagonal"],
        limit=LIMIT,
        passes=passes,
    )
    return run_similarity(
        job,
        load_model=nets.__getitem__,
        layers_for=lambda ref: None,
        attack_for=lambda ref, model: None,
        data=digits,
        seed=SEED,
    )


def _features(nets, digits):
    (fa, fb), y = F.collect_features(
        [F.ModelInput("a", nets["a"]), F.ModelInput("b", nets["b"])], digits.test, limit=LIMIT, seed=SEED
    )
    return fa, fb, y


def _matrix(out, key):
    return torch.as_tensor(out.heatmaps[key].values)


def _accumulate(fa, fb, orders):
    """One accumulator fed the minibatches of every order in turn."""
    acc = MinibatchCKA()
    layers = list(fa)
    for order in orders:
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            acc.update([fa[k][idx] for k in layers], [fb[k][idx] for k in layers])
    return acc


def test_one_pass_is_the_minibatch_cka_of_the_examples_in_order(nets, digits):
    out = _run(nets, digits, 1)
    fa, fb, _ = _features(nets, digits)
    layers = list(fa)
    today = MinibatchCKAMetric(BATCH)
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers):
            assert float(_matrix(out, "a vs b")[i, j]) == pytest.approx(float(today(fa[la], fb[lb])), abs=1e-9)
    assert "shuffled passes" not in out.summary


def test_three_passes_pool_three_seeded_shuffles(nets, digits):
    out3 = _run(nets, digits, 3)
    fa, fb, _ = _features(nets, digits)
    orders = pass_orders(LIMIT, 3, SEED)
    assert len({tuple(o.tolist()) for o in orders}) == 3  # three different shuffles of the same examples
    assert all(torch.equal(o.sort().values, torch.arange(LIMIT)) for o in orders)
    pooled = _accumulate(fa, fb, orders)
    assert torch.allclose(_matrix(out3, "a vs b"), pooled.compute(), atol=1e-9, rtol=0)
    # pooling the batches is averaging the three single passes' mean HSIC (each has 4 minibatches)
    singles = [_accumulate(fa, fb, [o]) for o in orders]
    means = torch.stack([s.state_dict()["sum"] / s.batches for s in singles]).mean(0)
    assert pooled.batches == 12 and torch.allclose(pooled.state_dict()["sum"] / pooled.batches, means, atol=1e-12)
    # so the reported CKA is, up to the ratio of means, the mean of the three passes' CKA
    per_pass = torch.stack([s.compute() for s in singles])
    assert torch.allclose(_matrix(out3, "a vs b"), per_pass.mean(0), atol=0.02)
    assert (per_pass.std(0) > 1e-6).any()  # the shuffles really change the estimate ...
    assert not torch.allclose(_matrix(out3, "a vs b"), _matrix(_run(nets, digits, 1), "a vs b"), atol=1e-6)
    assert torch.allclose(_matrix(out3, "a vs b"), _matrix(_run(nets, digits, 3), "a vs b"), atol=0)  # ... seeded
    assert torch.allclose(_matrix(out3, "a"), torch.as_tensor(_accumulate(fa, fa, orders).compute()), atol=1e-9)
    assert "3 shuffled passes" in out3.summary


def test_passes_need_a_minibatch_metric(nets, digits):
    with pytest.raises(rtk.ConfigError, match="passes = 3: several passes apply only to a minibatch metric"):
        _run(nets, digits, 3, metric=rtk.similarity.LinearCKA())


EXPERIMENT = {
    "name": "passes-test",
    "seed": 0,
    "dataset": {"name": "digits", "limit_train": 200, "limit_test": 100},
    "models": {"a": {"arch": "mlp", "hidden": [16]}, "b": {"arch": "mlp", "hidden": [16]}},
    "stages": [
        {"kind": "train", "model": "a", "epochs": 1, "eval_size": 0},
        {"kind": "train", "model": "b", "epochs": 1, "eval_size": 0},
    ],
}


def _with(stage):
    exp = copy.deepcopy(EXPERIMENT)
    exp["stages"] = EXPERIMENT["stages"] + [stage]
    return exp


def test_the_stage_option_is_checked_and_runs(tmp_path):
    stage = {"kind": "similarity", "id": "sim", "pairs": [["a", "b"]], "limit": 100, "analyses": ["diagonal"]}
    with pytest.raises(rtk.ConfigError, match=r"stages\[2\]\.passes: 3 passes apply only to a minibatch metric"):
        rtk.plan(rtk.experiment_from_dict(_with({**stage, "passes": 3})))
    with pytest.raises(rtk.ConfigError, match=r"stages\[2\]\.passes: .*greater than or equal to 1"):
        rtk.plan(rtk.experiment_from_dict(_with({**stage, "passes": 0})))
    mb = {**stage, "metric": {"name": "minibatch-cka", "batch_size": 32}}
    res = rtk.run(_with({**mb, "passes": 2}), out=tmp_path / "r")
    d = res.stages["sim"].tables["diagonal"]
    assert d.layer.tolist() == ["fc1", "relu1", "head"] and d.value.between(-1, 1).all()
    assert "2 shuffled passes" in res.stages["sim"].summary
