"""The unforeseen attacks (JPEG, Gabor, Snow; Kang et al. 2019): each stays in its own threat
model, lowers the accuracy of a small digits model, and is deterministic under its seed. The
common attack contract (bounds in [0, 1], RNG untouched, never more accurate than clean) runs
over them in tests/test_attacks.py."""

from __future__ import annotations

import math

import pytest
import torch
from evalhelpers import fit_full_batch
from torch import nn

import rtk
from rtk.evaluation import make_units
from rtk.evaluation import unforeseen as uf

_REG = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained for a few seconds on digits (about 98% test accuracy), 120 test examples."""
    from rtk.models.small import cnn_small

    torch.manual_seed(0)
    return fit_full_batch(cnn_small(digits.info, 1, 64), digits, steps=120, n_test=120)


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_registered_with_their_own_threat_model():
    for name in ("jpeg", "gabor", "snow"):
        spec = _REG.get("attack", name)
        assert spec.norm == "none", "an unforeseen attack must not join an Lp worst case"
    units = make_units(
        [(_REG.get("attack", "snow"), rtk.validate_options(_REG.get("attack", "snow").options, {}, "a"), "snow")]
    )
    assert units[0].eps is None and not units[0].budgeted


def test_jpeg_codec_is_exact_and_orthonormal():
    d = uf.dct_matrix(dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    for c, h, w in ((1, 8, 8), (3, 10, 13), (3, 32, 32)):
        x = torch.rand(2, c, h, w, generator=g)
        codec = uf.JPEGCodec(c, h, w, quality=75)
        q = codec.encode(x)
        assert q.shape == codec.coefficient_shape(2)
        assert torch.allclose(codec.decode(q), x, atol=1e-5)
    assert uf.quality_scale(50) == 1.0 and uf.quality_scale(25) == 2.0 and uf.quality_scale(75) == 0.5
    with pytest.raises(rtk.RtkError, match="quality"):
        uf.quality_scale(0)
    with pytest.raises(rtk.RtkError, match="1 \\(grayscale\\) or 3"):
        uf.JPEGCodec(2, 8, 8)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.5), ("L2", 3.0)])
def test_jpeg_stays_in_its_budget(trained, norm, eps):
    model, x, y = trained
    r = uf.jpeg_attack(model, x, y, eps=eps, norm=norm, steps=5, seed=3)
    nu = r.params.flatten(1)
    size = nu.abs().amax(1) if norm == "Linf" else nu.norm(dim=1)
    assert size.max() <= eps * (1 + 1e-5)
    codec = uf.JPEGCodec(1, 8, 8)
    rebuilt = codec.decode(codec.encode(x) + r.params).clamp(0, 1)
    assert torch.allclose(rebuilt, r.x_adv, atol=1e-5), "x_adv is not the decoded perturbed coefficients"


def test_gabor_stays_in_its_budget(trained):
    model, x, y = trained
    eps = 0.2
    r = uf.gabor_attack(model, x, y, eps=eps, steps=5, seed=1)
    assert (r.x_adv - x).abs().max() <= eps + 1e-6
    assert r.params.abs().max() <= 1
    density = (r.params != 0).float().mean()
    assert 0 < density < 0.25, "the noise variables live on a sparse support"
    n = uf.gabor_noise(torch.randn(3, 1, 8, 8), torch.stack([uf.gabor_kernel(23, 0.2, 4.0, 0.3, 3)] * 3).unsqueeze(1))
    assert math.isclose(float(n.abs().amax()), 1.0, rel_tol=1e-6)


def test_snow_stays_in_its_budget(trained):
    model, x, y = trained
    budget, eps = 0.15, 1.0
    r = uf.snow_attack(model, x, y, eps=eps, budget=budget, steps=5, seed=2)
    v = r.params
    assert v.shape == (len(x), uf.SNOW_DIRECTIONS, 2, 2)
    assert v.min() >= 0 and v.max() <= 1
    assert v.mean(dim=(2, 3)).max() <= budget + 1e-6  # one region covers the 2x2 grid of an 8x8 image
    attacked = v.flatten(1).abs().sum(1) > 0
    rebuilt = uf.render_snow(x, v, eps=eps, seed=2)
    assert torch.allclose(rebuilt[attacked], r.x_adv[attacked], atol=1e-5)
    # regions on a larger grid: every 8x8 region of every direction within the budget
    big = uf.snow_project(torch.rand(2, uf.SNOW_DIRECTIONS, 20, 12), 0.1)
    for i in range(0, 20, 8):
        for j in range(0, 12, 8):
            assert big[:, :, i : i + 8, j : j + 8].mean(dim=(2, 3)).max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    "name,options",
    [("jpeg", {"norm": "Linf", "eps": 0.5}), ("gabor", {"eps": 0.5}), ("snow", {"eps": 3.0})],
)
def test_lowers_accuracy_and_is_deterministic(trained, name, options):
    model, x, y = trained
    spec = _REG.get("attack", name)
    opts = rtk.validate_options(spec.options, {**options, "steps": 5}, name)
    clean = _acc(model, x, y)
    a = spec.build(model, opts)(x, y)
    assert _acc(model, a, y) <= clean - 0.1, f"{name} barely changed accuracy"
    assert torch.equal(a, spec.build(model, opts)(x, y)), "not deterministic under its seed"
    other = rtk.validate_options(spec.options, {**options, "steps": 5, "seed": 7}, name)
    assert not torch.equal(a, spec.build(model, other)(x, y)), "the seed does not change the attack"


def test_misclassified_examples_come_back_unchanged(trained):
    model, x, y = trained
    wrong = (y + 1) % 10  # every example is "misclassified" under these labels
    for attack in (uf.jpeg_attack, uf.gabor_attack, uf.snow_attack):
        r = attack(model, x[:8], wrong[:8], eps=0.3, steps=2)
        assert torch.equal(r.x_adv, x[:8]) and not r.params.any()


def test_options_are_validated():
    jpeg = _REG.get("attack", "jpeg").options
    assert rtk.validate_options(jpeg, {}, "a").norm == "L2"
    with pytest.raises(rtk.ConfigError, match="norm"):
        rtk.validate_options(jpeg, {"norm": "L1"}, "a")
    with pytest.raises(rtk.ConfigError, match="quality"):
        rtk.validate_options(jpeg, {"quality": 0}, "a")
    gabor = _REG.get("attack", "gabor").options
    assert rtk.validate_options(gabor, {"eps": "8/255"}, "a").eps == pytest.approx(8 / 255)
    with pytest.raises(rtk.ConfigError, match="budget"):
        rtk.validate_options(_REG.get("attack", "snow").options, {"budget": 0}, "a")
    with pytest.raises(rtk.ConfigError, match="epz"):
        rtk.validate_options(gabor, {"epz": 0.1}, "a")


def test_rgb_images(trained):
    """Three-channel inputs (CIFAR-like) through every attack, with a tiny RGB model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)).eval()
    x = torch.rand(4, 3, 16, 16)
    y = model(x).argmax(1).detach()
    for attack, kw in ((uf.jpeg_attack, {"eps": 1.0}), (uf.gabor_attack, {"eps": 0.1}), (uf.snow_attack, {"eps": 0.5})):
        r = attack(model, x, y, steps=2, **kw)
        assert r.x_adv.shape == x.shape and torch.isfinite(r.x_adv).all()
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
