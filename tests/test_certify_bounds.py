"""Soundness and tightness of rtk's bound propagation (IBP, CROWN, CROWN-IBP) on random
networks with Linear, Conv2d, ReLU, BatchNorm, AvgPool, Normalize and residual additions."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtk
from rtk.certify import (
    BoundCertifier,
    CertifiedObjective,
    Ramp,
    UnsupportedLayerError,
    bound_graph,
    check_graph,
    linf_box,
    logit_extremes,
    margin_lower_bounds,
    margin_spec,
    output_bounds,
)
from rtk.models import Normalize

TOL = 1e-5


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def mlp_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            [
                ("norm", Normalize([0.3], [0.4])),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(36, 24)),
                ("bn1", nn.BatchNorm1d(24)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(24, 16)),
                ("relu2", nn.ReLU()),
                ("head", nn.Linear(16, 5)),
            ]
        )
    )


def conv_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            [
                ("norm", Normalize([0.5, 0.4], [0.25, 0.3])),
                ("conv1", nn.Conv2d(2, 6, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(6)),
                ("relu1", nn.ReLU()),
                ("pool", nn.AvgPool2d(2)),
                ("conv2", nn.Conv2d(6, 8, 3, stride=2, padding=1)),
                ("relu2", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(8 * 2 * 2, 16)),
                ("relu3", nn.ReLU()),
                ("head", nn.Linear(16, 5)),
            ]
        )
    )


class ResidualNet(nn.Module):
    """A residual block traced through torch.fx: functional relu, an addition, view()."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5, 0.4], [0.25, 0.3])
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(self.norm(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        out = self.pool(F.relu(y + h))
        return self.fc(out.view(out.size(0), -1))


NETS = {"mlp": (mlp_net, (1, 6, 6)), "conv": (conv_net, (2, 6, 6)), "residual": (ResidualNet, (2, 6, 6))}


@pytest.fixture(scope="module", params=list(NETS))
def net(request):
    build, shape = NETS[request.param]
    torch.manual_seed(0)
    model = _randomize_bn(build())
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(2))
    return request.param, model, x


def _corners_and_random(box, n: int, gen: torch.Generator) -> torch.Tensor:
    lo, hi = box
    out = []
    for i in range(n):
        u = torch.rand(lo.shape, generator=gen)
        if i % 2:  # vertices of the box, where linear pieces take their extremes
            u = (u > 0.5).float()
        out.append(lo + u * (hi - lo))
    return torch.stack(out)


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_bounds_contain_random_and_adversarial_logits(net, eps):
    name, model, x = net
    box = linf_box(x, eps)
    gen = torch.Generator().manual_seed(3)
    samples = _corners_and_random(box, 200, gen)
    with torch.no_grad():
        logits = model(samples.flatten(0, 1)).view(200, len(x), -1)
    adv_min, adv_max = logit_extremes(model, x, eps, steps=20, restarts=2)
    for method in ("ibp", "crown-ibp", "crown"):
        with torch.no_grad():
            lo, hi = output_bounds(model, box, method=method)
        assert (logits >= lo - TOL).all() and (logits <= hi + TOL).all(), (name, method)
        assert (adv_min >= lo - TOL).all() and (adv_max <= hi + TOL).all(), (name, method)
        assert (lo <= hi).all()


def test_margin_bounds_below_attacked_margins(net):
    name, model, x = net
    with torch.no_grad():
        y = model(x).argmax(1)
    from rtk.certify import margin_pgd

    adv = margin_pgd(model, x, y, 0.05, steps=20, restarts=2)
    with torch.no_grad():
        z = model(adv)
        true = z.gather(1, y[:, None]) - z  # (B, K): logit_y - logit_j at the attack point
        for method in ("ibp", "crown-ibp", "crown"):
            low = margin_lower_bounds(model, x, y, 0.05, method=method)
            finite = torch.isfinite(low)
            assert (low[finite] <= true[finite] + TOL).all(), (name, method)


def test_crown_tighter_than_ibp(net):
    """CROWN gives narrower logit bounds than IBP (textbook CROWN on average, and with the
    default intersection on every logit); CROWN and CROWN-IBP margin bounds are at least IBP's."""
    name, model, x = net
    box = linf_box(x, 0.05)
    with torch.no_grad():
        ibp_lo, ibp_hi = output_bounds(model, box, method="ibp")
        cr_lo, cr_hi = output_bounds(model, box, method="crown")
        pure_lo, pure_hi = output_bounds(model, box, method="crown", intersect_ibp=False)
    w_ibp, w_crown, w_pure = (ibp_hi - ibp_lo).mean(), (cr_hi - cr_lo).mean(), (pure_hi - pure_lo).mean()
    assert (cr_hi - cr_lo <= ibp_hi - ibp_lo + TOL).all()
    assert w_pure < 0.8 * w_ibp, (name, float(w_pure), float(w_ibp))
    assert w_crown < 0.8 * w_ibp
    with torch.no_grad():
        y = model(x).argmax(1)
        m_ibp = margin_lower_bounds(model, x, y, 0.05, method="ibp")
        m_cibp = margin_lower_bounds(model, x, y, 0.05, method="crown-ibp")
        m_crown = margin_lower_bounds(model, x, y, 0.05, method="crown")
    assert (m_cibp >= m_ibp - TOL).all() and (m_crown >= m_ibp - TOL).all()
    assert m_crown[torch.isfinite(m_crown)].mean() > m_ibp[torch.isfinite(m_ibp)].mean()


def test_graph_reproduces_model_and_eps_zero_is_exact(net):
    name, model, x = net
    graph = bound_graph(model, x)
    check_graph(graph, model, x)
    with torch.no_grad():
        want = model(x)
        for method in ("ibp", "crown"):
            lo, hi = output_bounds(model, (x, x), method=method)
            assert torch.allclose(lo, want, atol=1e-4) and torch.allclose(hi, want, atol=1e-4)


def test_batching_and_chunking_do_not_change_crown(net):
    name, model, x = net
    with torch.no_grad():
        y = model(x).argmax(1)
        a = BoundCertifier("crown", eps=0.05, batch_size=64, spec_chunk=256).margins(model, x, y)
        b = BoundCertifier("crown", eps=0.05, batch_size=2, spec_chunk=3).margins(model, x, y)
        c = BoundCertifier("crown", eps=0.05, dtype="float64").margins(model, x, y)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-4)


