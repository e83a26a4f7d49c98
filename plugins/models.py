"""Built-in architectures. Every model normalizes its own inputs and returns logits."""

from __future__ import annotations

from pydantic import Field, field_validator

import rtk

components = rtk.Components()


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


#: The built-in architectures: name, options, builder in :mod:`rtk.models` (its keywords are the options' keys),
#: summary.
_MODELS = (
    ("mlp", MLPOptions, "mlp", "multi-layer perceptron"),
    ("cnn-small", SmallCNNOptions, "cnn_small", "conv16-conv32-fc100, the small verifiable CNN"),
    ("cnn-large", LargeCNNOptions, "cnn_large", "conv32x2-conv64x2-fc512x2, the large verifiable CNN"),
    ("vgg16", VGG16Options, "vgg16", "VGG-16 with BatchNorm, CIFAR style (13 convs, compact classifier)"),
    ("resnet18", ResNet18Options, "resnet18", "ResNet-18, CIFAR variant (3x3 stem, no max-pool)"),
    ("wrn", WRNOptions, "wide_resnet", "WideResNet-depth-k (default WRN-28-10), pre-activation, optional dropout"),
    (
        "resnet-small",
        ResNetSmallOptions,
        "resnet_small",
        "a small 3-stage ResNet (blocks per stage, base width) for width sweeps on 8x8 to 32x32 inputs",
    ),
)

components.table(rtk.ModelSpec, _MODELS, module="rtk.models")

rtk_models = components.hookimpl(rtk.ModelSpec)
