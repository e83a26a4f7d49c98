"""The options every dataset accepts. Like every option model, they import no torch: ``rtk plugins``
and ``rtk reference`` read them without loading the data code."""

from __future__ import annotations

from pydantic import Field

from ..options import Options


class DataOptions(Options):
    """Options every dataset accepts: deterministic subsets of each split."""

    limit_train: int | None = Field(None, ge=1, description="use a fixed random subset of this many training examples")
    limit_test: int | None = Field(None, ge=1, description="use a fixed random subset of this many test examples")
    train_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="keep this share of every class of the training split (a fixed draw; after limit_train)",
    )
    resolution: int | None = Field(
        None, ge=4, le=1024, description="resize every image to resolution x resolution (area averaging when shrinking)"
    )
    seed: int = Field(0, description="seed of the subset draws")
