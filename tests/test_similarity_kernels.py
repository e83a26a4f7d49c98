"""rtk's similarity kernels against a float64 NumPy reference written here, their
invariances, the streaming forms, and degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rtk
from rtk.similarity import kernels as K
from rtk.similarity import streaming as S


# ----------------------------------------------------------------------------- reference (float64, textbook)
def ref_center_gram(k):
    """H K H with H = I - 11^T/n, written out elementwise."""
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def ref_hsic_unbiased(k, l):
    """Song et al. (2012), eq. 5: [tr(K~L~) + 1K~1 1L~1/((n-1)(n-2)) - 2/(n-2) 1K~L~1] / (n(n-3))."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        (k * l.T).sum()
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * ((k @ one) @ (l @ one))
    ) / (n * (n - 3))


def ref_cka_kernels(k, l, debiased):
    if debiased:
        return ref_hsic_unbiased(k, l) / math.sqrt(ref_hsic_unbiased(k, k) * ref_hsic_unbiased(l, l))
    kc, lc = ref_center_gram(k), ref_center_gram(l)
    return (kc * lc).sum() / math.sqrt((kc * kc).sum() * (lc * lc).sum())


def f64(x):
    return np.asarray(torch.as_tensor(x).reshape(len(x), -1).double().numpy())


def ref_linear(x, y, debiased=False):
    x, y = f64(x), f64(y)
    return ref_cka_kernels(x @ x.T, y @ y.T, debiased)


def ref_rbf_kernel(x, sigma):
    x = f64(x)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    med = np.median(d[np.triu_indices(len(x), 1)])
    return np.exp(-(d**2) / (2 * (sigma * med) ** 2))


def ref_rbf(x, y, sigma=0.8, debiased=False):
    return ref_cka_kernels(ref_rbf_kernel(x, sigma), ref_rbf_kernel(y, sigma), debiased)


def ref_minibatch(x, y, b):
    x, y = f64(x), f64(y)
    h = []
    for i in range(0, len(x), b):
        xb, yb = x[i : i + b], y[i : i + b]
        if len(xb) < 4:
            break
        k, l = xb @ xb.T, yb @ yb.T
        h.append((ref_hsic_unbiased(k, l), ref_hsic_unbiased(k, k), ref_hsic_unbiased(l, l)))
    m = np.mean(h, 0)
    return m[0] / math.sqrt(m[1] * m[2])


def ref_basis(x):
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    r = int((s > 1e-8 * s[0]).sum())
    return xc, u[:, :r], s[:r]


def ref_svcca(x, y, variance=0.99, dims=None):
    bases = []
    for z in (f64(x), f64(y)):
        _, u, s = ref_basis(z)
        lam = s**2
        k = dims if dims else int(np.searchsorted(np.cumsum(lam) / lam.sum(), variance - 1e-12) + 1)
        bases.append(u[:, :k])
    return np.linalg.svd(bases[0].T @ bases[1], compute_uv=False).mean()


def ref_pwcca(x, y):
    xc, ux, _ = ref_basis(f64(x))
    _, uy, _ = ref_basis(f64(y))
    a, rho, _ = np.linalg.svd(ux.T @ uy, full_matrices=False)
    h = ux @ a  # canonical variates of x
    w = np.abs(h.T @ xc).sum(1)
    return (w * rho).sum() / w.sum()


def ref_procrustes(x, y):
    x, y = f64(x), f64(y)
    x, y = x - x.mean(0), y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return 2 - 2 * np.linalg.svd(x.T @ y, compute_uv=False).sum()


KERNELS = {
    "linear": (lambda x, y: K.linear_cka(x, y), ref_linear),
    "linear-debiased": (lambda x, y: K.linear_cka(x, y, debiased=True), lambda x, y: ref_linear(x, y, True)),
    "rbf": (lambda x, y: K.rbf_cka(x, y, sigma=0.8), ref_rbf),
    "rbf-debiased": (lambda x, y: K.rbf_cka(x, y, sigma=0.5, debiased=True), lambda x, y: ref_rbf(x, y, 0.5, True)),
    "minibatch": (lambda x, y: K.minibatch_cka(x, y, batch_size=40), lambda x, y: ref_minibatch(x, y, 40)),
    "svcca": (lambda x, y: K.svcca(x, y), ref_svcca),
    "svcca-dims": (lambda x, y: K.svcca(x, y, dims=6), lambda x, y: ref_svcca(x, y, dims=6)),
    "pwcca": (K.pwcca, ref_pwcca),
    "procrustes": (K.procrustes_distance, ref_procrustes),
}


