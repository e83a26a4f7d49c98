"""Training building blocks: the inner attack, eps ramps, LR schedules, option validation,
the optimizer-state flattening used for exact resume. Fast: no full training runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rtk
from rtk.errors import ConfigError
from rtk.models.small import cnn_small
from rtk.training import (
    EpsSchedule,
    FastATObjective,
    LoopConfig,
    MARTObjective,
    PGDATObjective,
    Progress,
    StandardObjective,
    TRADESObjective,
    lr_factor,
    perturb,
    train_model,
)
from rtk.training.state import flatten_optimizer_state, unflatten_optimizer_state


@pytest.fixture(scope="module")
def model_and_batch(digits):
    torch.manual_seed(0)
    model = cnn_small(digits.info)
    # a few clean steps so the gradients are informative
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(digits.train.x[:512]), digits.train.y[:512]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), digits.test.x[:64], digits.test.y[:64]


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.8)])
def test_perturb_stays_in_budget_and_box_and_raises_the_loss(model_and_batch, norm, eps):
    model, x, y = model_and_batch
    x_adv = perturb(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert size.max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y).item(), F.cross_entropy(model(x_adv), y).item()
    assert adv > clean + 0.5, (clean, adv)
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())  # attacks never touch parameter gradients


def test_perturb_with_zero_eps_returns_the_input(model_and_batch):
    model, x, y = model_and_batch
    assert torch.equal(perturb(model, x, y, eps=0.0, alpha=0.1, steps=5), x)


def test_attack_runs_in_eval_mode_and_restores_train_mode(digits):
    seen = []
    model = torch.nn.Sequential(cnn_small(digits.info), torch.nn.BatchNorm1d(10))
    model[1].register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    model.train()
    x, y = digits.train.x[:16], digits.train.y[:16]
    PGDATObjective(eps=0.1, steps=3)(model, x, y, progress=0.5)
    assert seen[:3] == [False, False, False] and seen[3] is True and model.training
    seen.clear()
    PGDATObjective(eps=0.1, steps=3, attack_bn="train")(model, x, y, progress=0.5)
    assert seen == [True] * 4


def test_objectives_return_loss_and_logits(model_and_batch):
    model, x, y = model_and_batch
    model.train()
    for obj in (
        StandardObjective(),
        PGDATObjective(eps=0.1, steps=2),
        TRADESObjective(eps=0.1, steps=2, beta=6),
        MARTObjective(eps=0.1, steps=2),
        FastATObjective(eps=0.1),
    ):
        out = obj(model, x, y, progress=0.0)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        logits = out.adv_logits if out.adv_logits is not None else out.logits
        assert logits.shape == (len(y), 10)
    assert FastATObjective(eps=0.1).step_size == pytest.approx(0.125)  # 1.25 * eps (Wong et al.)
    assert PGDATObjective(eps=8 / 255, steps=10).step_size == pytest.approx(2 / 255)  # 2.5 * eps / steps
    model.eval()


def test_eps_ramp_in_epochs():
    sched = EpsSchedule(0.3, warmup=1, ramp=2)
    at = lambda e: sched(Progress.at_epoch(e, 10, steps_per_epoch=100))
    assert at(0.5) == 0.0 and at(1.0) == 0.0 and at(2.0) == pytest.approx(0.15) and at(3.0) == pytest.approx(0.3)
    assert at(9) == pytest.approx(0.3)
    assert EpsSchedule(0.3)(0.1) == 0.3  # constant radius accepts a bare float
    with pytest.raises(TypeError, match="Progress"):
        sched(0.5)
    p = Progress(250, 1000, 100)
    assert float(p) == 0.25 and p.epoch == 2.5 and p.epochs == 10


def test_eps_warmup_and_ramp_take_one_unit_in_every_trainer(caplog):
    """A number is epochs and a percentage a share of the run, for the PGD trainers and the
    certified ones alike; IBP's old fraction keys give the same schedule, with a deprecation line."""
    reg = rtk.default_registry()
    pgd, ibp = reg.get("trainer", "pgd-at"), reg.get("trainer", "ibp")

    def build(spec, **opts):
        return spec.build(rtk.validate_options(spec.options, opts, "trainer"))

    at = lambda obj, e: obj.eps_at(Progress.at_epoch(e, 10, steps_per_epoch=100))  # noqa: E731
    share = build(pgd, eps=0.2, eps_ramp="40%")  # 4 of 10 epochs
    assert at(share, 0) == 0 and at(share, 2) == pytest.approx(0.1) and at(share, 4) == pytest.approx(0.2)
    epochs = build(ibp, eps=0.2, eps_warmup=1, eps_ramp=2)  # epochs in a certified trainer
    assert at(epochs, 1) == 0 and at(epochs, 2) == pytest.approx(0.1) and at(epochs, 3) == pytest.approx(0.2)
    with caplog.at_level("WARNING"):
        old = build(ibp, eps=0.2, warmup=0.1, ramp=0.3)
    assert "deprecated" in caplog.text and "eps_ramp = '30%'" in caplog.text
    new = build(ibp, eps=0.2, eps_warmup="10%", eps_ramp="30%")
    for e in (0, 1, 1.5, 2.5, 4, 9):
        assert at(old, e) == pytest.approx(at(new, e))
    assert at(build(ibp, eps=0.2), 3) == pytest.approx(0.1)  # defaults unchanged: 10% warm-up, 40% ramp
    for bad, needle in (
        ({"ramp": 0.3, "eps_ramp": "30%"}, "not both"),
        ({"eps_ramp": "150%"}, "out of range"),
        ({"eps_warmup": "soon"}, "a number of epochs"),
    ):
        with pytest.raises(ConfigError, match=needle):
            build(ibp, **bad)


