"""Image folders (Imagenette, ImageWoof, any ImageNet-style tree), read lazily.

Layout: ``root/train/<class>/*.png|jpg|...`` and ``root/val/<class>/...`` (or ``test/``).
Each image is decoded when it is asked for, converted to RGB (or grayscale), its
shorter side resized to ``resize`` and the centre cropped to ``image_size`` x
``image_size``: the usual evaluation transform. Nothing is held in memory but the list of
files, so folders of any size work. Pillow (a dependency of matplotlib) does the decoding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .core import DataInfo, DatasetBundle

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)

#: Readable names of the ImageNet classes (WordNet ids) used by Imagenette and ImageWoof.
WNID_NAMES = {
    # Imagenette
    "n01440764": "tench",
    "n02102040": "English springer",
    "n03000684": "chain saw",
    "n02979186": "cassette player",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
    # ImageWoof
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


def default_resize(image_size: int) -> int:
    """The shorter side before the centre crop: ``image_size * 8 / 7`` (256 for 224)."""
    return int(round(image_size * 8 / 7))


class ImageFolderSplit(Dataset):
    """One split of an image folder: ``(image, label)`` with the image a float32 tensor
    (C, image_size, image_size) in [0, 1], decoded on access."""

    def __init__(
        self, files: Sequence[Path], labels: Sequence[int], *, image_size: int, resize: int, grayscale: bool = False
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.image_size, self.resize, self.grayscale = image_size, resize, grayscale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image(self.files[i], self.image_size, self.resize, self.grayscale), self.labels[i]

    def targets(self) -> torch.Tensor:
        """Every label, without decoding any image."""
        return self.labels.clone()


def load_image(path: Path, image_size: int, resize: int, grayscale: bool = False) -> torch.Tensor:
    """Decode one image, resize its shorter side to ``resize``, centre-crop ``image_size``; (C, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if grayscale else "RGB")
            w, h = img.size
            scale = resize / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
            arr = np.array(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def scan_split(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of one split (class = sub-folder, sorted by name).

    With ``classes`` given (the training classes), a sub-folder outside them is an error.
    """
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        if not found:
            raise DataError(f"{folder}: no class sub-folders; expected {folder}/<class name>/<image files>")
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"{folder}: class folders {', '.join(extra)} are not among the training classes ({', '.join(classes)})"
            )
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for c in found:
        imgs = _image_files(folder / c)
        files += imgs
        labels += [index[c]] * len(imgs)
    if not files:
        raise DataError(f"{folder}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in its class folders")
    return files, labels, list(classes)


def find_test_dir(root: Path, test_split: str | None) -> Path:
    names = [test_split] if test_split else ["val", "test"]
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise DataError(
        f"image folder {root}: no test split; expected the folder {' or '.join(str(root / n) for n in names)} "
        "with one sub-folder of images per class"
    )


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 224,
    resize: int | None = None,
    test_split: str | None = None,
    grayscale: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
) -> DatasetBundle:
    """An ImageNet-style folder: ``root/train/<class>/...`` and ``root/val`` (or ``test``) likewise.

    ``mean``/``std`` default to ImageNet's statistics. Class names of Imagenette and
    ImageWoof folders (WordNet ids) are shown in words.
    """
    root = Path(root).expanduser()
    how = (
        "for Imagenette or ImageWoof: download imagenette2-320.tgz / imagewoof2-320.tgz from fast.ai's "
        "imagenette repository, extract it, and set root to the extracted folder"
    )
    if not (root / "train").is_dir():
        raise DataError(
            f"image folder {root}: expected {root / 'train'}/<class>/<images> and {root / 'val'} "
            f"(or {root / 'test'}) laid out the same way; {how}"
        )
    resize = default_resize(image_size) if resize is None else resize
    if resize < image_size:
        raise DataError(f"image folder {root}: resize ({resize}) must be at least image_size ({image_size})")
    files, labels, classes = scan_split(root / "train")
    test_dir = find_test_dir(root, test_split)
    test_files, test_labels, _ = scan_split(test_dir, classes)
    channels = 1 if grayscale else 3
    if mean is None or std is None:
        mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    if len(mean) != channels or len(std) != channels:
        raise DataError(
            f"image folder {root}: mean and std need {channels} values each, got {len(mean)} and {len(std)}"
        )
    names = tuple(WNID_NAMES.get(c, c) for c in classes)
    info = DataInfo(
        name or root.name or "imagefolder",
        len(classes),
        channels,
        image_size,
        image_size,
        tuple(float(m) for m in mean),
        tuple(float(s) for s in std),
        names,
    )
    log.info("image folder %s: %d train / %d test images, %d classes", root, len(files), len(test_files), len(classes))
    split = dict(image_size=image_size, resize=resize, grayscale=grayscale)
    return DatasetBundle(
        info, ImageFolderSplit(files, labels, **split), ImageFolderSplit(test_files, test_labels, **split)
    )


def check_image_folder(root: str | Path, test_split: str | None = None) -> list[str]:
    """Problems with the folder layout found without decoding any image (for planning)."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        return [
            f"image folder {root}: expected {root / 'train'}/<class>/<images> and {root / 'val'} (or "
            f"{root / 'test'}) laid out the same way"
        ]
    try:
        find_test_dir(root, test_split)
    except DataError as exc:
        return [str(exc)]
    return []