def test_dense_and_transposed_convolution_backward_agree(net, monkeypatch):
    """Small convolutions go backward as dense matrices, large ones via conv_transpose2d."""
    import rtk.certify.ops as ops_mod

    name, model, x = net
    box = linf_box(x, 0.05)
    with torch.no_grad():
        dense = output_bounds(model, box, method="crown")
        monkeypatch.setattr(ops_mod, "DENSE_LIMIT", 0)
        transposed = output_bounds(model, box, method="crown")
    for a, b in zip(dense, transposed):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("intersect", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_forward_directions_give_the_backward_pass_bounds(net, intersect, training, monkeypatch):
    """CROWN's forward-direction pass (every node an affine function of the input and of the
    unstable ReLU outputs below it) gives the bounds of the backward pass through the graph, on
    every node, in whole batches, in sub-batches of one example and in chunks of rows; and its
    margin bounds are at least IBP's."""
    import rtk.certify.bounds as bounds_mod
    from rtk.certify.ops import Pass

    name, model, x = net
    box = linf_box(x, 0.05)
    with torch.no_grad():
        graph = bound_graph(model, x)
    model.train(training)  # batch norm on the batch statistics of the interval centres
    try:
        with torch.no_grad():
            back = bounds_mod.crown_pass(graph, box, Pass(training=training), intersect=intersect, strategy="backward")
            fwd = bounds_mod.crown_pass(graph, box, Pass(training=training), intersect=intersect, strategy="forward")
            small = fwd
            if intersect and not training:
                monkeypatch.setattr(bounds_mod, "CHUNK_ELEMENTS", 1)  # one example and one row at a time
                small = bounds_mod.crown_pass(graph, box, Pass(), strategy="forward")
                monkeypatch.undo()
    finally:
        model.eval()
    for i, (b, f, s) in enumerate(zip(back, fwd, small)):
        for j in range(2):
            assert torch.allclose(f[j], b[j], rtol=1e-5, atol=1e-5), (name, i, float((f[j] - b[j]).abs().max()))
            assert torch.allclose(s[j], b[j], rtol=1e-5, atol=1e-5), (name, i)
    with torch.no_grad():
        y = model(x).argmax(1)
        p = Pass()
        C = margin_spec(y, graph.output.numel)
        bounds = bounds_mod.crown_pass(graph, box, p, strategy="forward")
        low = torch.maximum(
            bounds_mod.spec_lower_crown(graph, C, bounds, p), bounds_mod.spec_lower_ibp(graph, C, bounds, p)
        )
        ibp = bounds_mod.spec_lower_ibp(graph, C, bounds_mod.interval_pass(graph, box, p), p)
        ref = margin_lower_bounds(model, x, y, 0.05)
    assert (low >= ibp - TOL).all()
    if not intersect and not training:  # with gradients (certified training): same bounds, finite gradients
        model.zero_grad()
        grad = bounds_mod.crown_pass(graph, box, Pass(), intersect=False, strategy="forward")
        assert torch.allclose(grad[-1][0], fwd[-1][0]) and torch.allclose(grad[-1][1], fwd[-1][1])
        (grad[-1][1] - grad[-1][0]).sum().backward()
        grads = [q.grad for q in model.parameters() if q.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        model.zero_grad()
    off = torch.isfinite(ref)
    assert torch.allclose(low[off], ref[off], atol=1e-5)


def _milp_extremes(layers: list[nn.Linear], lo: torch.Tensor, hi: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact min and max of every output of ``Linear, ReLU, ..., Linear`` over the box [lo, hi]
    (one example), by a mixed-integer program with one binary per ReLU (big-M from IBP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    Ws = [m.weight.detach().double().numpy() for m in layers]
    bs = [m.bias.detach().double().numpy() for m in layers]
    n0 = lo.numel()
    # variables: x, then per hidden layer (z, h, a)
    sizes = [n0] + [3 * W.shape[0] for W in Ws[:-1]]
    offs = np.cumsum([0] + sizes)
    nv = int(offs[-1])
    rows, lb, ub = [], [], []
    vlo, vhi = np.full(nv, -np.inf), np.full(nv, np.inf)
    vlo[:n0], vhi[:n0] = lo.double().numpy().ravel(), hi.double().numpy().ravel()
    integrality = np.zeros(nv)
    prev, plo, phi = np.arange(n0), vlo[:n0].copy(), vhi[:n0].copy()
    for k, (W, b) in enumerate(zip(Ws[:-1], bs[:-1])):
        m = W.shape[0]
        z, h, a = offs[k + 1] + np.arange(m), offs[k + 1] + m + np.arange(m), offs[k + 1] + 2 * m + np.arange(m)
        mid, rad = (phi + plo) / 2, (phi - plo) / 2
        zl, zu = W @ mid + b - np.abs(W) @ rad, W @ mid + b + np.abs(W) @ rad
        for j in range(m):
            r = np.zeros(nv)
            r[z[j]], r[prev] = 1.0, -W[j]
            rows.append(r), lb.append(b[j]), ub.append(b[j])  # z = W h_prev + b
            r = np.zeros(nv)
            r[h[j]], r[z[j]] = 1.0, -1.0
            rows.append(r), lb.append(0.0), ub.append(np.inf)  # h >= z
            r = np.zeros(nv)
            r[h[j]], r[z[j]], r[a[j]] = 1.0, -1.0, -zl[j]
            rows.append(r), lb.append(-np.inf), ub.append(-zl[j])  # h <= z - zl (1 - a)
            r = np.zeros(nv)
            r[h[j]], r[a[j]] = 1.0, -max(zu[j], 0.0)
            rows.append(r), lb.append(-np.inf), ub.append(0.0)  # h <= zu a
        vlo[z], vhi[z], vlo[h], vhi[h] = zl, zu, 0.0, np.maximum(zu, 0.0)
        vlo[a], vhi[a], integrality[a] = 0.0, 1.0, 1
        prev, plo, phi = h, np.maximum(zl, 0.0), np.maximum(zu, 0.0)
    cons = LinearConstraint(np.array(rows), lb, ub)
    W, b = Ws[-1], bs[-1]
    out_min, out_max = np.zeros(W.shape[0]), np.zeros(W.shape[0])
    for j in range(W.shape[0]):
        for sign, store in ((1.0, out_min), (-1.0, out_max)):
            c = np.zeros(nv)
            c[prev] = sign * W[j]
            res = milp(c, constraints=cons, integrality=integrality, bounds=Bounds(vlo, vhi))
            assert res.success, res.message
            store[j] = sign * res.fun + b[j]
    return out_min, out_max


def test_crown_contains_the_exact_extremes_from_a_milp():
    """On a small ReLU network, both CROWN strategies bound the exact minimum and maximum of
    every logit over the box (solved as a mixed-integer program) and agree with each other;
    they are tighter than IBP."""
    import rtk.certify.bounds as bounds_mod
    from rtk.certify.ops import Pass

    torch.manual_seed(0)
    layers = [nn.Linear(6, 10), nn.Linear(10, 8), nn.Linear(8, 3)]
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2]).eval()
    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(1))
    box = linf_box(x, 0.1)
    exact = [_milp_extremes(layers, box[0][b], box[1][b]) for b in range(len(x))]
    found = {}
    with torch.no_grad():
        graph = bound_graph(model, x)
        eye = torch.eye(3).expand(len(x), 3, 3)
        for strategy in ("forward", "backward"):
            p = Pass()
            bounds = bounds_mod.crown_pass(graph, box, p, strategy=strategy)
            lo = bounds_mod.spec_lower_crown(graph, eye, bounds, p)
            hi = -bounds_mod.spec_lower_crown(graph, -eye, bounds, p)
            for b, (exact_min, exact_max) in enumerate(exact):
                assert (lo[b].double().numpy() <= exact_min + 1e-5).all(), (strategy, b, lo[b], exact_min)
                assert (hi[b].double().numpy() >= exact_max - 1e-5).all(), (strategy, b, hi[b], exact_max)
            found[strategy] = (lo, hi)
        ibp_lo, ibp_hi = output_bounds(model, box, method="ibp")
    for a, b in zip(found["forward"], found["backward"]):
        assert torch.allclose(a, b, atol=1e-5)
    lo, hi = found["forward"]
    assert ((hi - lo) < (ibp_hi - ibp_lo)).all()


def test_crown_strategy_follows_the_cost():
    """The forward-direction pass is chosen for a small input under wide layers (cnn-large on
    8x8 digits), the backward pass for a wide input under a few neurons; an unknown strategy is
    refused."""
    import rtk.certify.bounds as bounds_mod
    from rtk.certify.ops import Pass
    from rtk.data.core import DataInfo
    from rtk.models.small import cnn_large

    torch.manual_seed(0)
    narrow = cnn_large(DataInfo("tiny", 10, 1, 8, 8, (0.5,), (0.25,))).eval()
    wide = nn.Sequential(nn.Flatten(), nn.Linear(400, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    for model, shape, want in ((narrow, (1, 8, 8), True), (wide, (400,), False)):
        x = torch.rand(3, *shape)
        with torch.no_grad():
            chunk = bounds_mod.use_directions(bound_graph(model.eval(), x), linf_box(x, 2 / 255), Pass(), True)
        assert (chunk > 0) == want, (shape, chunk)
    with pytest.raises(rtk.RtkError, match="allowed: auto, forward, backward"):
        bounds_mod.crown_pass(bound_graph(wide, x), linf_box(x, 0.1), Pass(), strategy="sideways")


def test_margin_spec_folding_is_tighter_than_logit_intervals():
    torch.manual_seed(0)
    model = _randomize_bn(mlp_net())
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
        lo, hi = output_bounds(model, linf_box(x, 0.05), method="ibp")
        naive = lo.gather(1, y[:, None]) - hi  # bound of logit_y - logit_j from the logit intervals
        folded = margin_lower_bounds(model, x, y, 0.05, method="ibp")
    off = torch.isfinite(folded)
    assert (folded[off] >= naive[off] - TOL).all() and (folded[off] > naive[off] + 1e-3).any()
    C = margin_spec(y, 5)
    assert C.shape == (8, 5, 5) and (C[torch.arange(8), y] == 0).all()


def test_pruned_weights_are_honoured():
    torch.manual_seed(0)
    model = conv_net().eval()
    from torch.nn.utils import prune

    prune.l1_unstructured(model.conv2, "weight", amount=0.6)
    x = torch.rand(4, 2, 6, 6)
    check_graph(bound_graph(model, x), model, x)
    with torch.no_grad():
        model.conv2.weight_orig.mul_(1.5)  # the mask must be applied to the live weights
        lo, hi = output_bounds(model, (x, x), method="crown")
        assert torch.allclose(lo, model(x), atol=1e-4)


def test_rtk_masked_and_scored_layers_are_honoured():
    """Pruned models of rtk.pruning: masked layers use weight * mask, HYDRA-scored layers the
    top-k mask of their scores with a straight-through gradient to the scores."""
    from rtk.pruning.masks import apply_mask, to_scored

    torch.manual_seed(0)
    model = conv_net().eval()
    apply_mask(model.conv2, torch.rand_like(model.conv2.weight) > 0.5)
    to_scored(model.fc, keep=40, scores=torch.randn_like(model.fc.weight))
    x = torch.rand(4, 2, 6, 6)
    check_graph(bound_graph(model, x), model, x)
    with torch.no_grad():
        lo, hi = output_bounds(model, (x, x), method="crown")
        assert torch.allclose(lo, model(x), atol=1e-4)
        box = linf_box(x, 0.03)
        lo, hi = output_bounds(model, box, method="crown")
        z = model(_corners_and_random(box, 50, torch.Generator().manual_seed(0)).flatten(0, 1)).view(50, 4, -1)
        assert (z >= lo - TOL).all() and (z <= hi + TOL).all()
    # certified training trains the scores and never revives pruned weights
    model.train()
    obj = CertifiedObjective(0.05, "crown-ibp", Ramp(0.0, 0.0), kappa_end=0.0)
    obj(model, x, torch.zeros(4, dtype=torch.long), progress=1.0).loss.backward()
    assert model.fc.scores.grad is not None and model.fc.scores.grad.abs().sum() > 0
    assert (model.conv2.weight.grad[~model.conv2.weight_mask] == 0).all()


# ---------------------------------------------------------------------------- errors
class Tanhy(nn.Module):
    def forward(self, x):
        return torch.tanh(x)


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "layer,name,kind",
    [
        (nn.MaxPool2d(2), "features.pool", "MaxPool2d"),
        (nn.Sigmoid(), "features.pool", "Sigmoid"),
        (Tanhy(), "features.pool", "tanh"),
    ],
)
def test_unsupported_layer_names_it(layer, name, kind):
    model = nn.Sequential(
        OrderedDict(
            [
                ("features", nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3, padding=1)), ("pool", layer)]))),
                ("flatten", nn.Flatten()),
                ("head", nn.Linear(2 * 4 * 4 if isinstance(layer, nn.MaxPool2d) else 2 * 8 * 8, 3)),
            ]
        )
    ).eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(UnsupportedLayerError) as err:
        BoundCertifier("crown", eps=0.1).certify(model, x, torch.zeros(2, dtype=torch.long))
    msg = str(err.value)
    assert name in msg and kind in msg and "Supported layers" in msg and "Conv2d" in msg


