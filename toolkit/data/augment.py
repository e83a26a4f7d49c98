"""Training-data augmentation on whole batches, on the device.

:func:`augment_batch` applies the standard CIFAR recipe (random crop after padding, random
horizontal flip; torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` as
in paper 1's code and HYDRA's) to a batch tensor ``[B, C, H, W]`` at once: the crop offsets
and flips are drawn from a CPU generator (so a seeded run draws the same ones on any device),
and the crop and flip are one ``gather`` on the batch's device; no PIL round trip, no
per-image loop. The training loop applies it to training batches only
(:class:`rtk.training.LoopConfig` ``augment``); evaluation and similarity never see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import DataError

#: The augmentations :func:`augment_batch` knows, by the names the options use.
AUGMENTATIONS = ("crop", "flip")

PaddingMode = Literal["zero", "reflect"]


def check_crop_padding(padding: int, height: int, width: int, where: str = "crop_padding") -> str | None:
    """A problem with ``padding`` for ``height`` x ``width`` images, or None. The padding must
    be smaller than the image (reflect padding needs it; a larger zero padding could crop
    nothing but padding)."""
    limit = min(height, width) - 1
    if not 1 <= padding <= limit:
        return (
            f"{where} = {padding} does not fit {height} x {width} images: allowed 1 <= {where} <= {limit} "
            "(the CIFAR recipe pads 32 x 32 images by 4)"
        )
    return None


def augment_batch(
    x: torch.Tensor,
    augment: Sequence[str],
    *,
    padding: int = 4,
    padding_mode: PaddingMode = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A new batch: each image of ``x`` ``[B, C, H, W]`` randomly cropped back to ``H`` x ``W``
    after padding every side by ``padding`` pixels (``"crop"`` in ``augment``; zeros or a
    reflection of the border) and flipped left-right with probability 1/2 (``"flip"``).

    The draws come from ``generator`` (a CPU generator; the global one when None): first the
    ``B`` vertical and ``B`` horizontal offsets in ``[0, 2 * padding]``, then ``B`` flips, so a
    seeded generator gives the same batch on every device. ``x`` itself is not changed.
    """
    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown:
        raise DataError(f"augment: unknown augmentation {unknown[0]!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if x.ndim != 4:
        raise DataError(f"augment: expected a batch of images [B, C, H, W], got shape {list(x.shape)}")
    crop, flip = "crop" in augment, "flip" in augment
    if not (crop or flip):
        return x
    b, c, h, w = x.shape
    if crop:
        problem = check_crop_padding(padding, h, w)
        if problem:
            raise DataError(problem)
        if padding_mode not in ("zero", "reflect"):
            raise DataError(f"crop_padding_mode: {padding_mode!r} is not allowed; use 'zero' or 'reflect'")
    dev = x.device
    if crop:
        offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else None
    if not crop:
        assert flips is not None
        return torch.where(flips.to(dev)[:, None, None, None], x.flip(3), x)
    p = padding
    src = F.pad(x, (p, p, p, p), mode="constant" if padding_mode == "zero" else "reflect")
    offsets = offsets.to(dev)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)  # [B, H]: source row of each output row
    cols = offsets[1, :, None] + torch.arange(w, device=dev)  # [B, W]
    if flips is not None:  # a flip after the crop reads the crop's columns right to left
        cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)
    out = src.gather(2, rows[:, None, :, None].expand(b, c, h, src.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


__all__ = ["AUGMENTATIONS", "PaddingMode", "augment_batch", "check_crop_padding"]
