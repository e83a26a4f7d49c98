"""Built-in architectures. Every model normalizes its own inputs and returns logits."""

from __future__ import annotations

from pydantic import Field, field_validator

import rtk
import rtk.models


class MLPOptions(rtk.Options):
    hidden: list[int] = Field(
        default_factory=lambda: [256, 128], max_length=64, description="hidden layer widths (each 1 to 2**20)"
    )

    @field_validator("hidden")
    @classmethod
    def _widths_ok(cls, value: list[int]) -> list[int]:
        bad = [w for w in value if not 1 <= w <= 1 << 20]
        if bad:
            raise ValueError(f"a layer width must be between 1 and 2**20, got {bad[0]}")
        return value


class SmallCNNOptions(rtk.Options):
    width: int = Field(1, ge=1, le=64, description="channel multiplier")
    fc: int = Field(100, ge=1)


class LargeCNNOptions(rtk.Options):
    width: int = Field(1, ge=1, le=64, description="channel multiplier")


class VGG16Options(rtk.Options):
    fc: list[int] = Field(
        default_factory=lambda: [256, 256],
        description="hidden widths of the classifier before the head ([] for a single linear layer)",
    )
    pool_size: int = Field(2, ge=1, le=7, description="side of the adaptive average pool before the classifier")
    width: float = Field(1.0, gt=0, le=8, description="multiplier of every convolution's channels (1.0: 64..512)")

    @field_validator("fc")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError(f"hidden widths must be positive, got {v}")
        return v


class ResNet18Options(rtk.Options):
    width: int = Field(64, ge=1, le=1024, description="channels of the first stage (stages: width x 1, 2, 4, 8)")


class WRNOptions(rtk.Options):
    depth: int = Field(28, ge=10, le=250, description="depth, 6n + 4 (10, 16, 22, 28, 34, 40, ...)")
    width: int = Field(10, ge=1, le=32, description="widening factor k (stages: 16k, 32k, 64k channels)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between the two convolutions of each block")

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if (v - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 34, 40, ...), got {v}")
        return v


class ResNetSmallOptions(rtk.Options):
    blocks: int = Field(2, ge=1, le=64, description="basic blocks per stage (3 stages; 3 gives ResNet-20)")
    width: int = Field(16, ge=1, le=1024, description="channels of the first stage (stages: width x 1, 2, 4)")


def _mlp(info, o: MLPOptions):
    from rtk.models import mlp

    return mlp(info, o.hidden)


def _cnn_small(info, o: SmallCNNOptions):
    from rtk.models import cnn_small

    return cnn_small(info, o.width, o.fc)


def _cnn_large(info, o: LargeCNNOptions):
    from rtk.models import cnn_large

    return cnn_large(info, o.width)


def _vgg16(info, o: VGG16Options):
    return rtk.models.vgg16(info, o.fc, o.pool_size, o.width)


def _resnet18(info, o: ResNet18Options):
    return rtk.models.resnet18(info, o.width)


def _wrn(info, o: WRNOptions):
    return rtk.models.wide_resnet(info, o.depth, o.width, o.dropout)


def _resnet_small(info, o: ResNetSmallOptions):
    return rtk.models.resnet_small(info, o.blocks, o.width)


@rtk.hookimpl
def rtk_models():
    yield rtk.ModelSpec(name="mlp", summary="multi-layer perceptron", options=MLPOptions, build=_mlp)
    yield rtk.ModelSpec(
        name="cnn-small",
        summary="conv16-conv32-fc100, the small verifiable CNN",
        options=SmallCNNOptions,
        build=_cnn_small,
    )
    yield rtk.ModelSpec(
        name="cnn-large",
        summary="conv32x2-conv64x2-fc512x2, the large verifiable CNN",
        options=LargeCNNOptions,
        build=_cnn_large,
    )
    yield rtk.ModelSpec(
        name="vgg16",
        summary="VGG-16 with BatchNorm, CIFAR style (13 convs, compact classifier)",
        options=VGG16Options,
        build=_vgg16,
    )
    yield rtk.ModelSpec(
        name="resnet18",
        summary="ResNet-18, CIFAR variant (3x3 stem, no max-pool)",
        options=ResNet18Options,
        build=_resnet18,
    )
    yield rtk.ModelSpec(
        name="wrn",
        summary="WideResNet-depth-k (default WRN-28-10), pre-activation, optional dropout",
        options=WRNOptions,
        build=_wrn,
    )
    yield rtk.ModelSpec(
        name="resnet-small",
        summary="a small 3-stage ResNet (blocks per stage, base width) for width sweeps on 8x8 to 32x32 inputs",
        options=ResNetSmallOptions,
        build=_resnet_small,
    )