def test_overridden_forward_and_hooks_are_refused():
    model = nn.Sequential(nn.Flatten(), MyLinear(4, 3)).eval()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(UnsupportedLayerError, match="'1'.*overridden"):
        output_bounds(model, (x, x))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    handle = model[1].register_forward_hook(lambda m, i, o: o * 3)
    with pytest.raises(UnsupportedLayerError, match="forward hooks"):
        output_bounds(model, (x, x))
    handle.remove()
    output_bounds(model, (x, x))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedLayerError, match="'2'.*track_running_stats"):
        output_bounds(model, (x, x))


def test_bad_method_and_eps_are_rejected():
    with pytest.raises(rtk.RtkError, match="allowed: ibp, crown, crown-ibp"):
        BoundCertifier("deeppoly")
    with pytest.raises(rtk.RtkError, match="non-negative"):
        linf_box(torch.zeros(1, 1), -0.1)


# ---------------------------------------------------------------------------- training
def test_certified_objectives_schedules_and_gradients():
    torch.manual_seed(0)
    model = _randomize_bn(conv_net()).train()
    x, y = torch.rand(8, 2, 6, 6), torch.randint(0, 5, (8,))
    obj = CertifiedObjective(0.1, "crown-ibp", Ramp(0.2, 0.5), kappa_end=0.0)
    assert obj.eps_at(0.1) == 0 and obj.kappa_at(0.1) == 1 and obj.beta_at(0.1) == 1
    assert obj.eps_at(0.45) == pytest.approx(0.05) and obj.kappa_at(0.45) == pytest.approx(0.5)
    assert obj.eps_at(0.9) == pytest.approx(0.1) and obj.beta_at(0.9) == 0
    for method in ("ibp", "crown-ibp"):
        o = CertifiedObjective(0.1, method, Ramp(0.0, 0.5))
        model.zero_grad()
        out = o(model, x, y, progress=0.3)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        # the robust loss is an upper bound of the clean loss at the same point
        with torch.no_grad():
            z = o.robust_logits(model.eval(), x, y, 0.06, 0.5)
            clean = model(x)
        model.train()
        assert (F.cross_entropy(z, y, reduction="none") >= F.cross_entropy(clean, y, reduction="none") - 1e-4).all()
        assert (z.gather(1, y[:, None]) == 0).all()