@pytest.fixture(scope="module")
def pair():
    """Two related, non-Gaussian float32 representations with non-zero means."""
    g = torch.Generator().manual_seed(0)
    n = 150
    z = torch.randn(n, 12, generator=g)
    x = torch.relu(z @ torch.randn(12, 30, generator=g)) + 2.0
    y = torch.tanh(z[:, :8] @ torch.randn(8, 20, generator=g)) + 0.3 * torch.randn(n, 20, generator=g) - 1.0
    return x, y


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_matches_float64_reference(name, pair):
    fn, ref = KERNELS[name]
    x, y = pair
    got = fn(x, y)
    assert isinstance(got, float)
    assert got == pytest.approx(ref(x, y), abs=1e-5)


@pytest.fixture(scope="module")
def layers():
    g = torch.Generator().manual_seed(1)
    n = 600  # more than two row blocks of the symmetric products
    base = torch.randn(n, 16, generator=g)
    xs = [torch.relu(base @ torch.randn(16, d, generator=g) + 0.5) * 10 for d in (5, 40, 90)]
    refs = {deb: np.array([[ref_linear(a, b, deb) for b in xs] for a in xs]) for deb in (False, True)}
    return xs, refs


@pytest.mark.parametrize("route", ["feature", "gram", "gram-strips"])
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_routes_and_heatmap_match_reference(route, debiased, layers):
    """Both exact routes (Grams stored, or in row-block strips when memory is short)."""
    xs, refs = layers
    ref = refs[debiased]
    strips = route == "gram-strips"
    route = "gram" if strips else route
    got = K.linear_cka_matrix(
        xs, debiased=debiased, route=route, memory=1 << 18, gram_memory=0 if strips else 1 << 30
    ).numpy()
    assert np.abs(got - ref).max() < 1e-5
    stats = K.linear_stats(xs[1], xs[2], route=route)
    assert K.cka_from_stats(stats, debiased=debiased) == pytest.approx(ref[1, 2], abs=1e-5)
    between = K.linear_cka_matrix(xs[:2], xs[1:], debiased=debiased, route=route).numpy()
    assert np.abs(between - ref[:2, 1:]).max() < 1e-5


def test_half_precision_inputs_are_computed_in_float32(pair):
    x, y = pair
    for dt in (torch.float16, torch.bfloat16):
        xh, yh = x.to(dt), y.to(dt)
        assert K.linear_cka(xh, yh) == pytest.approx(ref_linear(xh, yh), abs=1e-5)
        assert K.linear_cka(xh, yh, debiased=True) == pytest.approx(ref_linear(xh, yh, True), abs=1e-5)


def test_float64_inputs_agree_tightly(pair):
    x, y = (t.double() for t in pair)
    assert K.linear_cka(x, y, debiased=True) == pytest.approx(ref_linear(x, y, True), abs=1e-10)
    assert K.svcca(x, y) == pytest.approx(ref_svcca(x, y), abs=1e-9)


# ----------------------------------------------------------------------------- invariances
@pytest.fixture(scope="module")
def transforms(pair):
    x, _ = pair
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64))
    return x, (x.double() @ q).float(), 3.7 * x, x + 5.0


@pytest.mark.parametrize("name", ["linear", "linear-debiased", "rbf", "rbf-debiased", "svcca", "minibatch"])
def test_self_similarity_is_one(name, pair):
    fn, _ = KERNELS[name]
    x, _ = pair
    assert fn(x, x) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "linear-debiased", "rbf", "rbf-debiased", "svcca", "minibatch"])
def test_orthogonal_scaling_and_shift_invariance(name, transforms, pair):
    fn, _ = KERNELS[name]
    x, rotated, scaled, shifted = transforms
    _, y = pair
    base = fn(x, y)
    for other in (rotated, scaled, shifted):
        assert fn(other, y) == pytest.approx(base, abs=2e-5)
        assert fn(x, other) == pytest.approx(1.0, abs=2e-5)


