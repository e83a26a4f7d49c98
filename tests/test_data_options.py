"""The capacity-vs-data knobs every in-memory dataset accepts: ``train_fraction`` (a fixed
share of every class) and ``resolution`` (images resized, the models see the new size)."""

from __future__ import annotations

import pytest
import torch

import rtk
from rtk.data import DataOptions, apply_limits


def _opts(**kw):
    return rtk.validate_options(DataOptions, kw, "dataset")


def test_train_fraction_keeps_a_share_of_every_class(digits):
    out = apply_limits(digits, _opts(train_fraction=0.1))
    before = torch.bincount(digits.train.y, minlength=10)
    after = torch.bincount(out.train.y, minlength=10)
    assert torch.equal(after, torch.round(before * 0.1).clamp_min(1).long())
    assert len(out.test) == len(digits.test), "the test split is not thinned"
    again = apply_limits(digits, _opts(train_fraction=0.1))
    assert torch.equal(again.train.x, out.train.x), "not a fixed draw"
    other = apply_limits(digits, _opts(train_fraction=0.1, seed=1))
    assert not torch.equal(other.train.x, out.train.x)
    assert apply_limits(digits, _opts(train_fraction=1.0)).train is digits.train


def test_resolution_resizes_both_splits_and_the_info(digits):
    small = apply_limits(digits, _opts(resolution=4))
    assert small.train.x.shape[1:] == (1, 4, 4) and small.test.x.shape[1:] == (1, 4, 4)
    assert (small.info.height, small.info.width) == (4, 4) and small.info.num_classes == 10
    # area averaging: each 4x4 pixel is the mean of a 2x2 block of the 8x8 image
    x = digits.train.x[:3]
    assert torch.allclose(small.train.x[:3], torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    big = apply_limits(digits, _opts(resolution=16))
    assert big.train.x.shape[-2:] == (16, 16) and big.train.x.min() >= 0 and big.train.x.max() <= 1
    model = rtk.models.resnet_small(big.info, blocks=1, width=4)
    assert model(big.test.x[:2]).shape == (2, 10)


def test_bad_values_name_the_key():
    with pytest.raises(rtk.ConfigError, match="train_fraction"):
        _opts(train_fraction=0)
    with pytest.raises(rtk.ConfigError, match="resolution"):
        _opts(resolution=2)


def test_options_as_keywords_of_a_base_or_beyond_it():
    """``Options.as_kwargs``: every key, the keys a base declares (``of``), or the keys past it
    (``beyond``), values as validated; what the imagefolder loader and the similarity job are
    called with."""

    class Loader(DataOptions):
        root: str
        size: int = 8

    opts = Loader(root="x", limit_train=10)
    assert opts.as_kwargs(beyond=DataOptions) == {"root": "x", "size": 8}
    assert opts.as_kwargs(of=DataOptions) == {k: getattr(opts, k) for k in DataOptions.model_fields}
    assert set(opts.as_kwargs()) == set(DataOptions.model_fields) | {"root", "size"}
    request = rtk.SimilarityRequest(limit=200, passes=3)
    job = rtk.similarity.SimilarityJob(metric=None, metric_name="m", **request.as_kwargs(of=rtk.SimilarityRequest))
    assert (job.limit, job.passes, job.analyses) == (200, 3, request.analyses)
