"""The contract of every registered dataset.

A dataset either loads offline with its default options, and then honours the contract
(images float32 in [0, 1] shaped as its DataInfo says, labels in range, statistics and
class names consistent, deterministic subsets), or it fails before loading with a clear
error: a missing required option named by key, or files reported missing by its check
(and the same DataError from load), saying where they are expected and how to get them.
"""

from __future__ import annotations

import pytest
import torch

import rtk
from rtk.data import TensorSplit, apply_limits
from rtk.errors import ConfigError, DataError

DATASETS = rtk.default_registry().names("dataset")
#: These must load here: scikit-learn's digits, and Fashion-MNIST installed by scripts/setup.sh.
OFFLINE = {"digits", "fashion-mnist"}
LIMITS = {"limit_train": 300, "limit_test": 120, "seed": 5}


def test_offline_datasets_are_registered():
    assert OFFLINE <= set(DATASETS)


def _options(spec):
    try:
        return rtk.validate_options(spec.options, LIMITS, "dataset")
    except ConfigError as exc:
        return exc


def _sample(split, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(split, TensorSplit):
        return split.x, split.y
    return next(iter(rtk.data.batches(split, n)))


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_contract(name):
    spec = rtk.default_registry().get("dataset", name)
    assert spec.summary and issubclass(spec.options, rtk.data.DataOptions), (
        "every dataset accepts limit_train/limit_test/seed"
    )
    opts = _options(spec)
    if isinstance(opts, ConfigError):  # needs a setting with no default (for example a folder)
        assert name not in OFFLINE
        assert all("required key is missing" in p for p in opts.problems), opts.problems
        return
    problems = list(spec.check(opts)) if spec.check is not None else []
    if problems:  # files absent here: the check and the loader say where and how
        assert name not in OFFLINE, problems
        with pytest.raises(DataError) as err:
            spec.load(opts)
        assert str(err.value) == problems[0]
        assert "Expected" in problems[0] and "To get them" in problems[0]
        return

    full = spec.load(opts)
    info = full.info
    assert info.name and info.num_classes >= 2 and info.channels >= 1
    assert len(info.mean) == len(info.std) == info.channels and all(s > 0 for s in info.std)
    assert info.class_names is not None and len(info.class_names) == info.num_classes
    bundle = apply_limits(full, opts)
    assert len(bundle.train) == min(300, len(full.train)) and len(bundle.test) == min(120, len(full.test))
    for split in (bundle.train, bundle.test):
        x, y = _sample(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (info.channels, info.height, info.width)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.0
        assert int(y.min()) >= 0 and int(y.max()) < info.num_classes
    x, _ = _sample(bundle.train)
    # the normalisation constants describe the data (so the model's Normalize is sensible)
    for c in range(info.channels):
        assert abs(float(x[:, c].mean()) - info.mean[c]) < 0.05, (c, float(x[:, c].mean()), info.mean[c])
        assert 0.75 < float(x[:, c].std()) / info.std[c] < 1.33, (c, float(x[:, c].std()), info.std[c])
    # subsets are deterministic under a seed, and differ across seeds
    again = apply_limits(spec.load(opts), opts)
    other = apply_limits(full, opts.model_copy(update={"seed": 6}))
    assert torch.equal(_sample(again.train)[0], _sample(bundle.train)[0])
    assert not torch.equal(_sample(other.train)[0], _sample(bundle.train)[0])