def test_cca_is_invariant_to_invertible_linear_maps(pair):
    x, y = pair
    g = torch.Generator().manual_seed(3)
    a = torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64) + 3 * torch.eye(
        x.shape[1], dtype=torch.float64
    )
    xa = x.double() @ a
    # without a variance cut, SVCCA is plain CCA: invariant to any invertible map
    assert K.svcca(xa, y, variance=1.0) == pytest.approx(K.svcca(x.double(), y, variance=1.0), abs=1e-7)
    # linear CKA is not (it weighs directions by variance)
    assert abs(K.linear_cka(xa, y) - K.linear_cka(x, y)) > 1e-3


def test_procrustes_distance_zero_for_rotated_scaled_copy(transforms):
    x, rotated, scaled, _ = transforms
    assert K.procrustes_distance(x, rotated) == pytest.approx(0.0, abs=1e-6)
    assert K.procrustes_distance(x, scaled) == pytest.approx(0.0, abs=1e-6)


def test_pwcca_is_one_for_identical_and_lower_for_noise(pair):
    x, y = pair
    assert K.pwcca(x, x) == pytest.approx(1.0, abs=1e-6)
    assert K.pwcca(x, torch.randn_like(y)) < K.pwcca(x, y)


# ----------------------------------------------------------------------------- minibatch and streams
def test_minibatch_converges_to_full_unbiased_cka():
    g = torch.Generator().manual_seed(4)
    n = 1024
    z = torch.randn(n, 10, generator=g)
    x = torch.relu(z @ torch.randn(10, 24, generator=g))
    y = z[:, :6] @ torch.randn(6, 16, generator=g) + 0.8 * torch.randn(n, 16, generator=g)
    full = ref_linear(x, y, debiased=True)
    errors = [abs(K.minibatch_cka(x, y, batch_size=b) - full) for b in (8, 32, 128, 1024)]
    assert errors[-1] < 1e-6  # one batch of everything is exactly the full unbiased CKA
    assert errors[0] > errors[2] > errors[3]
    assert errors[1] > errors[3]


def test_minibatch_accumulator_memory_does_not_grow():
    acc = S.MinibatchCKA()
    g = torch.Generator().manual_seed(5)
    sizes = []
    for _ in range(20):
        x = torch.randn(32, 6, generator=g)
        acc.update([x, x**2, torch.randn(32, 3, generator=g)])
        state = acc.state_dict()["sum"]
        sizes.append(state.numel())
    assert set(sizes) == {9} and acc.batches == 20 and acc.examples == 640
    m = acc.compute()
    assert m.shape == (3, 3) and torch.allclose(torch.diagonal(m), torch.ones(3, dtype=torch.float64))
    other = S.MinibatchCKA()
    other.merge(acc)
    assert torch.equal(other.compute(), m)


def test_linear_cka_narrow_float32_features_within_1e8():
    """Narrow float32 features (the feature route's d x d products) stay within 1e-8 of the
    float64 value: float32 products were 6.3e-8 off here."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1500, 64, generator=g)
    x = torch.relu(z @ torch.randn(64, 128, generator=g) + 0.3 * torch.randn(1500, 128, generator=g))
    y = torch.relu(z @ torch.randn(64, 128, generator=g) + 0.3 * torch.randn(1500, 128, generator=g))
    assert abs(K.linear_cka(x, y) - ref_linear(x, y)) < 1e-8
    assert abs(K.linear_cka(x, y, debiased=True) - ref_linear(x, y, True)) < 1e-8


@pytest.mark.parametrize("ties", [False, True])
def test_kth_pair_equals_a_full_partition(ties):
    """The bracketed selection behind RBF CKA's median bandwidth is exact (the sampled path
    runs above 8 * 65,536 values), with ties and with the k-th value at either end."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(700_000) ** 2).astype(np.float32)
    if ties:
        a[:250_000] = 0.0
        a = np.round(a, 1)
    for k in (0, 1000, 250_000, 350_000, 699_998):
        part = np.partition(a, (k, k + 1))
        assert K.kth_pair(a, k) == (float(part[k]), float(part[k + 1]))


