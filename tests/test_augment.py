"""Training-data augmentation (random crop after padding, horizontal flip): the batch function,
its options, and that the loop applies it to training batches only, for every trainer and the
prune stage's phases."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import rtk
import rtk.training.loop as loop_module
from rtk.data import DatasetBundle, augment_batch, batches
from rtk.models.small import cnn_small
from rtk.training import Callback, LoopConfig, StandardObjective, train_model


def _images(n=16, c=3, h=6, w=7, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_batch_and_the_input_is_not_changed():
    x = _images()
    before = x.clone()
    a = augment_batch(x, ["crop", "flip"], padding=2, generator=torch.Generator().manual_seed(3))
    b = augment_batch(x, ["crop", "flip"], padding=2, generator=torch.Generator().manual_seed(3))
    c = augment_batch(x, ["crop", "flip"], padding=2, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)
    assert augment_batch(x, [], generator=torch.Generator()) is x


def test_flip_really_flips_about_half_the_images():
    x = _images(n=64)
    out = augment_batch(x, ["flip"], generator=torch.Generator().manual_seed(0))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5  # the draws it made
    for i in range(64):
        assert torch.equal(out[i], x[i].flip(-1) if flipped[i] else x[i])
    assert 16 < int(flipped.sum()) < 48
    assert not torch.equal(x[0], x[0].flip(-1))  # so a flip is visible


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_is_the_padded_image_shifted(mode):
    x, p = _images(n=32), 2
    out = augment_batch(x, ["crop"], padding=p, padding_mode=mode, generator=torch.Generator().manual_seed(1))
    offsets = torch.randint(0, 2 * p + 1, (2, 32), generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (p, p, p, p), mode="constant" if mode == "zero" else "reflect")
    shifts = set()
    for i in range(32):
        oy, ox = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], padded[i, :, oy : oy + 6, ox : ox + 7])
        # the content is the image moved by (p - oy, p - ox): what overlaps is unchanged
        dy, dx = p - oy, p - ox
        src = x[i, :, max(0, -dy) : 6 - max(0, dy), max(0, -dx) : 7 - max(0, dx)]
        dst = out[i, :, max(0, dy) : 6 - max(0, -dy), max(0, dx) : 7 - max(0, -dx)]
        assert torch.equal(src, dst)
        if mode == "zero" and dy > 0:
            assert out[i, :, :dy].abs().sum() == 0  # zero padding came in at the top
        shifts.add((dy, dx))
    assert len(shifts) > 5


def test_crop_and_flip_is_a_crop_then_a_flip():
    x, p = _images(n=32), 3
    both = augment_batch(x, ["flip", "crop"], padding=p, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 2 * p + 1, (2, 32), generator=g)
    flips = torch.rand(32, generator=g) < 0.5
    padded = F.pad(x, (p, p, p, p))
    for i in range(32):
        crop = padded[i, :, offsets[0, i] : offsets[0, i] + 6, offsets[1, i] : offsets[1, i] + 7]
        assert torch.equal(both[i], crop.flip(-1) if flips[i] else crop)


def test_bad_input_is_refused_with_the_key():
    with pytest.raises(
        rtk.RtkError, match="crop_padding = 7 does not fit 6 x 7 images: allowed 1 <= crop_padding <= 5"
    ):
        augment_batch(_images(), ["crop"], padding=7)
    with pytest.raises(rtk.RtkError, match="unknown augmentation 'rotate'; allowed: crop, flip"):
        augment_batch(_images(), ["rotate"])
    with pytest.raises(rtk.RtkError, match=r"\[B, C, H, W\]"):
        augment_batch(torch.rand(4, 10), ["flip"])


EXPERIMENT = {
    "name": "augment-test",
    "seed": 0,
    "dataset": {"name": "digits", "limit_train": 200, "limit_test": 60},
    "models": {"m": {"arch": "cnn-small"}},
    "stages": [],
}


def _plan(stage):
    exp = copy.deepcopy(EXPERIMENT)
    exp["stages"] = [stage]
    return rtk.plan(rtk.experiment_from_dict(exp))


def test_options_are_checked_before_any_work():
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.augment\[1\]: Input should be 'crop' or 'flip'"):
        _plan({"kind": "train", "model": "m", "augment": ["crop", "rotate"]})
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.augment: .*'flip' listed more than once"):
        _plan({"kind": "train", "model": "m", "augment": ["flip", "flip"]})
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.crop_padding: .*greater than or equal to 1"):
        _plan({"kind": "train", "model": "m", "augment": ["crop"], "crop_padding": 0})
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.crop_padding: .*crop_padding applies only with 'crop'"):
        _plan({"kind": "train", "model": "m", "augment": ["flip"], "crop_padding": 2})
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.crop_padding_mode: Input should be 'zero' or 'reflect'"):
        _plan({"kind": "train", "model": "m", "augment": ["crop"], "crop_padding_mode": "edge"})
    with pytest.raises(rtk.ConfigError, match=r"stages\[0\]\.loop\.augment\[0\]: Input should be"):
        _plan({"kind": "prune", "model": "m", "pruners": ["lwm"], "compression": [2], "loop": {"augment": ["jitter"]}})


def test_padding_larger_than_the_images_is_refused_before_training(digits):
    data = DatasetBundle(digits.info, digits.train.subset(torch.arange(64)), digits.test.subset(torch.arange(32)))
    cfg = LoopConfig(epochs=1, augment=["crop"], crop_padding=8, eval_size=0)
    with pytest.raises(
        rtk.ConfigError, match="crop_padding = 8 does not fit 8 x 8 images: allowed 1 <= crop_padding <= 7"
    ):
        train_model(cnn_small(digits.info), StandardObjective(), data, cfg)


class _Batches(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_start(self, state):
        self.seen.append(state.x.clone())


@pytest.fixture()
def calls(monkeypatch):
    """The batch sizes the training loop hands to augment_batch, call by call."""
    seen = []

    def counting(x, *args, **kwargs):
        seen.append(x.shape[0])
        return augment_batch(x, *args, **kwargs)

    monkeypatch.setattr(loop_module, "augment_batch", counting)
    return seen


def test_the_loop_augments_training_batches_only_and_reproducibly(digits, calls):
    data = DatasetBundle(digits.info, digits.train.subset(torch.arange(96)), digits.test.subset(torch.arange(40)))
    cfg = LoopConfig(epochs=2, batch_size=32, augment=["crop", "flip"], crop_padding=2, eval_size=16, eval_every=1)
    rec = _Batches()
    torch.manual_seed(0)
    model = cnn_small(digits.info)
    train_model(model, StandardObjective(), data, cfg, seed=11, callbacks=[rec], plot=False)
    # every training step and nothing else (the two evaluations with their PGD read 40 + 2 x 16 examples each)
    assert calls == [32, 32, 32] * 2
    # the batches are the shuffled training batches, augmented from the run's generator
    g = torch.Generator().manual_seed(11)
    expected = []
    for _ in range(2):
        for x, _y in batches(data.train, 32, shuffle=True, generator=g):
            expected.append(augment_batch(x, ["crop", "flip"], padding=2, generator=g))
    assert len(rec.seen) == 6 and all(torch.equal(a, b) for a, b in zip(rec.seen, expected))
    plain = {tuple(x.flatten().tolist()) for x in data.train.x}
    assert sum(tuple(x.flatten().tolist()) in plain for b in rec.seen for x in b) < 96  # most were changed
    # same seed, same weights; without augmentation, other weights
    again, other = cnn_small(digits.info), cnn_small(digits.info)
    again.load_state_dict(_initial(digits)), other.load_state_dict(_initial(digits))
    train_model(again, StandardObjective(), data, cfg, seed=11, plot=False)
    plain_cfg = LoopConfig(epochs=2, batch_size=32, eval_size=16, eval_every=1)
    train_model(other, StandardObjective(), data, plain_cfg, seed=11, plot=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, c) for a, c in zip(model.state_dict().values(), other.state_dict().values()))


def _initial(digits):
    torch.manual_seed(0)
    return cnn_small(digits.info).state_dict()


def test_every_trainer_and_the_prune_stage_train_on_augmented_batches(tmp_path, calls):
    aug = {"augment": ["crop", "flip"], "crop_padding": 1}
    trainers = [
        "standard",
        {"name": "pgd-at", "eps": 0.1, "steps": 1},
        {"name": "trades", "eps": 0.1, "steps": 1},
        {"name": "mart", "eps": 0.1, "steps": 1},
        {"name": "fast-at", "eps": 0.1},
        {"name": "ibp", "eps": 0.05},
        {"name": "crown-ibp", "eps": 0.05},
    ]
    exp = copy.deepcopy(EXPERIMENT)
    exp["models"] = {f"m{i}": {"arch": "cnn-small"} for i in range(len(trainers))}
    exp["stages"] = [
        {"kind": "train", "model": f"m{i}", "trainer": t, "epochs": 1, "batch_size": 50, "eval_size": 0, **aug}
        for i, t in enumerate(trainers)
    ] + [
        {
            "kind": "prune",
            "id": "prune",
            "model": "m0",
            "pruners": ["hydra"],
            "compression": [2],
            "pretrain_epochs": 1,
            "score_epochs": 1,
            "finetune_epochs": 1,
            "batch_size": 50,
            "loop": aug,
            "eval_limit": 20,
        }
    ]
    res = rtk.run(exp, out=tmp_path / "run")
    assert res.stages["prune"].tables
    # 200 training examples in batches of 50: 4 steps per epoch; 7 trainers x 1 epoch, then the
    # prune stage's pre-training, HYDRA's score training and the fine-tuning, 1 epoch each
    assert calls == [50] * (4 * len(trainers) + 3 * 4)


class _Interrupt(Callback):
    def after_step(self, state):
        if state.epoch == 2 and state.batch == 1:
            raise KeyboardInterrupt


def test_an_augmented_run_resumes_exactly_and_refuses_other_augmentation(digits, tmp_path):
    data = DatasetBundle(digits.info, digits.train.subset(torch.arange(96)), digits.test.subset(torch.arange(40)))
    cfg = LoopConfig(epochs=3, batch_size=32, augment=["crop", "flip"], crop_padding=2, eval_size=0)
    full = cnn_small(digits.info)
    full.load_state_dict(_initial(digits))
    train_model(full, StandardObjective(), data, cfg, seed=2, state_dir=tmp_path / "full", plot=False)
    cut = cnn_small(digits.info)
    cut.load_state_dict(_initial(digits))
    with pytest.raises(KeyboardInterrupt):
        train_model(cut, StandardObjective(), data, cfg, seed=2, state_dir=tmp_path / "cut", callbacks=[_Interrupt()])
    resumed = cnn_small(digits.info)
    train_model(resumed, StandardObjective(), data, cfg, seed=2, state_dir=tmp_path / "cut", resume=True, plot=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    other = cfg.model_copy(update={"crop_padding_mode": "reflect"})
    with pytest.raises(rtk.ConfigError, match="crop_padding_mode: saved 'zero', now 'reflect'"):
        train_model(
            cnn_small(digits.info), StandardObjective(), data, other, seed=2, state_dir=tmp_path / "cut", resume=True
        )
