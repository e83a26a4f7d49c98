"""Models: architectures, the Normalize layer, and checkpoint I/O.

Architectures (each takes a :class:`rtk.data.DataInfo`, normalizes its [0, 1] inputs
itself with a first ``norm`` layer, and returns logits): :func:`mlp`, :func:`cnn_small`,
:func:`cnn_large` (small verifiable CNNs), :func:`vgg16`, :func:`resnet18`,
:func:`resnet_small`, :func:`wide_resnet`. :func:`block_outputs` lists the output module
of every residual block. :mod:`rtk.models.sources`: user code, torchvision and timm builders,
and :func:`apply_init` (a plain state dict with a key-by-key report).
"""

from __future__ import annotations

from ..lazy import LazyFace

#: submodule -> the public names it defines; importing this face imports none of them (each on
#: first use), so reading option models from it needs no torch (see rtk.lazy)
_face = LazyFace(
    __name__,
    {
        "blocks": (
            "BasicBlock",
            "WideBlock",
            "block_outputs",
        ),
        "checkpoint": (
            "ModelRecipe",
            "load_checkpoint",
            "load_state_strict",
            "read_spec",
            "save_checkpoint",
        ),
        "layers": ("Normalize",),
        "resnet": (
            "cifar_resnet",
            "resnet18",
            "resnet_small",
        ),
        "small": (
            "cnn_large",
            "cnn_small",
            "mlp",
        ),
        "sources": (
            "SourceError",
            "apply_init",
            "build_code_model",
            "build_timm",
            "build_torchvision",
            "check_code_model",
            "check_timm",
            "check_torchvision_model",
            "read_state_dict",
            "rebase_source",
        ),
        "vgg": (
            "vgg",
            "vgg16",
        ),
        "wrn": ("wide_resnet",),
    },
)
__all__ = _face.names
__getattr__ = _face.attr  # PEP 562: each name's submodule imported on its first use
__dir__ = _face.dir