@pytest.mark.parametrize("b", [5, 100, 256])
def test_lower_gram_strips_equal_the_full_product(b):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(b, 37, generator=g, dtype=torch.float64)
    out = torch.full((b, b), float("nan"), dtype=torch.float64)
    K.lower_gram_into(x, out)
    lower = torch.tril(torch.ones(b, b, dtype=torch.bool))
    assert torch.allclose(out[lower], (x @ x.T)[lower], rtol=1e-13, atol=1e-12)
    # the HSIC from the lower triangles (garbage above them ignored) is the full-matrix one
    grams = [x @ x.T, (x[:, :5] ** 2) @ (x[:, :5] ** 2).T]
    stack = torch.stack([torch.tril(m) + torch.triu(torch.full_like(m, 7.0), 1) for m in grams])
    h, terms = K.hsic1_lower(stack)
    h_ref, terms_ref = K._hsic1(grams)
    assert torch.allclose(h, h_ref, rtol=1e-12, atol=1e-12) and torch.allclose(terms, terms_ref, rtol=1e-12)


def test_minibatch_strips_within_1e8_of_float64_reference():
    """Batches of 256 (the Gram by strips, shifted by a sampled mean) against Song et al.'s
    estimator in float64 on exactly centred features, with a large mean on one layer."""
    g = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(3):
        z = torch.randn(256, 8, generator=g)
        batches.append(
            [torch.relu(z @ torch.randn(8, 300, generator=g)), z @ torch.randn(8, 40, generator=g) + 30.0, z[:, :3]]
        )
    acc = S.MinibatchCKA()
    for batch in batches:
        acc.update(batch)
    got = acc.compute().numpy()
    hs = np.zeros((3, 3))
    for batch in batches:
        grams = []
        for f in batch:
            a = f64(f)
            a = a - a.mean(0)
            grams.append(a @ a.T)
        hs += np.array([[ref_hsic_unbiased(k, l) for l in grams] for k in grams])
    want = hs / np.sqrt(np.outer(np.diag(hs), np.diag(hs)))
    assert np.abs(got - want).max() < 1e-8


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_stream_equals_full(pair, debiased):
    x, y = pair
    s = S.LinearCKAStream(debiased=debiased)
    for i in range(0, len(x), 37):
        s.update(x[i : i + 37] + 100.0, y[i : i + 37])  # a large mean must not cancel catastrophically
    assert s.compute() == pytest.approx(ref_linear(x, y, debiased), abs=1e-5)


@pytest.mark.parametrize("metric,ref", [("svcca", ref_svcca), ("pwcca", ref_pwcca), ("procrustes", ref_procrustes)])
def test_moment_stream_equals_reference(pair, metric, ref):
    x, y = pair
    s = S.MomentStream(metric)
    for i in range(0, len(x), 50):
        s.update(x[i : i + 50], y[i : i + 50])
    assert s.compute() == pytest.approx(ref(x, y), abs=1e-5)


def test_feature_buffer_calls_any_metric(pair):
    x, y = pair
    buf = S.FeatureBuffer(lambda a, b: K.rbf_cka(a, b))
    buf.update(x[:70], y[:70])
    buf.update(x[70:], y[70:])
    assert buf.compute() == pytest.approx(ref_rbf(x, y), abs=1e-5)


# ----------------------------------------------------------------------------- degenerate input
ALL = sorted(KERNELS)


@pytest.mark.parametrize("name", ALL)
def test_nan_and_inf_raise(name, pair):
    fn, _ = KERNELS[name]
    x, y = pair
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[3, 2] = bad
        with pytest.raises(rtk.RtkError, match="NaN or inf"):
            fn(xb, y)


@pytest.mark.parametrize("name", ALL)
def test_constant_features_raise(name, pair):
    fn, _ = KERNELS[name]
    _, y = pair
    with pytest.raises(K.SimilarityError, match="constant|median distance"):
        fn(torch.full((len(y), 5), 3.0), y)


@pytest.mark.parametrize("name", ["linear-debiased", "rbf-debiased", "minibatch"])
def test_unbiased_estimators_need_four_examples(name, pair):
    fn, _ = KERNELS[name]
    x, y = pair
    with pytest.raises(K.SimilarityError, match="at least 4"):
        fn(x[:3], y[:3])


def test_shape_errors_are_clear(pair):
    x, y = pair
    with pytest.raises(K.SimilarityError, match="same examples"):
        K.linear_cka(x, y[:-1])
    with pytest.raises(K.SimilarityError, match=r"shape \[n, d\]"):
        K.linear_cka(torch.randn(10), torch.randn(10))


def test_heatmap_error_names_the_layer(pair):
    x, y = pair
    with pytest.raises(K.SimilarityError, match="layer 'dead'"):
        K.linear_cka_matrix([x, torch.zeros_like(y)], names_a=["alive", "dead"])
    acc = S.MinibatchCKA(names_a=["alive", "dead"])
    acc.update([x[:50], torch.zeros(50, 4)])
    with pytest.raises(K.SimilarityError, match="layer 'dead'"):
        acc.compute()


