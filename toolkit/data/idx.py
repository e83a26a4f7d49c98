"""IDX datasets: MNIST, Fashion-MNIST, and any other set stored in the IDX format.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values, big-endian. Files may be gzipped.
Parsing is one ``numpy.frombuffer`` call, so the whole Fashion-MNIST (70,000 images)
loads in about 0.3 s, most of it spent decompressing.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .core import DataInfo, DatasetBundle, TensorSplit
from .files import FileSource, default_root

log = logging.getLogger(__name__)

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four files of an MNIST-like dataset, without the ``.gz`` suffix.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(i) for i in range(10))


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a read-only array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where}: not an IDX file (the first two bytes must be zero)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(
            f"{where}: unknown IDX type code 0x{code:02x}; known: " + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{where}: IDX header says shape {list(dims)} ({count * dtype.itemsize} bytes of data) "
            f"but the file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped (``.gz``) or not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
            raw = zlib.decompress(raw, wbits=31)
    except (OSError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return parse_idx(raw, str(path))


def _images(arr: np.ndarray, where: Path) -> torch.Tensor:
    if arr.ndim != 3:
        raise DataError(f"{where}: expected images of shape [N, H, W], got {list(arr.shape)}")
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: expected unsigned byte images, got {arr.dtype}")
    x = np.divide(arr, np.float32(255.0), dtype=np.float32)  # one pass, a fresh writable array
    return torch.from_numpy(x).unsqueeze(1)


def _labels(arr: np.ndarray, n: int, num_classes: int, where: Path) -> torch.Tensor:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{where}: expected {n} labels (one per image), got shape {list(arr.shape)}")
    y = torch.from_numpy(arr.astype(np.int64))
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")
    return y


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def load_idx_files(
    paths: dict[str, Path],
    *,
    name: str,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> DatasetBundle:
    """Build a bundle from the four resolved IDX files (keys: the names in :data:`IDX_FILES`).

    ``mean``/``std`` default to the statistics of the training images, ``num_classes`` to
    ``len(class_names)`` or else the largest training label plus one.
    """
    tri, trl, tei, tel = (paths[k] for k in IDX_FILES)
    x_train, x_test = _images(read_idx(tri), tri), _images(read_idx(tei), tei)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{tei}: test images are {list(x_test.shape[2:])} pixels but train images are {list(x_train.shape[2:])}"
        )
    raw_train_labels = read_idx(trl)
    if raw_train_labels.size == 0:
        raise DataError(f"{trl}: the training split has no labels")
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(raw_train_labels.max()) + 1
    y_train = _labels(raw_train_labels, x_train.shape[0], num_classes, trl)
    y_test = _labels(read_idx(tel), x_test.shape[0], num_classes, tel)
    if mean is None or std is None:
        mean, std = _stats(x_train)
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
    info = DataInfo(name, num_classes, 1, int(x_train.shape[2]), int(x_train.shape[3]), tuple(mean), tuple(std), names)
    return DatasetBundle(info, TensorSplit(x_train, y_train), TensorSplit(x_test, y_test))


def load_idx_dataset(
    root: str | Path,
    *,
    name: str = "idx",
    subdirs: Sequence[str] = (),
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> DatasetBundle:
    """Load an MNIST-like dataset: the four files of :data:`IDX_FILES` (``.gz`` or not) in ``root``.

    ``subdirs`` are extra layouts searched under ``root`` (for example ``FashionMNIST/raw``).
    ``mean``/``std`` default to the statistics of the training images.
    """
    folder = Path(root).expanduser()
    source = FileSource(
        name,
        (folder,),
        IDX_FILES,
        ("put the four IDX files (gzipped or not) in that folder",),
        folder,
        tuple(subdirs),
        gz_ok=True,
    )
    return load_idx_files(
        source.ensure(), name=name, num_classes=num_classes, mean=mean, std=std, class_names=class_names
    )


def fashion_mnist_source(root: str | Path | None = None) -> FileSource:
    """Where Fashion-MNIST is looked for: ``root`` if given, else Debian's folder, then
    ``$RTK_DATA/fashion-mnist`` (also where ``download`` puts it)."""
    if root is not None:
        roots: tuple[Path, ...] = (Path(root).expanduser(),)
    else:
        roots = (FASHION_MNIST_DEBIAN_ROOT, default_root("fashion-mnist"))
    target = roots[-1]
    how = (
        f"as root: apt-get update && apt-get install dataset-fashion-mnist  (puts them in {FASHION_MNIST_DEBIAN_ROOT}"
        + (", then leave root unset)" if root is not None else ")"),
        f"or set download = true (needs network and torchvision; downloads into {target})",
        "or copy the four files into one of the folders above",
    )
    return FileSource(
        "fashion-mnist", roots, IDX_FILES, how, target, ("FashionMNIST/raw",), gz_ok=True, download_key="fashion-mnist"
    )


def mnist_source(root: str | Path | None = None) -> FileSource:
    """Where MNIST is looked for: ``root``, default ``$RTK_DATA/mnist``."""
    folder = Path(root).expanduser() if root is not None else default_root("mnist")
    how = (
        f"set download = true (needs network and torchvision; downloads into {folder})",
        f"or copy the four files into {folder}, or set root to the folder that holds them "
        "(the default folder is $RTK_DATA/mnist)",
    )
    return FileSource("mnist", (folder,), IDX_FILES, how, folder, ("MNIST/raw",), gz_ok=True, download_key="mnist")


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> DatasetBundle:
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28, 10 classes) from its IDX files.

    Without ``root``, looks in ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``) and then in ``$RTK_DATA/fashion-mnist``.
    """
    paths = fashion_mnist_source(root).ensure(download)
    return load_idx_files(
        paths,
        name="fashion-mnist",
        num_classes=10,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        class_names=FASHION_MNIST_CLASSES,
    )


def load_mnist(root: str | Path | None = None, download: bool = False) -> DatasetBundle:
    """MNIST (60,000 train / 10,000 test, 1x28x28) from its IDX files in ``root`` (default ``$RTK_DATA/mnist``)."""
    paths = mnist_source(root).ensure(download)
    return load_idx_files(
        paths, name="mnist", num_classes=10, mean=MNIST_MEAN, std=MNIST_STD, class_names=MNIST_CLASSES
    )
