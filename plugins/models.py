"""Built-in architectures. Every model normalizes its own inputs and returns logits."""

from __future__ import annotations

from pydantic import Field

import rtk


class MLPOptions(rtk.Options):
    hidden: list[int] = Field(default_factory=lambda: [256, 128], description="hidden layer widths")


class SmallCNNOptions(rtk.Options):
    width: int = Field(1, ge=1, le=64, description="channel multiplier")
    fc: int = Field(100, ge=1)


class LargeCNNOptions(rtk.Options):
    width: int = Field(1, ge=1, le=64, description="channel multiplier")


def _mlp(info, o: MLPOptions):
    from rtk.models.small import mlp

    return mlp(info, o.hidden)


def _cnn_small(info, o: SmallCNNOptions):
    from rtk.models.small import cnn_small

    return cnn_small(info, o.width, o.fc)


def _cnn_large(info, o: LargeCNNOptions):
    from rtk.models.small import cnn_large

    return cnn_large(info, o.width)


@rtk.hookimpl
def rtk_models():
    yield rtk.ModelSpec(name="mlp", summary="multi-layer perceptron", options=MLPOptions, build=_mlp)
    yield rtk.ModelSpec(name="cnn-small", summary="conv16-conv32-fc100, the small verifiable CNN",
                        options=SmallCNNOptions, build=_cnn_small)
    yield rtk.ModelSpec(name="cnn-large", summary="conv32x2-conv64x2-fc512x2, the large verifiable CNN",
                        options=LargeCNNOptions, build=_cnn_large)