def test_cca_refuses_more_dims_than_examples():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(20, 15, generator=g), torch.randn(20, 15, generator=g)
    with pytest.raises(K.SimilarityError, match="needs more than"):
        K.pwcca(x, y)  # random data would otherwise get canonical correlations of 1
    assert K.svcca(x, y, dims=4) < 0.9


# ----------------------------------------------------------------------------- issue 15 item 10: no made-up values
@pytest.mark.parametrize(
    "fn",
    [
        K.linear_cka,
        K.rbf_cka,
        K.procrustes_distance,
        lambda x, y: K.linear_cka_matrix([x, y]),
    ],
    ids=["linear", "rbf", "procrustes", "linear-matrix"],
)
def test_two_examples_are_refused_not_a_constant(fn):
    """With n = 2 any two centred representations are proportional: CKA would be 1.0 and
    the Procrustes distance 0.0 for any input."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(2, 5, generator=g), torch.randn(2, 7, generator=g)
    with pytest.raises(K.SimilarityError, match="at least 3 examples, got 2.*proportional"):
        fn(x, y)
    assert fn(torch.randn(3, 5, generator=g), torch.randn(3, 7, generator=g)) is not None


@pytest.mark.parametrize("kind", ["constant-per-batch", "one-hot-per-batch"])
def test_minibatch_self_hsic_zero_in_every_batch_is_an_error(kind):
    """Features whose unbiased self-HSIC is zero in every minibatch (exactly, or up to
    rounding) must not give a number (it gave about -1e-11)."""
    if kind == "constant-per-batch":
        x = torch.cat([torch.full((50, 4), float(i)) for i in range(4)])
    else:
        x = torch.zeros(200, 4)
        x[::50, 0] = 1.0
    y = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(K.SimilarityError, match="zero up to rounding"):
        K.minibatch_cka(x, y, batch_size=50)


@pytest.mark.parametrize("scale", [1e20, 1e-20])
@pytest.mark.parametrize(
    "name", ["linear", "linear-debiased", "rbf", "rbf-debiased", "minibatch", "svcca", "procrustes"]
)
def test_extreme_float32_scales_compute_the_same_value(name, scale, pair):
    """float32 features scaled by 1e20 overflow and by 1e-20 underflow in float products;
    every metric is scale invariant, so the value must be that of the unscaled features."""
    fn, _ = KERNELS[name]
    x, y = pair
    xs, ys = (x.double() * scale).float(), (y.double() * scale).float()
    assert fn(xs, ys) == pytest.approx(fn(x, y), abs=1e-6)
    mat = K.linear_cka_matrix([xs, ys])
    assert float(mat[0, 1]) == pytest.approx(K.linear_cka(x, y), abs=1e-6)


def test_gram_route_keeps_float64_sums():
    """float64 features through the Gram route give float64 precision (its Frobenius
    product was rounded to float32: about 1e-7 off)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 300, generator=g, dtype=torch.float64)
    y = x[:, :200] + 0.01 * torch.randn(40, 200, generator=g, dtype=torch.float64)
    ref = ref_linear(x, y)
    assert K.linear_cka(x, y) == pytest.approx(ref, abs=1e-12)
    s = K.linear_stats(x, y, route="gram")
    xc, yc = f64(x) - f64(x).mean(0), f64(y) - f64(y).mean(0)
    assert s.kl == pytest.approx(float(np.square(xc.T @ yc).sum()), rel=1e-12)


@pytest.fixture(scope="module")
def wide_pair():
    """A larger pair (n = 1,500, d about 250) with a non-zero mean."""
    g = torch.Generator().manual_seed(7)
    n = 1500
    z = torch.randn(n, 16, generator=g)
    x = torch.relu(z @ torch.randn(16, 256, generator=g) + 0.2 * torch.randn(n, 256, generator=g)) + 1.0
    y = torch.tanh(z @ torch.randn(16, 248, generator=g)) + 0.3 * torch.randn(n, 248, generator=g)
    return x, y


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_within_1e10_of_float64_reference(name, wide_pair):
    """float64 input: every kernel within 1e-10 of the float64 reference. float32 input is
    computed with float32 products (float64 sums): within 1e-7 here (measured 3.5e-8 for
    linear CKA: centring and length-n products round about 1e-7 relative per entry)."""
    fn, ref = KERNELS[name]
    x, y = wide_pair
    if name.startswith("rbf"):  # the reference's n x n x d distance tensor: a subset
        x, y = x[:500], y[:500]
    expected = ref(x, y)
    assert abs(fn(x.double(), y.double()) - expected) <= 1e-10
    assert abs(fn(x, y) - expected) <= 1e-7


