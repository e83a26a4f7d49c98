"""Residual networks for small images: ResNet-18 (CIFAR variant) and a small ResNet.

Layer names (``norm``, ``stem.conv``, ``stem.bn``, ``stem.relu``, ``layer1.0.conv1``,
``layer1.0.bn1``, ``layer1.0.relu1``, ..., ``layer1.0.relu_out``, ``pool``, ``flatten``,
``head``) are the same for every width and input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..data.core import DataInfo
from .blocks import BasicBlock, conv3x3, head, init_weights, normalize_for, stage


def cifar_resnet(
    info: DataInfo, blocks: Sequence[int], widths: Sequence[int], strides: Sequence[int], *, arch: str = "resnet"
) -> nn.Sequential:
    """A post-activation ResNet with a 3x3 stem (no max-pool) and one stage per entry of ``blocks``."""
    if not (len(blocks) == len(widths) == len(strides)) or not blocks:
        raise ValueError(
            f"{arch}: blocks, widths and strides need one entry per stage, got "
            f"{list(blocks)}, {list(widths)}, {list(strides)}"
        )
    if any(b < 1 for b in blocks) or any(w < 1 for w in widths):
        raise ValueError(f"{arch}: every stage needs at least one block and one channel")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["norm"] = normalize_for(info, arch)
    layers["stem"] = nn.Sequential(
        OrderedDict(
            [
                ("conv", conv3x3(info.channels, widths[0])),
                ("bn", nn.BatchNorm2d(widths[0])),
                ("relu", nn.ReLU()),
            ]
        )
    )
    cin = widths[0]
    for i, (n, w, s) in enumerate(zip(blocks, widths, strides, strict=True), start=1):
        layers[f"layer{i}"] = stage(BasicBlock, cin, w, n, s)
        cin = w
    layers.update(head(cin, info.num_classes))
    return init_weights(nn.Sequential(layers))


def resnet18(info: DataInfo, width: int = 64) -> nn.Sequential:
    """ResNet-18, CIFAR variant: 3x3 stem, no max-pool, stages of 2 blocks with widths
    ``width x (1, 2, 4, 8)`` (64..512 by default) and strides 1, 2, 2, 2. Any input size."""
    return cifar_resnet(info, (2, 2, 2, 2), tuple(width * m for m in (1, 2, 4, 8)), (1, 2, 2, 2), arch="resnet18")


def resnet_small(info: DataInfo, blocks: int = 2, width: int = 16) -> nn.Sequential:
    """Three stages of ``blocks`` basic blocks with widths ``width x (1, 2, 4)`` and strides
    1, 2, 2 (ResNet-20 is ``blocks=3, width=16``). Meant for width sweeps on 8x8 to 32x32 inputs."""
    return cifar_resnet(info, (blocks,) * 3, (width, 2 * width, 4 * width), (1, 2, 2), arch="resnet-small")
