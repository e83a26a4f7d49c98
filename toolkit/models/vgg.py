"""VGG-16 with BatchNorm, CIFAR style (13 convolutions, a compact classifier).

Five blocks of 3x3 conv-BN-ReLU (64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3), a 2x2
max-pool after each of the first four, an adaptive average pool to ``pool_size``, a
classifier of ``fc`` hidden layers, and a linear head. Names: ``norm``,
``block1.conv1``, ``block1.bn1``, ``block1.relu1``, ..., ``block1.pool``, ...,
``block5.relu3``, ``pool``, ``flatten``, ``classifier.fc1``, ``classifier.relu1``, ...,
``head``.

Small inputs: a max-pool whose input is already 1 pixel high or wide is an
``nn.Identity`` (it has no weights, so names and checkpoints stay the same), so VGG-16
also runs on 28x28 and 8x8 images.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..data.core import DataInfo
from .blocks import init_weights, normalize_for

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg(
    info: DataInfo,
    blocks: Sequence[Sequence[int]] = VGG16_BLOCKS,
    *,
    fc: Sequence[int] = (256, 256),
    pool_size: int = 2,
    width: float = 1.0,
    pools: int = 4,
    arch: str = "vgg16",
) -> nn.Sequential:
    """A VGG network; ``width`` scales every convolution's channels, ``pools`` counts the
    blocks followed by a 2x2 max-pool (the first ``pools`` blocks)."""
    if width <= 0 or pool_size < 1 or not 0 <= pools <= len(blocks):
        raise ValueError(f"{arch}: need width > 0, pool_size >= 1 and 0 <= pools <= {len(blocks)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["norm"] = normalize_for(info, arch)
    cin, h, w = info.channels, info.height, info.width
    for b, convs in enumerate(blocks, start=1):
        block: OrderedDict[str, nn.Module] = OrderedDict()
        for j, c in enumerate(convs, start=1):
            cout = max(1, int(round(c * width)))
            block[f"conv{j}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            block[f"bn{j}"] = nn.BatchNorm2d(cout)
            block[f"relu{j}"] = nn.ReLU()
            cin = cout
        if b <= pools:
            if h >= 2 and w >= 2:
                block["pool"] = nn.MaxPool2d(2)
                h, w = h // 2, w // 2
            else:
                block["pool"] = nn.Identity()
        layers[f"block{b}"] = nn.Sequential(block)
    layers["pool"] = nn.AdaptiveAvgPool2d(pool_size)
    layers["flatten"] = nn.Flatten()
    classifier: OrderedDict[str, nn.Module] = OrderedDict()
    features = cin * pool_size * pool_size
    for i, hidden in enumerate(fc, start=1):
        classifier[f"fc{i}"] = nn.Linear(features, hidden)
        classifier[f"relu{i}"] = nn.ReLU()
        features = hidden
    layers["classifier"] = nn.Sequential(classifier)
    layers["head"] = nn.Linear(features, info.num_classes)
    return init_weights(nn.Sequential(layers))


def vgg16(info: DataInfo, fc: Sequence[int] = (256, 256), pool_size: int = 2, width: float = 1.0) -> nn.Sequential:
    """VGG-16-BN for 32x32 inputs (and smaller: see the module notes)."""
    return vgg(info, VGG16_BLOCKS, fc=fc, pool_size=pool_size, width=width, arch="vgg16")