def test_heatmap_within_1e10_of_float64_reference(wide_pair):
    x, y = wide_pair
    xs = [x, y, x[:, :10] * y[:, :10]]
    ref = np.array([[ref_linear(a, b) if i < j else 0.0 for j, b in enumerate(xs)] for i, a in enumerate(xs)])
    ref = ref + ref.T + np.eye(3)
    for route in ("feature", "gram"):
        got = K.linear_cka_matrix([t.double() for t in xs], route=route).numpy()
        assert np.abs(got - ref).max() <= 1e-10, route
        got = K.linear_cka_matrix(xs, route=route).numpy()
        assert np.abs(got - ref).max() <= 1e-7, route


# ----------------------------------------------------------------------------- side-by-side BLAS routes
def _related_pair(n, d1, d2, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 32, generator=g)
    x = torch.relu(z @ torch.randn(32, d1, generator=g) + 0.3 * torch.randn(n, d1, generator=g)) + 1.0
    y = torch.relu(z @ torch.randn(32, d2, generator=g) + 0.5 * torch.randn(n, d2, generator=g))
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize(
    "shape", [(1500, 128, 128), (2000, 700, 300), (900, 40, 500), (300, 3, 7)], ids=["narrow", "wide", "uneven", "tiny"]
)
def test_linear_side_by_side_route_within_1e8(monkeypatch, workers, shape):
    """The feature route as single-threaded BLAS calls side by side (taken when NumPy's BLAS
    has 2 or more threads; the tests run with one, so it is forced here) against float64."""
    monkeypatch.setattr(K, "blas_workers", lambda: workers)
    x, y = _related_pair(*shape, seed=sum(shape))
    for debiased in (False, True):
        s = K.linear_stats(x, y, route="feature", min_examples=4)
        assert K.cka_from_stats(s, debiased=debiased) == pytest.approx(ref_linear(x, y, debiased), abs=1e-8)
    xh, yh = x.half(), y.half()  # half precision is computed in float32
    assert abs(K.linear_cka(xh, yh) - ref_linear(xh, yh)) < 1e-8


def test_run_side_by_side_keeps_order_and_restores_blas_threads(monkeypatch):
    monkeypatch.setattr(K, "blas_workers", lambda: 2)
    before = K._blas_controller()
    threads = [lib.num_threads for lib in before.lib_controllers] if before is not None else None
    torch_threads = torch.get_num_threads()
    assert K.run_side_by_side([lambda i=i: i * i for i in range(7)]) == [i * i for i in range(7)]
    assert K.run_side_by_side([torch.get_num_threads] * 2, torch_products=True) == [1, 1]  # MKL products in tasks
    with pytest.raises(ZeroDivisionError):
        K.run_side_by_side([lambda: 1, lambda: 1 / 0])
    assert torch.get_num_threads() == torch_threads
    if before is not None:
        from threadpoolctl import ThreadpoolController

        after = ThreadpoolController().select(user_api="blas")
        assert [lib.num_threads for lib in after.lib_controllers] == threads


@pytest.fixture
def two_blas_workers(monkeypatch):
    monkeypatch.setattr(K, "blas_workers", lambda: 2)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 30.0], ids=["folded-centring", "centred-copy"])
