"""Built-in datasets."""

from __future__ import annotations

from pydantic import Field

import rtk
from rtk.data import DataOptions


class DigitsOptions(DataOptions):
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share of each class held out for testing")
    split_seed: int = 0


def _digits(opts: DigitsOptions):
    from rtk.data.digits import load_digits

    return load_digits(opts.test_fraction, opts.split_seed)


@rtk.hookimpl
def rtk_datasets():
    yield rtk.DatasetSpec(name="digits", summary="scikit-learn's 8x8 handwritten digits, 1,797 images, offline",
                          options=DigitsOptions, load=_digits)
