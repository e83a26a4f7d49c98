"""The metric protocol: a contract test over every registered similarity metric, the fast
paths against plain per-pair calls, the analyses' definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtk
from rtk.similarity import analyses as A
from rtk.similarity import similarity_matrix
from rtk.similarity.kernels import SimilarityError


def _layers(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    return [
        torch.relu(z @ torch.randn(8, 12, generator=g)),
        torch.tanh(z @ torch.randn(8, 10, generator=g)),
        z[:, :5] + 0.5 * torch.randn(n, 5, generator=g),
    ]


#: every similarity metric registered by the plugins loaded here (built-ins and any installed plugin)
REGISTERED = rtk.Registry.from_plugin_manager(rtk.plugin_manager()).names("similarity")


def test_every_builtin_metric_is_registered():
    assert {"linear-cka", "rbf-cka", "minibatch-cka", "svcca", "pwcca", "procrustes"} <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_metric_contract(name):
    """Every registered metric: builds from default options, returns a finite float, gives
    the identical-representation value on (x, x), takes half precision, and its heatmap
    (whatever fast path it has) equals per-pair calls; bad input is an RtkError."""
    registry = rtk.Registry.from_plugin_manager(rtk.plugin_manager())
    spec = registry.get("similarity", name)
    metric = spec.build(spec.options())
    xs = _layers()
    higher = getattr(metric, "higher_is_similar", True)
    v = metric(xs[0], xs[0])
    assert isinstance(v, float)
    assert v == pytest.approx(1.0 if higher else 0.0, abs=1e-5)
    other = metric(xs[0], xs[1])
    assert np.isfinite(other)
    assert (other < v) if higher else (other > v)
    half = metric(xs[0].half(), xs[1].bfloat16())
    assert half == pytest.approx(other, abs=0.02)
    mat = similarity_matrix(metric, xs, names_a=["a", "b", "c"])
    per_pair = torch.tensor([[metric(x, y) for y in xs] for x in xs], dtype=torch.float64)
    assert mat.shape == (3, 3)
    assert torch.allclose(mat, per_pair, atol=1e-6)
    between = similarity_matrix(metric, xs[:2], xs, names_a=["a", "b"], names_b=["a", "b", "c"])
    assert torch.allclose(between, per_pair[:2], atol=1e-6)
    bad = xs[1].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(rtk.RtkError):
        metric(xs[0], bad)
    with pytest.raises(rtk.RtkError, match="'b'"):
        similarity_matrix(metric, [xs[0], bad], names_a=["a", "b"])


def test_options_are_validated(registry):
    with pytest.raises(rtk.ConfigError, match="sigma"):
        rtk.validate_options(registry.get("similarity", "rbf-cka").options, {"sigma": 0}, "metric")
    with pytest.raises(rtk.ConfigError, match="unknown key"):
        rtk.validate_options(registry.get("similarity", "linear-cka").options, {"debaised": True}, "metric")


def test_plain_callable_is_a_complete_metric():
    calls = []

    def cosine_of_means(x, y):
        calls.append(1)
        a, b = x.mean(0), y.mean(0)
        k = min(len(a), len(b))
        return float(torch.nn.functional.cosine_similarity(a[:k], b[:k], dim=0))

    xs = _layers()
    mat = similarity_matrix(cosine_of_means, xs)
    assert mat.shape == (3, 3) and len(calls) == 9
    with pytest.raises(SimilarityError, match="returned nan"):
        similarity_matrix(lambda x, y: float("nan"), xs, names_a=["p", "q", "r"])


# ----------------------------------------------------------------------------- analyses
def test_block_structure_finds_planted_blocks():
    s = np.full((9, 9), 0.2)
    s[0:4, 0:4] = 0.95
    s[5:9, 5:9] = 0.9
    np.fill_diagonal(s, 1.0)
    names = [f"l{i}" for i in range(9)]
    res = A.block_structure(s, names, threshold=0.8, min_size=3)
    assert [(b.start, b.stop) for b in res.blocks] == [(0, 4), (5, 9)]
    expected = 12 / 72 * (0.95 - 0.2) + 12 / 72 * (0.9 - 0.2)
    assert res.score == pytest.approx(expected)
    assert res.blocks[0].layers == ("l0", "l1", "l2", "l3")
    assert A.block_structure(s, names).to_dict() == res.to_dict()  # deterministic
    uniform = np.full((9, 9), 0.95)
    assert A.block_structure(uniform).score == 0.0  # one block covering everything stands out from nothing
    assert A.block_structure(np.full((9, 9), 0.3)).blocks == ()


def test_class_similarity_definition():
    # two classes on opposite sides, one class spread on the circle
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    c = A.class_similarity(x, y, 3)
    xc = x.double() - x.double().mean(0)
    u = xc / xc.norm(dim=1, keepdim=True)
    assert c[0, 0] == pytest.approx(float(u[0] @ u[1]))
    assert c[0, 1] == pytest.approx(float((u[:2] @ u[2:4].T).mean()))
    assert c[2, 2] == pytest.approx(-1.0)


def test_specialization_rises_when_classes_separate():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    means = torch.randn(4, 6, generator=g) * 3
    feats = {"noise": torch.randn(200, 6, generator=g), "separated": means[y] + 0.3 * torch.randn(200, 6, generator=g)}
    from rtk.similarity import LinearCKA

    df, pairs = A.specialization(LinearCKA(), feats, y, model="m", num_classes=4)
    low, high = df.set_index("layer").loc["noise"], df.set_index("layer").loc["separated"]
    assert abs(low["specialization"]) < 0.1 and high["specialization"] > 0.5
    assert high["class_alignment"] > low["class_alignment"]
    assert len(pairs) == 2 * 16


def test_diagonal_pairs_layers_by_name_or_position():
    assert A.common_layers(["a", "b"], ["b", "a", "c"]) == [("a", "a"), ("b", "b")]
    assert A.common_layers(["a", "b"], ["x", "y"]) == [("a", "x"), ("b", "y")]
    with pytest.raises(SimilarityError, match="cannot pair"):
        A.common_layers(["a", "b"], ["x"])


def test_figures_are_written(tmp_path):
    xs = _layers()
    from rtk.similarity import LinearCKA

    h = A.heatmap(LinearCKA(), {"conv": xs[0], "relu": xs[1], "fc": xs[2]}, model_a="m")
    p = A.plot_heatmap(h, tmp_path / "h.png")
    assert p.stat().st_size > 1000
    df = h.to_frame()
    assert len(df) == 9 and set(df["layer_a"]) == {"conv", "relu", "fc"}