def test_heatmap_tiles_within_1e8(two_blas_workers, debiased, offset):
    """The CPU Gram route by tiles side by side (several tiles: small memory), centring folded
    into the tiles or, for a layer with a large mean, done beforehand; n < d for two layers."""
    g = torch.Generator().manual_seed(12)
    n = 400
    z = torch.randn(n, 16, generator=g)
    xs = [
        torch.relu(z @ torch.randn(16, d, generator=g) + 0.3 * torch.randn(n, d, generator=g)) for d in (50, 450, 700)
    ]
    xs[1] = xs[1] + offset
    got = K.linear_cka_matrix(xs, debiased=debiased, route="gram", memory=1 << 18).numpy()
    ref = np.array([[ref_linear(a, b, debiased) for b in xs] for a in xs])
    assert np.abs(got - ref).max() < 1e-8
    got64 = K.linear_cka_matrix([x.double() for x in xs], debiased=debiased, route="gram", memory=1 << 18).numpy()
    assert np.abs(got64 - ref).max() < 1e-10
    xh = [x.half() for x in xs]
    half = K.linear_cka_matrix(xh, debiased=debiased, route="gram", memory=1 << 18).numpy()
    assert np.abs(half - np.array([[ref_linear(a, b, debiased) for b in xh] for a in xh])).max() < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minibatch_side_by_side_within_1e8(two_blas_workers, dtype):
    """MinibatchCKA's NumPy route (single-threaded BLAS calls side by side) against Song et
    al.'s estimator in float64 on exactly centred features, with a large mean on one layer."""
    g = torch.Generator().manual_seed(13)
    batches = []
    for _ in range(3):
        z = torch.randn(256, 8, generator=g)
        batch = [torch.relu(z @ torch.randn(8, 300, generator=g)), z @ torch.randn(8, 40, generator=g) + 30.0, z[:, :3]]
        batches.append([f.to(dtype) for f in batch])
    acc = S.MinibatchCKA()
    for batch in batches:
        acc.update(batch)
    hs = np.zeros((3, 3))
    for batch in batches:
        grams = [(f64(f) - f64(f).mean(0)) @ (f64(f) - f64(f).mean(0)).T for f in batch]
        hs += np.array([[ref_hsic_unbiased(k, l) for l in grams] for k in grams])
    want = hs / np.sqrt(np.outer(np.diag(hs), np.diag(hs)))
    assert np.abs(acc.compute().numpy() - want).max() < (1e-8 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("name", ["linear", "linear-debiased", "rbf", "rbf-debiased", "minibatch"])
def test_side_by_side_kernels_within_1e8_of_float64_reference(two_blas_workers, name, wide_pair):
    fn, ref = KERNELS[name]
    x, y = wide_pair
    x, y = x[:500], y[:500]
    assert abs(fn(x, y) - ref(x, y)) <= 1e-8
    assert abs(fn(x.double(), y.double()) - ref(x, y)) <= 1e-10


def test_kth_pair_over_several_chunks():
    """More than 2^20 values: the bracket's counting pass runs chunk by chunk."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal(2_300_000).astype(np.float32) ** 2
    for k in (5, 1_150_000, 2_299_998):
        part = np.partition(a, (k, k + 1))
        assert K.kth_pair(a, k) == (float(part[k]), float(part[k + 1]))


def _squares_side_by_side(k):
    return K.run_side_by_side([lambda i=i: i * i for i in range(k)])


def test_run_side_by_side_nested_and_after_fork(two_blas_workers):
    """A task's own tasks run in its thread (no deadlock on a full pool), and a forked child
    (a DataLoader worker, say) gets a pool of its own: the parent's threads do not exist there."""
    assert K.run_side_by_side([lambda: _squares_side_by_side(3), lambda: _squares_side_by_side(2)]) == [
        [0, 1, 4],
        [0, 1],
    ]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_squares_side_by_side, (4,)).get(timeout=60) == [0, 1, 4, 9]


@pytest.mark.parametrize("debiased", [False, True])
def test_torch_gram_routes_match_the_numpy_tiles_on_the_cpu(debiased, monkeypatch):
    """The stored and strip Gram routes run where NumPy cannot (GPUs); on the CPU NumPy tiles
    replace them. Turning the NumPy check off here runs the torch routes, so CI checks that both
    agree to 1e-8 without a GPU."""
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(90, d, generator=g, dtype=torch.float64) + 0.3 for d in (40, 70, 130)]
    tiles = rtk.similarity.linear_cka_matrix(feats, route="gram", debiased=debiased)
    monkeypatch.setattr(K, "_on_numpy", lambda *ts: False)
    stored = rtk.similarity.linear_cka_matrix(feats, route="gram", debiased=debiased)
    strips = rtk.similarity.linear_cka_matrix(feats, route="gram", debiased=debiased, gram_memory=1, memory=1 << 12)
    for other in (stored, strips):
        assert torch.allclose(other, tiles, atol=1e-8, rtol=0)


