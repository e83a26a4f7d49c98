"""Small architectures: an MLP and the small verifiable CNNs of Wong & Kolter / HYDRA.

Layer names are stable (``features.conv1``, ``classifier.fc1``, ...), so stages can
select layers by name pattern.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..data.core import DataInfo
from .layers import Normalize


def mlp(info: DataInfo, hidden: Sequence[int] = (256, 128)) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["norm"] = Normalize(info.mean, info.std)
    layers["flatten"] = nn.Flatten()
    width = info.channels * info.height * info.width
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers["head"] = nn.Linear(width, info.num_classes)
    return nn.Sequential(layers)


def _conv_out(size: int, stride: int) -> int:
    # kernel 4, padding 1 (stride 2) or kernel 3, padding 1 (stride 1)
    return (size + 2 - 4) // 2 + 1 if stride == 2 else size


def cnn_small(info: DataInfo, width: int = 1, fc: int = 100) -> nn.Module:
    """conv16-conv32-fc100 (each conv 4x4 stride 2), scaled by ``width``."""
    c1, c2 = 16 * width, 32 * width
    h, w = info.height, info.width
    for _ in range(2):
        h, w = _conv_out(h, 2), _conv_out(w, 2)
    if h < 1 or w < 1:
        raise ValueError(f"cnn-small needs inputs of at least 4x4 pixels, got {info.height}x{info.width}")
    return nn.Sequential(OrderedDict([
        ("norm", Normalize(info.mean, info.std)),
        ("conv1", nn.Conv2d(info.channels, c1, 4, stride=2, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(c1, c2, 4, stride=2, padding=1)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(c2 * h * w, fc)),
        ("relu3", nn.ReLU()),
        ("head", nn.Linear(fc, info.num_classes)),
    ]))


def cnn_large(info: DataInfo, width: int = 1) -> nn.Module:
    """conv32x2-conv64x2-fc512x2: 3x3 convs, the second of each pair with stride 2."""
    c1, c2 = 32 * width, 64 * width
    h, w = info.height, info.width
    for _ in range(2):
        h, w = _conv_out(h, 2), _conv_out(w, 2)
    if h < 1 or w < 1:
        raise ValueError(f"cnn-large needs inputs of at least 4x4 pixels, got {info.height}x{info.width}")
    return nn.Sequential(OrderedDict([
        ("norm", Normalize(info.mean, info.std)),
        ("conv1", nn.Conv2d(info.channels, c1, 3, stride=1, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(c1, c1, 4, stride=2, padding=1)),
        ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(c1, c2, 3, stride=1, padding=1)),
        ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(c2, c2, 4, stride=2, padding=1)),
        ("relu4", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(c2 * h * w, 512)),
        ("relu5", nn.ReLU()),
        ("fc2", nn.Linear(512, 512)),
        ("relu6", nn.ReLU()),
        ("head", nn.Linear(512, info.num_classes)),
    ]))