@pytest.mark.parametrize(
    "arch,options,eps", [("resnet-small", {"blocks": 1, "width": 4}, 0.005), ("wrn", {"depth": 10, "width": 1}, 0.001)]
)
def test_rtk_residual_architectures_are_sound(registry, arch, options, eps):
    """rtk's residual networks are traced through their blocks and bounded soundly."""
    from rtk.data.core import DataInfo

    spec = registry.get("model", arch)
    torch.manual_seed(0)
    info = DataInfo("tiny", 10, 3, 8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = _randomize_bn(spec.build(info, rtk.validate_options(spec.options, options, arch)))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    check_graph(bound_graph(model, x), model, x)
    box = linf_box(x, eps)
    samples = _corners_and_random(box, 40, torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(samples.flatten(0, 1)).view(40, len(x), -1)
    adv_min, adv_max = logit_extremes(model, x, eps, steps=10)
    widths = {}
    for method in ("ibp", "crown"):
        with torch.no_grad():
            lo, hi = output_bounds(model, box, method=method)
        assert (logits >= lo - TOL).all() and (logits <= hi + TOL).all(), method
        assert (adv_min >= lo - TOL).all() and (adv_max <= hi + TOL).all(), method
        widths[method] = float((hi - lo).mean())
    assert widths["crown"] < widths["ibp"]


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=3, kernel_size=4, stride=2, padding=1, bias=False),
        dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
    ],
)
def test_conv_unit_rows_equal_the_backward_step_of_one_hot_rows(conv):
    """CROWN's first backward step for a convolution's own neurons, built by F.fold, is the
    transposed convolution of one-hot specification rows."""
    from rtk.certify.ops import ConvOp, Pass

    torch.manual_seed(0)
    module = nn.Conv2d(**conv)
    x = torch.randn(2, conv["in_channels"], 9, 8)
    out = module(x)
    op = ConvOp(module, x.shape[1:], out.shape[1:])
    p = Pass()
    rows = torch.stack([torch.randperm(out[0].numel())[:7] for _ in range(2)])
    A = torch.zeros(2, 7, out[0].numel())
    A.scatter_(2, rows[..., None], 1.0)
    [expected], const = op.backward(p, A.reshape(2, 7, *out.shape[1:]), None)
    [got], got_const = op.unit_rows(p, rows)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if module.bias is None:
        assert const is None and got_const is None
    else:
        torch.testing.assert_close(got_const, const)