def test_lr_schedules_per_step():
    spe = 10
    pw = LoopConfig(epochs=10, lr=0.1, schedule="piecewise", milestones=[5, 8])
    assert [round(lr_factor(s, pw, spe), 6) for s in (0, 49, 50, 79, 80, 99)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lr_factor(0, LoopConfig(epochs=4, schedule="piecewise"), spe) == 1  # default milestones 2 and 3
    assert lr_factor(30, LoopConfig(epochs=4, schedule="piecewise"), spe) == pytest.approx(0.01)
    cos = LoopConfig(epochs=10, schedule="cosine")
    assert lr_factor(0, cos, spe) == pytest.approx(1.0) and lr_factor(50, cos, spe) == pytest.approx(0.5)
    assert lr_factor(99, cos, spe) < 0.01
    oc = LoopConfig(epochs=10, schedule="one-cycle", pct_start=0.4)
    f = [lr_factor(s, oc, spe) for s in range(100)]
    assert max(f) == pytest.approx(f[40], abs=0.02) and f[0] < 0.02 and f[-1] < 0.02 and max(f) <= 1
    warm = LoopConfig(epochs=10, lr_warmup=2)
    assert (
        lr_factor(0, warm, spe) == pytest.approx(1 / 20)
        and lr_factor(19, warm, spe) == 1
        and lr_factor(50, warm, spe) == 1
    )


@pytest.mark.parametrize(
    "opts,needle",
    [
        ({"schedule": "one-cycle", "milestones": [2]}, "milestones apply only to schedule = 'piecewise'"),
        ({"schedule": "cosine", "pct_start": 0.3}, "pct_start applies only to schedule = 'one-cycle'"),
        ({"schedule": "one-cycle", "lr_warmup": 1}, "lr_warmup cannot be combined"),
        ({"optimizer": "adam", "momentum": 0.5}, "momentum and nesterov apply only to optimizer = 'sgd'"),
        ({"schedule": "piecewise", "milestones": [3, 20], "epochs": 10}, "must lie strictly between 0 and epochs"),
        ({"epochs": 3, "lr_warmup": 3}, "must be shorter than training"),
        ({"eval_size": 0, "monitor": "test_robust_acc"}, "needs eval_size > 0"),
        ({"eval_every": 0, "patience": 2}, "eval_every = 0 turns them off"),
        ({"lr": -1}, "greater than 0"),
    ],
)
def test_incompatible_loop_options_are_refused(opts, needle):
    with pytest.raises(ConfigError) as err:
        rtk.validate_options(LoopConfig, opts, where="loop")
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "trainer,opts,needle",
    [
        ("fast-at", {"steps": 3}, "fast-at takes exactly one FGSM step"),
        ("pgd-at", {"eps": 2}, "out of range for Linf"),
        ("pgd-at", {"eps": 0}, "greater than 0"),
        ("trades", {"beta": -1}, "greater than or equal to 0"),
        ("mart", {"epz": 0.1}, "mart.epz: unknown key (did you mean 'eps'"),
    ],
)
def test_trainer_options_are_validated(registry, trainer, opts, needle):
    spec = registry.get("trainer", trainer)
    with pytest.raises(ConfigError) as err:
        rtk.validate_options(spec.options, opts, where=f"trainer {trainer}")
    assert needle in str(err.value)
    assert rtk.validate_options(spec.options, {"eps": "8/255"}, where="t").eps == pytest.approx(8 / 255)


