"""Every sanity check passes on a healthy model and fires on a deliberately broken one:
BatchNorm stuck in train mode, softmax outputs, a randomized model, a model that adapts
while it is evaluated, an input-rounding (gradient-masking) model, an attack stopped too
early, an attack that leaves its budget, inputs outside [0, 1]."""

from __future__ import annotations

import warnings

import pytest
import torch
from evalhelpers import REGISTRY, attack, cached_digits_cnn
from torch import nn

import rtk
from rtk.evaluation import CHECKS, CheckSettings, SanityCheckError, SanityCheckWarning, evaluate, make_units

#: budget 2: no check is skipped for work on these tiny evaluations (the skip is tested on its own)
SETTINGS = CheckSettings(examples=60, black_box_queries=100, budget=2.0)
N = 150


@pytest.fixture(scope="module")
def healthy(digits, tmp_path_factory):
    """The cnn of test_evaluation_engine.py, trained once per session."""
    return cached_digits_cnn(digits, tmp_path_factory)


def run(model, digits, units=None, split=None, **kw):
    units = units or make_units([attack("pgd", steps=5, eps="16/255")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SanityCheckWarning)
        return evaluate(
            model,
            split if split is not None else digits.test,
            units,
            indices=kw.pop("indices", range(N)),
            checks=kw.pop("checks", SETTINGS),
            **kw,
        )


def statuses(res) -> dict[str, str]:
    return {c.name: c.status for c in res.checks}


def failed(res) -> set[str]:
    return {c.name for c in res.checks if c.passed is False}


# ------------------------------------------------------------------------ broken models
class StuckBN(nn.BatchNorm2d):
    """A BatchNorm that ignores eval(): it keeps using batch statistics and updating its
    running averages."""

    def train(self, mode: bool = True):
        return super().train(True)


class Prepend(nn.Module):
    def __init__(self, first: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.first, self.model = first, model

    def forward(self, x):
        return self.model(self.first(x))


class Softmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class Randomized(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 3 * torch.randn(len(x), 10)


class Adapting(nn.Module):
    """Test-time adaptation gone wrong: wrong on every other example (shifted classes)
    until it has seen three gradient computations, right afterwards. The evaluation's clean
    pass comes before the attack's gradients, the scoring of adversarial examples after."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.grad_calls = model, 0

    def forward(self, x):
        if x.requires_grad:
            self.grad_calls += 1
        out = self.model(x)
        if self.grad_calls >= 3:
            return out
        shifted = out.roll(1, dims=1)
        odd = (torch.arange(len(x)) % 2 == 1)[:, None]
        return torch.where(odd, shifted, out)


class Rounding(nn.Module):
    """Quantizes its inputs to 1/8 steps: the input gradient is exactly zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 8) / 8)


def _broken_attack(kind: str):
    def build(model, opts):
        def attack(x, y):
            if kind == "over":
                return (x + 2 * opts.eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
            if kind == "range":
                return x + 0.5
            return x * float("nan")

        return attack

    return rtk.AttackSpec(
        name=f"broken-{kind}",
        summary="a broken attack",
        build=build,
        options=REGISTRY.get("attack", "fgsm").options,
        norm="Linf",
    )


# ------------------------------------------------------------------------ tests
def test_every_check_passes_on_a_healthy_model(healthy, digits):
    res = run(healthy, digits)
    assert statuses(res) == {name: "pass" for name in CHECKS}, [c.to_dict() for c in res.checks if c.passed is not True]
    assert res.clean_accuracy > 0.9 and res.headline_accuracy < res.clean_accuracy


def test_batchnorm_left_in_train_mode(healthy, digits):
    res = run(Prepend(StuckBN(1), healthy), digits)
    assert {"eval_mode", "model_state_unchanged", "batch_independent"} <= failed(res)
    detail = {c.name: c.detail for c in res.checks}
    assert "first" in detail["eval_mode"] and "running_mean" in detail["model_state_unchanged"]


def test_softmax_outputs(healthy, digits):
    res = run(Softmax(healthy), digits, units=make_units([attack("fgsm")]))
    assert "outputs_are_logits" in failed(res)


def test_randomized_model(healthy, digits):
    torch.manual_seed(0)
    res = run(Randomized(healthy), digits)
    assert {"deterministic", "batch_independent", "rescore_reproduces"} <= failed(res)


def test_model_that_changes_while_evaluated(healthy, digits):
    res = run(Adapting(healthy), digits, batch_size=N)
    assert "robust_le_clean" in failed(res)
    assert "correct under attack" in {c.name: c.detail for c in res.checks}["robust_le_clean"]


def test_gradient_masking_by_input_rounding(healthy, digits):
    res = run(Rounding(healthy), digits, units=make_units([attack("pgd", steps=5, eps="32/255")]))
    assert {"zero_gradients", "unbounded_eps", "black_box"} <= failed(res)
    # a PGD without random start does not move at all: random noise beats it
    res = run(Rounding(healthy), digits, units=make_units([attack("pgd", steps=5, eps="16/255", random_start=False)]))
    assert "random_noise" in failed(res)


def test_attack_stopped_too_early(healthy, digits):
    weak = make_units([attack("pgd", steps=2, eps="32/255", step_size="8/255", random_start=False)])
    res = run(healthy, digits, units=weak, checks=SETTINGS.model_copy(update={"budget": 1.0}))
    assert "more_steps" in failed(res)
    assert (
        statuses(run(healthy, digits, units=make_units([attack("pgd", steps=20, eps="16/255")])))["more_steps"]
        == "pass"
    )


@pytest.mark.parametrize("kind,reason", [("over", "over budget"), ("range", "outside [0, 1]"), ("nan", "not finite")])
def test_attack_that_leaves_its_budget(kind, reason, healthy, digits):
    spec = _broken_attack(kind)
    units = make_units([(spec, rtk.validate_options(spec.options, {"eps": 0.05}, "x"), spec.name)])
    res = run(healthy, digits, units=units)
    assert "perturbation_bounds" in failed(res)
    assert reason in {c.name: c.detail for c in res.checks}["perturbation_bounds"]
    assert res.headline_accuracy == pytest.approx(res.clean_accuracy)  # invalid examples never count as broken


def test_inputs_outside_the_unit_range(healthy, digits):
    from rtk.data import TensorSplit

    shifted = TensorSplit(digits.test.x * 2 - 1, digits.test.y)  # normalized outside the model
    res = run(healthy, digits, split=shifted, units=make_units([attack("fgsm")]))
    assert "inputs_in_range" in failed(res)


def test_strict_is_fatal_and_default_warns(healthy, digits):
    with pytest.raises(SanityCheckError, match="outputs_are_logits") as err:
        evaluate(
            Softmax(healthy), digits.test, make_units([attack("fgsm")]), indices=range(60), checks=SETTINGS, strict=True
        )
    assert err.value.result.failed_checks
    with pytest.warns(SanityCheckWarning, match="outputs_are_logits"):
        evaluate(Softmax(healthy), digits.test, make_units([attack("fgsm")]), indices=range(60), checks=SETTINGS)


def test_masking_checks_respect_their_budget(healthy, digits):
    tight = SETTINGS.model_copy(update={"budget": 0.0, "min_examples": 5})
    res = run(healthy, digits, checks=tight)
    sizes = {c.name: c.n for c in res.checks}
    assert sizes["more_steps"] <= 5 and sizes["unbounded_eps"] == 5 and sizes["black_box"] <= 5
    assert sizes["outputs_are_logits"] == 5 and sizes["deterministic"] == 5
    assert res.work["checks"] > 0 and res.checks_overhead == res.work["checks"] / res.work["evaluation"]
    assert run(healthy, digits, checks=False).checks == []
    # the budget is a share of the evaluation's work (above the floor of min_examples)
    share = CheckSettings(budget=0.3, min_examples=1, black_box_queries=100)
    res = run(healthy, digits, checks=share, indices=None)
    assert 0 < res.checks_overhead <= share.budget + 1e-9, res.work
    assert {c.name: c.n for c in res.checks}["unbounded_eps"] > 1
    skipped = {c.name: c for c in run(healthy, digits, checks=tight).checks if c.passed is None}
    assert set(skipped) == {"more_steps"} and "work budget" in skipped["more_steps"].detail


def test_same_seed_same_checks(healthy, digits, monkeypatch):
    """The checks' budget is work, not time: one seed gives one checks table, whatever the load, here a
    clock on which every reading is 1000 s after the last (issue 15, item 8)."""
    import itertools
    import types

    from rtk.evaluation import engine

    suite = make_units([attack("pgd", steps=5, eps="16/255"), attack("fgsm")])
    settings = CheckSettings(examples=40, black_box_queries=30)
    a = run(healthy, digits, units=suite, checks=settings, seed=3).checks_table
    ticks = itertools.count()
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: 1000.0 * next(ticks)))
    b = run(healthy, digits, units=suite, checks=settings, seed=3).checks_table
    assert a.equals(b), (a, b)
    assert set(a.status) <= {"pass", "fail", "skipped"} and (a.status == "pass").sum() >= 10