def _window_net() -> tuple[nn.Module, torch.Tensor]:
    """Convolutions of every shape the window route handles, before a linear head."""
    from rtk.models.layers import Normalize

    torch.manual_seed(3)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    model = nn.Sequential(
        Normalize((0.4, 0.5), (0.3, 0.25)),
        nn.Conv2d(2, 4, 3, padding=1),
        bn,
        nn.ReLU(),
        nn.Conv2d(4, 5, 4, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(5, 3, (3, 2), padding=(2, 1), dilation=(2, 1)),
        nn.Conv2d(3, 3, 3, padding=1),  # straight after another: its padding is not the other's neurons
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=(1, 2)),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).eval()
    x = torch.rand(2, 2, 12, 11)
    with torch.no_grad():
        model(x)
    return model, x


@pytest.mark.parametrize("intersect", [True, False])
def test_crown_in_receptive_field_windows_gives_the_dense_bounds(intersect, monkeypatch):
    """The backward pass of a convolution's neurons carried in windows of their receptive fields
    gives the bounds of the backward pass over whole maps, on every node (strides, dilation,
    padding beyond the map, batch norm, input normalization, a convolution without bias)."""
    import rtk.certify.bounds as bounds_mod
    from rtk.certify.ops import Pass

    model, x = _window_net()
    box = linf_box(x, 0.03)
    with torch.no_grad():
        graph = bound_graph(model, x)
        convs = [n.index for n in graph.nodes if graph.refine[n.index] and bounds_mod._window_chain(graph, n.index)]
        assert len(convs) == 3  # the first convolution's bounds are exact by IBP; the other three go in windows
        monkeypatch.setattr(bounds_mod, "TABLE_LIMIT", 0)  # no first-step tables: these maps are small
        monkeypatch.setattr(bounds_mod, "WINDOWS", False)
        dense = bounds_mod.crown_pass(graph, box, Pass(), intersect=intersect, strategy="backward")
        monkeypatch.setattr(bounds_mod, "WINDOWS", True)
        monkeypatch.setattr(bounds_mod, "WINDOW_SHARE", float("inf"))  # windows wherever the chain allows
        solved = []
        window_bound = bounds_mod._window_bound
        monkeypatch.setattr(
            bounds_mod, "_window_bound", lambda chain, *a: solved.append(chain[0].index) or window_bound(chain, *a)
        )
        windows = bounds_mod.crown_pass(graph, box, Pass(), intersect=intersect, strategy="backward")
    assert sorted(set(solved)) == convs
    for i, (a, b) in enumerate(zip(dense, windows)):
        torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-5, msg=f"node {i} lower")
        torch.testing.assert_close(b[1], a[1], rtol=0, atol=1e-5, msg=f"node {i} upper")
    assert any(not torch.equal(dense[i][0], bounds_mod.interval_pass(graph, box, Pass())[i][0]) for i in convs)
