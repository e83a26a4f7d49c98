"""Models: architectures, the Normalize layer, and checkpoint I/O.

Architectures (each takes a :class:`rtk.data.DataInfo`, normalizes its [0, 1] inputs
itself with a first ``norm`` layer, and returns logits): :func:`mlp`, :func:`cnn_small`,
:func:`cnn_large` (small verifiable CNNs), :func:`vgg16`, :func:`resnet18`,
:func:`resnet_small`, :func:`wide_resnet`. :func:`block_outputs` lists the output module
of every residual block. :mod:`rtk.models.sources`: user code, torchvision and timm builders,
and :func:`apply_init` (a plain state dict with a key-by-key report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .blocks import BasicBlock, WideBlock, block_outputs
    from .checkpoint import ModelRecipe, load_checkpoint, load_state_strict, read_spec, save_checkpoint
    from .layers import Normalize
    from .resnet import cifar_resnet, resnet18, resnet_small
    from .small import cnn_large, cnn_small, mlp
    from .sources import (
        SourceError,
        apply_init,
        build_code_model,
        build_timm,
        build_torchvision,
        check_code_model,
        check_timm,
        check_torchvision_model,
        read_state_dict,
        rebase_source,
    )
    from .vgg import vgg, vgg16
    from .wrn import wide_resnet
