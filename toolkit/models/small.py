"""Small architectures: an MLP and the small verifiable CNNs of Wong & Kolter / HYDRA.

Layer names are stable (``features.conv1``, ``classifier.fc1``, ...), so stages can
select layers by name pattern.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..data.core import DataInfo
from .layers import Normalize


def mlp(info: DataInfo, hidden: Sequence[int] = (256, 128)) -> nn.Module:
    """Fully connected layers of the ``hidden`` widths, each with a ReLU, and a head."""
    return _stack(info, "mlp", convs=(), hidden=hidden)


def cnn_small(info: DataInfo, width: int = 1, fc: int = 100) -> nn.Module:
    """conv16-conv32-fc100 (each conv 4x4 stride 2), scaled by ``width``."""
    return _stack(info, "cnn-small", convs=((16 * width, 2), (32 * width, 2)), hidden=(fc,))


def cnn_large(info: DataInfo, width: int = 1) -> nn.Module:
    """conv32x2-conv64x2-fc512x2: 3x3 convs, the second of each pair with stride 2."""
    c1, c2 = 32 * width, 64 * width
    return _stack(info, "cnn-large", convs=((c1, 1), (c1, 2), (c2, 1), (c2, 2)), hidden=(512, 512))


def _conv_out(size: int, stride: int) -> int:
    # kernel 4, padding 1 (stride 2) or kernel 3, padding 1 (stride 1)
    return (size + 2 - 4) // 2 + 1 if stride == 2 else size


def _stack(info: DataInfo, name: str, convs: Sequence[tuple[int, int]], hidden: Sequence[int]) -> nn.Module:
    """``norm``, then ``conv<i>`` layers of (channels, stride) ``convs`` (4x4 for stride 2, else 3x3;
    padding 1), ``flatten``, ``fc<i>`` layers of ``hidden`` widths and a ``head``; each conv and fc
    is followed by ``relu<n>``, numbered on through the whole stack."""
    h, w = info.height, info.width
    for _, stride in convs:
        h, w = _conv_out(h, stride), _conv_out(w, stride)
    if convs and (h < 1 or w < 1):
        raise ValueError(f"{name} needs inputs of at least 4x4 pixels, got {info.height}x{info.width}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["norm"] = Normalize(info.mean, info.std)

    relus = itertools.count(1)

    def add(key: str, layer: nn.Module) -> None:
        layers[key] = layer
        layers[f"relu{next(relus)}"] = nn.ReLU()

    channels = info.channels
    for i, (out, stride) in enumerate(convs, start=1):
        add(f"conv{i}", nn.Conv2d(channels, out, 4 if stride == 2 else 3, stride=stride, padding=1))
        channels = out
    layers["flatten"] = nn.Flatten()
    width = channels * h * w
    for i, out in enumerate(hidden, start=1):
        add(f"fc{i}", nn.Linear(width, out))
        width = out
    layers["head"] = nn.Linear(width, info.num_classes)
    return nn.Sequential(layers)