def test_every_registered_trainer_builds_an_objective(registry, digits):
    torch.manual_seed(0)
    model = cnn_small(digits.info).train()
    x, y = digits.train.x[:8], digits.train.y[:8]
    names = registry.names("trainer")
    assert {"standard", "pgd-at", "trades", "mart", "fast-at"} <= set(names)
    for name in names:
        spec = registry.get("trainer", name)
        obj = spec.build(spec.options())
        out = obj(model, x, y, progress=Progress(0, 10, 5))
        assert torch.isfinite(out.loss), name


def test_preflight_errors_before_any_work(digits):
    from rtk.data import DatasetBundle, TensorSplit

    model = cnn_small(digits.info)
    empty = DatasetBundle(digits.info, TensorSplit(digits.train.x[:0], digits.train.y[:0]), digits.test)
    with pytest.raises(ConfigError, match="training split of dataset 'digits' is empty"):
        train_model(model, StandardObjective(), empty, LoopConfig(epochs=1))
    with pytest.raises(ConfigError, match=r"eps = 9 is out of range for L2 on inputs of shape \[1, 8, 8\]"):
        train_model(model, PGDATObjective(eps=9.0, norm="L2"), digits, LoopConfig(epochs=1))
    with pytest.raises(ConfigError, match="ramp ends at epoch 5, after training ends"):
        train_model(model, PGDATObjective(eps=0.1, eps_ramp=5), digits, LoopConfig(epochs=2))
    with pytest.raises(ConfigError, match="monitor = 'val_acc' is not a history column"):
        train_model(model, StandardObjective(), digits, LoopConfig(epochs=1, monitor="val_acc"))
    with pytest.raises(ConfigError, match="needs a robust evaluation"):
        train_model(model, StandardObjective(), digits, LoopConfig(epochs=1, monitor="test_robust_acc"))
    with pytest.raises(ConfigError, match="need recipe="):
        train_model(model, StandardObjective(), digits, LoopConfig(epochs=1), out="somewhere")


def test_optimizer_state_flattening_round_trips_exactly():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    for opt in (
        torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4),
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    ):
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(5, 4)).pow(2).sum().backward()
            opt.step()
        tensors: dict = {}
        meta = flatten_optimizer_state(opt.state_dict(), tensors)
        import json

        back = unflatten_optimizer_state(json.loads(json.dumps(meta)), tensors)
        ref = opt.state_dict()
        assert back["param_groups"] == ref["param_groups"]
        for pid, st in ref["state"].items():
            for k, v in st.items():
                assert torch.equal(back["state"][pid][k], v), (type(opt).__name__, k)
        assert all(not isinstance(v, torch.Tensor) for g in meta["param_groups"] for v in g.values())


def test_amp_on_cpu_trains_in_float32_with_a_warning(digits, caplog):
    torch.manual_seed(0)
    model = cnn_small(digits.info)
    with caplog.at_level("WARNING", logger="rtk.training.loop"):
        res = train_model(model, StandardObjective(), digits, LoopConfig(epochs=1, amp=True, batch_size=256))
    assert "amp was requested but the device is cpu" in caplog.text
    assert math.isfinite(res.history.train_loss.iloc[0])
    assert next(model.parameters()).dtype == torch.float32


def test_every_loop_option_and_trainer_option_is_documented(registry):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    names = set(LoopConfig.model_fields)
    for trainer in ("standard", "pgd-at", "trades", "mart", "fast-at"):
        assert f"`{trainer}`" in doc, trainer
        names |= set(registry.get("trainer", trainer).options.model_fields)
    names |= {"params", "resume", "source", "model", "trainer"}  # stage-only options
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"undocumented in docs/training.md: {missing}"
