"""Loop features other components build on: training only some parameters, step hooks,
extra metrics, early stopping, restoring the best epoch, data sharding, LR in the history."""

from __future__ import annotations

import pytest
import torch

from rtk.data import DatasetBundle
from rtk.models.small import cnn_small
from rtk.training import (
    Callback,
    LoopConfig,
    PGDATObjective,
    Progress,
    StandardObjective,
    fit,
    train_model,
)


@pytest.fixture(scope="module")
def small(digits):
    return DatasetBundle(digits.info, digits.train.subset(torch.arange(400)), digits.test.subset(torch.arange(100)))


def _model(digits, seed=0):
    torch.manual_seed(seed)
    return cnn_small(digits.info)


def test_train_only_given_parameters_with_step_hooks(digits, small):
    """HYDRA-style use: optimise some parameters, re-apply a mask after every step."""
    model = _model(digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = (torch.rand_like(model.fc1.weight) > 0.5).float()

    class Masker(Callback):
        def __init__(self):
            self.calls = {
                "on_train_start": 0,
                "on_batch_start": 0,
                "before_step": 0,
                "after_step": 0,
                "on_epoch_end": 0,
            }

        def on_train_start(self, state):
            self.calls["on_train_start"] += 1
            state.model.fc1.weight.data.mul_(mask)

        def on_batch_start(self, state):
            self.calls["on_batch_start"] += 1
            assert state.x is not None and isinstance(state.progress, Progress)

        def before_step(self, state):
            self.calls["before_step"] += 1
            assert state.model.fc1.weight.grad is not None and state.model.conv1.weight.grad is None

        def after_step(self, state):
            self.calls["after_step"] += 1
            state.model.fc1.weight.data.mul_(mask)

        def on_epoch_end(self, state, row):
            self.calls["on_epoch_end"] += 1

    masker = Masker()
    for p in model.parameters():
        p.requires_grad_(False)
    params = [model.fc1.weight, model.head.weight]
    for p in params:
        p.requires_grad_(True)
    res = train_model(
        model,
        StandardObjective(),
        small,
        LoopConfig(epochs=2, batch_size=100, eval_every=0),
        parameters=params,
        callbacks=[masker],
    )
    assert masker.calls == {
        "on_train_start": 1,
        "on_batch_start": 8,
        "before_step": 8,
        "after_step": 8,
        "on_epoch_end": 2,
    }
    after = model.state_dict()
    for k in ("conv1.weight", "conv1.bias", "conv2.weight", "fc1.bias", "head.bias"):
        assert torch.equal(before[k], after[k]), k  # frozen
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert torch.equal(after["fc1.weight"] * (1 - mask), torch.zeros_like(mask))  # the mask held
    assert res.best_epoch is None and res.history.test_clean_acc.isna().all()  # eval_every = 0: no evaluation


class Score(Callback):
    """Adds a column that rises for two epochs, then falls."""

    metrics = ("score",)

    def on_epoch_end(self, state, row):
        row["score"] = [0.5, 0.7, 0.6, 0.55, 0.5, 0.4][state.epoch - 1]


def test_early_stopping_and_restore_best_on_a_callback_metric(digits, small):
    seen = []
    model = _model(digits)
    res = train_model(
        model,
        StandardObjective(),
        small,
        LoopConfig(
            epochs=6, batch_size=100, monitor="score", patience=2, restore_best=True, eval_size=0, eval_train_size=0
        ),
        callbacks=[Score()],
        on_epoch=lambda e, row: seen.append({k: v.clone() for k, v in model.state_dict().items()}),
    )
    assert res.stop_reason == "early-stopped" and res.epochs_run == 4 and len(seen) == 4
    assert res.best_epoch == 2 and res.best_value == 0.7 and res.history.score.tolist() == [0.5, 0.7, 0.6, 0.55]
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[1][k]), k  # the weights of epoch 2 are back


def test_epoch_indices_shard_the_data_and_history_records_the_lr(digits, small):
    shard = torch.arange(0, 400, 2)  # this "process" sees every other example
    seen: list[int] = []

    class Count(Callback):
        def on_batch_start(self, state):
            seen.append(len(state.y))

    res = train_model(
        _model(digits),
        StandardObjective(),
        small,
        LoopConfig(epochs=4, batch_size=50, schedule="one-cycle", lr=0.2, eval_every=2, eval_size=0),
        epoch_indices=lambda epoch: shard[torch.randperm(len(shard), generator=torch.Generator().manual_seed(epoch))],
        callbacks=[Count()],
    )
    assert sum(seen) == 4 * 200 and len(seen) == 16
    lr = res.history.lr.tolist()
    assert lr[0] < 0.05 and max(lr) == lr[2] and lr[2] > 0.15  # one-cycle: rise to ~0.2 at mid-training, then fall
    assert res.history.test_clean_acc.isna().tolist() == [True, False, True, False]


def test_default_monitor_is_clean_accuracy_for_a_standard_trainer(digits, small):
    # a standard model's robust accuracy is ~0, so by default its best epoch is picked on clean
    # accuracy even when the loop evaluates robustness; asked for explicitly, robust it is
    cfg = dict(epochs=1, batch_size=100, eval_size=50, eval_eps=0.1, eval_steps=1)
    h = fit(_model(digits), StandardObjective(), small, LoopConfig(**cfg))
    assert h.attrs["monitor"] == "test_clean_acc" and h.test_robust_acc.notna().all()
    h = fit(_model(digits), StandardObjective(), small, LoopConfig(**cfg, monitor="test_robust_acc"))
    assert h.attrs["monitor"] == "test_robust_acc"


def test_eps_ramp_is_recorded_per_epoch(digits, small):
    obj = PGDATObjective(eps=0.2, steps=2, eps_warmup=1, eps_ramp=2)
    h = fit(_model(digits), obj, small, LoopConfig(epochs=4, batch_size=100, eval_every=4, eval_size=50, eval_steps=2))
    assert h.eps.round(4).tolist() == [0.0, 0.075, 0.175, 0.2]  # at each epoch's last step
    assert h.attrs["monitor"] == "test_robust_acc" and h.test_robust_acc.notna().tolist() == [False] * 3 + [True]
