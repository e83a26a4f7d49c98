"""WideResNet-depth-k (Zagoruyko & Komodakis 2016), the architecture of paper 1's width sweep.

Depth ``6n + 4``: a 3x3 stem convolution, three stages of ``n`` pre-activation blocks with
widths ``16k, 32k, 64k`` and strides 1, 2, 2, a final BatchNorm and ReLU, global average
pooling and a linear head. Names: ``norm``, ``stem.conv``, ``layer1.0.bn1``,
``layer1.0.relu1``, ``layer1.0.conv1``, ..., ``layer1.0.out``, ``final.bn``,
``final.relu``, ``pool``, ``flatten``, ``head``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..data.core import DataInfo
from .blocks import WideBlock, conv3x3, head, init_weights, normalize_for, stage


def wrn_blocks(depth: int) -> int:
    """Blocks per stage for a WideResNet of ``depth`` (which must be 6n + 4, n >= 1)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")
    return (depth - 4) // 6


def wide_resnet(info: DataInfo, depth: int = 28, width: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """WideResNet-``depth``-``width`` for any input size (global average pooling before the head)."""
    n = wrn_blocks(depth)
    if width < 1:
        raise ValueError(f"wrn: width k must be at least 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"wrn: dropout must lie in [0, 1), got {dropout}")
    widths = (16, 16 * width, 32 * width, 64 * width)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["norm"] = normalize_for(info, "wrn")
    layers["stem"] = nn.Sequential(OrderedDict([("conv", conv3x3(info.channels, widths[0]))]))
    for i, stride in enumerate((1, 2, 2), start=1):
        layers[f"layer{i}"] = stage(WideBlock, widths[i - 1], widths[i], n, stride, dropout=dropout)
    layers["final"] = nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(widths[3])), ("relu", nn.ReLU())]))
    layers.update(head(widths[3], info.num_classes))
    return init_weights(nn.Sequential(layers))
