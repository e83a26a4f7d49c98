"""Building blocks of rtk's convolutional architectures, with stable, readable names.

Every ReLU is its own ``nn.ReLU`` module (never ``F.relu``), so a forward hook sees each
activation; every residual block ends in a named module that outputs the block's result
(``relu_out`` for post-activation blocks, ``out`` for pre-activation ones), listed by
:func:`block_outputs`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..data.core import DataInfo
from .layers import Normalize


def normalize_for(info: DataInfo, arch: str) -> Normalize:
    """The Normalize layer for ``info``, after checking that its statistics fit its channels."""
    if info.channels < 1 or info.num_classes < 1:
        raise ValueError(
            f"{arch}: data info needs at least one channel and one class, got {info.channels} channels "
            f"and {info.num_classes} classes"
        )
    if len(info.mean) != info.channels or len(info.std) != info.channels:
        raise ValueError(
            f"{arch}: data info has {info.channels} channels but {len(info.mean)} means and {len(info.std)} stds"
        )
    return Normalize(info.mean, info.std)


def require_size(info: DataInfo, arch: str, minimum: int) -> None:
    """Raise a ValueError naming the minimum input size when ``info``'s images are smaller."""
    if info.height < minimum or info.width < minimum:
        raise ValueError(f"{arch} needs inputs of at least {minimum}x{minimum} pixels, got {info.height}x{info.width}")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block (ResNet): conv-bn-relu-conv-bn, plus the shortcut, then ReLU.

    Children: ``conv1 bn1 relu1 conv2 bn2 shortcut relu_out``. The shortcut is
    ``nn.Identity`` or, when the shape changes, ``Sequential(conv, bn)``.
    """

    OUTPUT = "relu_out"

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)),
                        ("bn", nn.BatchNorm2d(cout)),
                    ]
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu_out(y + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation residual block (WideResNet): bn-relu-conv-bn-relu-dropout-conv, plus the shortcut.

    Children: ``bn1 relu1 conv1 bn2 relu2 dropout conv2 shortcut out``. When the shape
    changes, the shortcut is a 1x1 convolution applied to the pre-activated input, as in
    the original WideResNet. ``out`` (an ``nn.Identity``) outputs the block's sum.
    """

    OUTPUT = "out"

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout)
        self.project = stride != 1 or cin != cout
        self.shortcut: nn.Module = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if self.project else nn.Identity()
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(a)))))
        return self.out(y + self.shortcut(a if self.project else x))


def stage(block: type[nn.Module], cin: int, cout: int, blocks: int, stride: int, **kw: float) -> nn.Sequential:
    """``blocks`` residual blocks named ``0, 1, ...``; the first one changes stride/width."""
    return nn.Sequential(
        OrderedDict(
            (str(i), block(cin if i == 0 else cout, cout, stride if i == 0 else 1, **kw)) for i in range(blocks)
        )
    )


def init_weights(model: nn.Module) -> nn.Module:
    """He initialisation for convolutions, unit BatchNorm, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


def block_outputs(model: nn.Module) -> list[str]:
    """Names of the modules that output each residual block (for block-level analyses)."""
    return [f"{name}.{m.OUTPUT}" for name, m in model.named_modules() if isinstance(m, (BasicBlock, WideBlock))]


def head(width: int, num_classes: int) -> OrderedDict[str, nn.Module]:
    """The common tail: global average pool, flatten, linear classifier named ``head``."""
    return OrderedDict(
        [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("head", nn.Linear(width, num_classes))]
    )