def test_features_that_require_grad_are_compared_detached():
    """Activations captured with autograd on (a model in training) give the same similarity."""
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(64, 30, generator=g), torch.randn(64, 50, generator=g)
    plain = rtk.similarity.linear_cka_matrix([x, y], route="gram")
    grad = rtk.similarity.linear_cka_matrix([x.requires_grad_(), y.requires_grad_()], route="gram")
    assert not grad.requires_grad and torch.equal(grad, plain)
    assert rtk.similarity.linear_cka(x, y) == rtk.similarity.linear_cka(x.detach(), y.detach())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shifted_gram_in_reused_buffers(dtype):
    """The minibatch Gram of shifted features in this thread's buffers: a wider layer grows
    them, a narrower one after it reuses them, and each result is the shifted Gram (float64
    products for float32 features when asked)."""
    rng = np.random.default_rng(7)
    for b, d, work in ((40, 30, None), (40, 700, None), (40, 5, None), (12, 90, np.float64)):
        a = (rng.standard_normal((b, d)) + 3.0).astype(dtype)
        shift = a[::3].mean(0)
        k = K._shifted_gram(a, shift, dtype=work)
        c = a.astype(np.float64) - shift.astype(np.float64)
        tol = 1e-6 if (dtype == np.float32 and work is None) else 1e-13
        assert k.shape == (b, b) and np.abs(k - c @ c.T).max() <= tol * np.abs(c @ c.T).max()


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("b", [12, 256])
def test_minibatch_cka_routes_within_1e8(monkeypatch, workers, b):
    """MinibatchCKA on the CPU with 1-3 forced BLAS workers: layers narrower and wider than
    the batch (one spans several column chunks of the Gram), float16 and float32 input."""
    monkeypatch.setattr(K, "blas_workers", lambda: workers)
    g = torch.Generator().manual_seed(b + workers)
    batches = []
    for _ in range(2):
        z = torch.randn(b, 8, generator=g)
        batches.append(
            [torch.relu(z @ torch.randn(8, 1300, generator=g)) + 1.0, z[:, :5], z @ torch.randn(8, 90, generator=g)]
        )
    for dtype in (torch.float32, torch.float16):
        acc = S.MinibatchCKA()
        for batch in batches:
            acc.update([f.to(dtype) for f in batch])
        hs = np.zeros((3, 3))
        for batch in batches:
            cs = [f64(f.to(dtype)) - f64(f.to(dtype)).mean(0) for f in batch]
            grams = [c @ c.T for c in cs]
            hs += np.array([[ref_hsic_unbiased(k, l) for l in grams] for k in grams])
        want = hs / np.sqrt(np.outer(np.diag(hs), np.diag(hs)))
        assert np.abs(acc.compute().numpy() - want).max() < 1e-8


@pytest.mark.parametrize("shape", [(40, 40), (30, 55), (70, 20)])
@pytest.mark.parametrize("rank", [None, 6])
def test_singular_values_by_eigenvalues(shape, rank):
    """SVCCA's correlations as the roots of the eigenvalues of the smaller Gram of the CCA
    matrix; a rank-deficient matrix (values near zero) takes LAPACK's singular values."""
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape)
    if rank is not None:
        a = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    got = K._singular_values(torch.from_numpy(a)).numpy()
    want = np.linalg.svd(a, compute_uv=False)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-12 * want[0]


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_moments_fold_the_means_within_float64(offset):
    """The covariances from features shifted near their means in the conversion pass, the rest
    of the means folded into the products, against exactly centred float64 products; SVCCA
    on them within 1e-8 of the SVD route."""
    g = torch.Generator().manual_seed(21)
    z = torch.randn(600, 6, generator=g)
    x = torch.relu(z @ torch.randn(6, 30, generator=g)) + offset
    y = z @ torch.randn(6, 20, generator=g) + 0.3 * torch.randn(600, 20, generator=g) - offset
    m = K.moments(x, y)
    xc, yc = f64(x) - f64(x).mean(0), f64(y) - f64(y).mean(0)
    for got, want in ((m.cxx, xc.T @ xc), (m.cyy, yc.T @ yc), (m.cxy, xc.T @ yc)):
        assert np.abs(got.numpy() - want).max() <= 1e-9 * np.abs(want).max()
    ref = float(K.cca_data(x.double(), y.double(), variance=0.99).rho.mean())
    assert abs(K.svcca(x, y) - ref) <= 1e-8
