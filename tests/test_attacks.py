"""Attack plugins: a contract over every registered attack, option validation, and the
explicit model adapters (tuple/dict outputs, normalized inputs)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from evalhelpers import fit_full_batch
from torch import nn

import rtk
from rtk.evaluation import ModelOutputError, delta_norms

_REG = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


ATTACKS = _REG.names("attack")
#: options that keep the expensive defaults short (applied only where the attack has them)
QUICK = {"steps": 5, "queries": 60, "n_target_classes": 3}


def quick_options(spec, **extra):
    data = {k: v for k, v in QUICK.items() if k in spec.options.model_fields}
    data.update(extra)
    return rtk.validate_options(spec.options, data, spec.name)


@pytest.fixture(scope="module")
def tiny(digits):
    """A small MLP trained for a second on digits, and 24 test examples."""
    torch.manual_seed(0)
    from rtk.models.small import mlp

    return fit_full_batch(mlp(digits.info, hidden=(32,)), digits, steps=60, n_test=24)


def test_every_attack_the_issue_names_is_registered():
    for name in (
        "fgsm",
        "pgd",
        "pgd-l2",
        "apgd-ce",
        "apgd-dlr",
        "apgd-t",
        "fab",
        "square",
        "cw-l2",
        "deepfool",
        "autoattack",
    ):
        assert name in ATTACKS


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_contract(name, tiny):
    """Within bounds, in [0, 1], finite; deterministic under its seed without touching the
    global RNG; never more accurate than clean."""
    model, x, y = tiny
    spec = _REG.get("attack", name)
    opts = quick_options(spec)
    attack = spec.build(model, opts)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    x_adv = attack(x, y)
    assert torch.equal(states[0], torch.get_rng_state()), "the attack changed torch's global RNG"
    assert states[1] == random.getstate() and np.array_equal(states[2], np.random.get_state()[1])
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    norm = rtk.evaluation.attack_norm(spec, opts)
    if norm != "none":
        assert delta_norms(x, x_adv)[norm].max() <= opts.eps * (1 + 1e-5) + 1e-5
    assert torch.equal(attack(x, y), x_adv), "not deterministic under its seed"
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) == y
    assert adv.sum() <= clean.sum()
    assert not (adv & ~clean).any(), "an attack made a misclassified example correct"


@pytest.mark.parametrize("name", ["pgd", "fgsm", "square", "pgd-l2"])
def test_seed_changes_random_attacks_and_targeted_mode_works(name, tiny):
    model, x, y = tiny
    spec = _REG.get("attack", name)
    eps = {"pgd-l2": 2.0}.get(name, 0.3)
    a = spec.build(model, quick_options(spec, eps=eps, seed=0))(x, y)
    t = spec.build(model, quick_options(spec, eps=eps, targeted=True, target="least-likely"))(x, y)
    assert torch.isfinite(t).all() and delta_norms(x, t)["Linf" if name != "pgd-l2" else "L2"].max() <= eps + 1e-5
    if name != "fgsm":  # FGSM has no randomness
        b = spec.build(model, quick_options(spec, eps=eps, seed=1))(x, y)
        assert not torch.equal(a, b)


def test_restarts_never_weaken_pgd(tiny):
    model, x, y = tiny
    spec = _REG.get("attack", "pgd")
    one = spec.build(model, quick_options(spec, eps=0.1, steps=3))(x, y)
    five = spec.build(model, quick_options(spec, eps=0.1, steps=3, restarts=5))(x, y)
    with torch.no_grad():
        assert (model(five).argmax(1) == y).sum() <= (model(one).argmax(1) == y).sum()


def test_options_are_validated():
    pgd = _REG.get("attack", "pgd").options
    assert rtk.validate_options(pgd, {"eps": "8/255"}, "a").eps == pytest.approx(8 / 255)
    assert rtk.validate_options(pgd, {"alpha": "1/255"}, "a").step_size == pytest.approx(1 / 255)
    with pytest.raises(rtk.ConfigError, match="epz: unknown key.*'eps'"):
        rtk.validate_options(pgd, {"epz": 0.1}, "a")
    with pytest.raises(rtk.ConfigError, match="eps"):
        rtk.validate_options(pgd, {"eps": 2}, "a")
    with pytest.raises(rtk.ConfigError, match="steps"):
        rtk.validate_options(pgd, {"steps": 0}, "a")
    apgd = _REG.get("attack", "apgd-ce").options
    assert rtk.validate_options(apgd, {"norm": "L2"}, "a").eps == pytest.approx(0.5)
    assert rtk.validate_options(apgd, {}, "a").eps == pytest.approx(8 / 255)
    with pytest.raises(rtk.ConfigError, match="norm"):
        rtk.validate_options(apgd, {"norm": "L3"}, "a")
    with pytest.raises(rtk.ConfigError, match="larger than 1"):
        rtk.validate_options(apgd, {"eps": 1.5}, "a")
    assert rtk.validate_options(apgd, {"norm": "L2", "eps": 1.5}, "a").eps == 1.5
    with pytest.raises(rtk.ConfigError, match="output"):
        rtk.validate_options(pgd, {"output": "second"}, "a")
    with pytest.raises(rtk.ConfigError, match="targeted"):
        rtk.validate_options(_REG.get("attack", "deepfool").options, {"targeted": True}, "a")
    assert rtk.validate_options(_REG.get("attack", "apgd-t").options, {}, "a").targeted is True


class TupleNet(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        out = self.inner(x)
        return (out, x.mean()) if self.kind == "tuple" else {"features": x.flatten(1), "logits": out}


@pytest.mark.parametrize("kind,output", [("tuple", "first"), ("dict", "key:logits")])
def test_tuple_or_dict_outputs_need_an_explicit_option(kind, output, tiny):
    model, x, y = tiny
    spec = _REG.get("attack", "pgd")
    wrapped = TupleNet(model, kind)
    with pytest.raises(ModelOutputError) as err:
        spec.build(wrapped, quick_options(spec))(x, y)
    assert f'output = "{output}"' in str(err.value)
    got = spec.build(wrapped, quick_options(spec, output=output))(x, y)
    assert torch.equal(got, spec.build(model, quick_options(spec))(x, y))


def test_normalize_option_matches_a_model_that_normalizes_itself(tiny, digits):
    """A model trained on normalized inputs is attacked in [0, 1] pixel space."""
    from rtk.models.small import mlp

    full, x, y = tiny
    inner = full[1:]  # the same MLP without its Normalize layer: it expects normalized inputs
    assert isinstance(full[0], rtk.models.Normalize)
    spec = _REG.get("attack", "pgd")
    norm = {"mean": list(digits.info.mean), "std": list(digits.info.std)}
    a = spec.build(inner, quick_options(spec, normalize=norm))(x, y)
    b = spec.build(full, quick_options(spec))(x, y)
    assert torch.allclose(a, b, atol=1e-6)
    assert mlp  # the architecture used above


def test_attack_leaves_parameters_and_their_grads_alone(tiny):
    model, x, y = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = None
    for name in ("cw-l2", "deepfool", "fab"):
        spec = _REG.get("attack", name)
        spec.build(model, quick_options(spec))(x, y)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