class NaNOut(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * float("nan")


def test_nan_outputs_fail_outputs_are_logits(healthy, digits):
    """An all-NaN model is not a model that returns logits (issue 15, item 9)."""
    res = run(NaNOut(healthy), digits, units=make_units([attack("fgsm")]))
    check = {c.name: c for c in res.checks}["outputs_are_logits"]
    assert check.passed is False and "NaN" in check.detail


def test_a_third_party_attack_takes_part_through_its_record(healthy, digits):
    """The engine knows attacks by their record's capabilities, not by name: a black-box attack
    registered under another name counts as the suite's black-box attack, and a white-box one
    whose effort option is not called `steps` is doubled by more_steps."""
    square = REGISTRY.get("attack", "square")
    pgd = REGISTRY.get("attack", "pgd")

    class Iters(rtk.Options):
        eps: float = 16 / 255
        iters: int = 3

    def build_pgd(model, o):
        inner = pgd.build(model, rtk.validate_options(pgd.options, {"eps": o.eps, "steps": o.iters}, "pgd"))
        return inner

    mine = rtk.AttackSpec(name="my-pgd", summary="pgd, iters", options=Iters, build=build_pgd, effort="iters")
    search = rtk.AttackSpec(
        name="my-search", summary="square", options=square.options, build=square.build, black_box=True, effort="queries"
    )
    units = make_units(
        [
            (mine, rtk.validate_options(Iters, {}, "my-pgd"), "my-pgd"),
            (search, rtk.validate_options(square.options, {"eps": 16 / 255, "queries": 50}, "my-search"), "my-search"),
        ]
    )
    res = run(healthy, digits, units=units)
    detail = {c.name: c.detail for c in res.checks}
    status = statuses(res)
    assert status["black_box"] != "skipped" and "my-search in the suite" in detail["black_box"], detail
    assert status["more_steps"] != "skipped" and "iters = 6" in detail["more_steps"], detail
