"""Data from what the user has: tensors, ``Dataset`` objects, ``.npz``/``.safetensors`` files of
``x`` and ``y``, the user's own loader code, and any torchvision dataset class.

Every source ends as a :class:`~rtk.data.DatasetBundle` with images in [0, 1]; its
:class:`~rtk.data.DataInfo` is inferred from the data (:func:`infer_info`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .core import DataInfo, DatasetBundle, TensorSplit

log = logging.getLogger(__name__)


def as_tensor(v: Any, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    import numpy as np

    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise DataError(f"{what} must be a tensor or a numpy array, got {type(v).__name__}")


def tensor_split(x: Any, y: Any, *, where: str = "data") -> TensorSplit:
    """An in-memory split from images ``[N, C, H, W]`` in [0, 1] and integer labels ``[N]``.

    ``uint8`` images are scaled by 1/255; ``[N, H, W]`` gets a channel axis.
    """
    x, y = as_tensor(x, f"{where}: x"), as_tensor(y, f"{where}: y")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(f"{where}: x must have shape [N, C, H, W] (or [N, H, W]), got {list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: y must have shape [{len(x)}] (one integer label per image), got {list(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(
            f"{where}: images must lie in [0, 1] (attack budgets are measured there), got values in "
            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; give unnormalized images, and for a model that "
            f"expects normalized inputs pass normalize=(mean, std)"
        )
    return TensorSplit(x, y)


def as_split(data: Any, where: str = "data") -> Dataset:
    """A split from an ``(x, y)`` pair of tensors/arrays or a map-style ``Dataset`` of ``(image, label)``."""
    if isinstance(data, TensorSplit):
        return data
    if isinstance(data, Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"{where}: the dataset has no length; rtk needs a map-style Dataset") from None
        if n == 0:
            raise DataError(f"{where}: the dataset is empty")
        item = data[0]
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
            raise DataError(
                f"{where}: dataset items must be (image tensor [C, H, W], label) pairs, got {type(item).__name__}"
                f"{' of ' + ', '.join(type(i).__name__ for i in item) if isinstance(item, (tuple, list)) else ''}"
            )
        if item[0].ndim != 3:
            raise DataError(f"{where}: dataset images must have shape [C, H, W], got {list(item[0].shape)}")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tensor_split(data[0], data[1], where=where)
    raise DataError(
        f"{where}: got {type(data).__name__}; allowed: an (x, y) pair of tensors or arrays, or a Dataset of "
        f"(image, label) pairs"
    )


def _labels(split: Dataset, limit: int = 100_000) -> torch.Tensor | None:
    if isinstance(split, TensorSplit):
        return split.y
    targets = getattr(split, "targets", None)
    targets = targets if targets is not None else getattr(split, "labels", None)
    if targets is not None:
        return torch.as_tensor(targets).flatten()
    n = len(split)  # type: ignore[arg-type]
    if n > limit:
        return None
    return torch.tensor([int(split[i][1]) for i in range(n)])


def infer_info(
    name: str,
    train: Dataset,
    test: Dataset,
    *,
    num_classes: int | None = None,
    min_classes: int = 0,
    class_names: list[str] | None = None,
    stats_examples: int = 2000,
) -> DataInfo:
    """What a model needs to know, from the data itself: shape, classes, per-channel mean and std.

    ``num_classes`` defaults to the largest label + 1 (over both splits), and is at least
    ``min_classes`` (for example the width of a model's output); mean/std are measured
    on up to ``stats_examples`` training images (they set the Normalize layer of rtk's models).
    """
    first = train[0][0]
    c, h, w = (int(s) for s in first.shape)
    if num_classes is None:
        found = [y for y in (_labels(train), _labels(test)) if y is not None and len(y)]
        if not found:
            raise DataError(f"dataset {name!r}: cannot count the classes; give num_classes")
        num_classes = max(int(y.max()) for y in found) + 1
    num_classes = max(num_classes, min_classes)
    if isinstance(train, TensorSplit):
        x = train.x[:stats_examples]
    else:
        n = min(len(train), stats_examples)  # type: ignore[arg-type]
        x = torch.stack([train[i][0] for i in range(n)])
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(dim=(0, 2, 3)))
    names = tuple(class_names) if class_names else None
    return DataInfo(name, int(num_classes), c, h, w, mean, std, names)


def to_bundle(obj: Any, name: str, *, num_classes: int | None = None, where: str = "dataset") -> DatasetBundle:
    """A bundle from what a dataset callable returns: a DatasetBundle, a ``(train, test)`` pair,
    a ``{"train": ..., "test": ...}`` table, or one Dataset (used as both splits, with a warning)."""
    if isinstance(obj, DatasetBundle):
        return obj
    if isinstance(obj, Mapping):
        if not {"train", "test"} <= set(obj):
            raise DataError(f"{where}: a table of splits needs 'train' and 'test', got {sorted(obj)}")
        train, test = obj["train"], obj["test"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and not isinstance(obj[0], (torch.Tensor,)):
        train, test = obj
    elif isinstance(obj, Dataset):
        log.warning("%s: one dataset was returned; it serves as both the train and the test split", where)
        train = test = obj
    else:
        raise DataError(
            f"{where}: returned {type(obj).__name__}; allowed: a Dataset, a (train, test) pair of Datasets or of "
            f"(x, y) pairs, a {{'train': ..., 'test': ...}} table, or a DatasetBundle"
        )
    train, test = as_split(train, f"{where}: train"), as_split(test, f"{where}: test")
    classes = getattr(train, "classes", None)
    names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    return DatasetBundle(infer_info(name, train, test, num_classes=num_classes, class_names=names), train, test)


# ---------------------------------------------------------------------------- files
def read_tensors_file(path: str | Path, *, where: str = "tensors") -> TensorSplit:
    """``x`` and ``y`` from a ``.npz`` (read without pickle) or ``.safetensors`` file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{where}: file {p} not found")
    if p.suffix == ".npz":
        import numpy as np

        try:
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError) as exc:
            raise DataError(f"{where}: {p} is not a readable .npz file of arrays: {exc}") from None
    elif p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            arrays = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{where}: {p} is not a valid safetensors file: {exc}") from None
    else:
        raise DataError(f"{where}: {p}: unknown suffix {p.suffix!r}; allowed: .npz, .safetensors")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{where}: {p} has no {' or '.join(missing)}; it holds {sorted(arrays)} (expected x and y)")
    return tensor_split(arrays["x"], arrays["y"], where=f"{where}: {p}")


def split_off(split: TensorSplit, fraction: float, seed: int) -> tuple[TensorSplit, TensorSplit]:
    """A deterministic random ``(train, test)`` split holding out ``fraction`` of the examples."""
    n = len(split)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise DataError(f"test_fraction {fraction} leaves no training example out of {n}")
    return split.subset(order[k:].sort().values), split.subset(order[:k].sort().values)


def load_tensor_files(
    train: str | Path,
    test: str | Path | None = None,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    num_classes: int | None = None,
    name: str = "tensors",
) -> DatasetBundle:
    """A bundle from ``.npz`` / ``.safetensors`` files of ``x`` and ``y``; without a test file,
    ``test_fraction`` of the training file is held out (a fixed draw under ``seed``)."""
    train_split = read_tensors_file(train, where="dataset.train")
    if test is not None:
        test_split = read_tensors_file(test, where="dataset.test")
    else:
        train_split, test_split = split_off(train_split, test_fraction, seed)
    return to_bundle((train_split, test_split), name, num_classes=num_classes, where=name)


def tensor_file_problems(**files: str | None) -> list[str]:
    """Plan-time problems of tensor files given by key (missing, wrong suffix)."""
    problems = []
    for key, p in files.items():
        if p is None:
            continue
        if not Path(p).is_file():
            problems.append(f"{key}: file {p} not found")
        elif Path(p).suffix not in (".npz", ".safetensors"):
            problems.append(f"{key}: {p}: allowed suffixes .npz, .safetensors")
    return problems


# ---------------------------------------------------------------------------- user code
def check_code_dataset(kind: str, source: str, kwargs: dict[str, Any]) -> list[str]:
    """Plan-time problems of a ``python:`` / ``module:`` dataset (file, callable, options); a
    source without problems is trusted (an experiment names it)."""
    from ..models.sources import check_code_source

    return check_code_source(kind, source, kwargs, builds_module=False)


def load_code_dataset(
    kind: str, source: str, kwargs: dict[str, Any], *, num_classes: int | None = None
) -> DatasetBundle:
    """The bundle a trusted ``python:`` / ``module:`` dataset callable returns (see :func:`to_bundle`)."""
    from ..models.sources import call_user, load_callable, require_trusted

    require_trusted(kind, source)
    obj = call_user(load_callable(kind, source), kwargs, f"{kind}:{source}")
    return to_bundle(obj, source.rpartition(":")[2], num_classes=num_classes, where=f"{kind}:{source}")


# ---------------------------------------------------------------------------- torchvision
def torchvision_dataset_class(name: str) -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(
            'torchvision is not installed; "torchvision:<ClassName>" datasets need it: pip install "rtk[vision]"'
        ) from None

    names = sorted(n for n in dir(tvd) if not n.startswith("_") and inspect.isclass(getattr(tvd, n)))
    cls = getattr(tvd, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Dataset)):
        from ..errors import suggest

        raise DataError(
            f"torchvision has no dataset class {name!r}{suggest(name, names)}; classes: {', '.join(names[:15])}, ..."
        )
    return cls


def _split_kwargs(cls: Any, train: bool) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    if "train" in params:
        return {"train": train}
    if "split" in params:
        return {"split": "train" if train else "test"}
    return {}


def torchvision_problems(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Plan-time problems of a torchvision dataset: the class and the keyword options."""
    try:
        cls = torchvision_dataset_class(name)
    except DataError as exc:
        return [str(exc)]
    params = inspect.signature(cls).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        allowed = [
            n for n in params if n not in ("transform", "target_transform", "root", "download", "train", "split")
        ]
        return [
            f"torchvision.datasets.{name} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(allowed)}"
        ]
    return []


def load_torchvision_dataset(
    name: str, root: str | Path, *, download: bool = False, kwargs: dict[str, Any] | None = None
) -> DatasetBundle:
    """Any torchvision dataset class: its train and test splits as tensors in [0, 1] (``ToTensor``)."""
    from torchvision import transforms

    cls = torchvision_dataset_class(name)
    params = inspect.signature(cls).parameters
    base: dict[str, Any] = dict(kwargs or {})
    if "root" in params:
        base["root"] = str(root)
    if "download" in params:
        base["download"] = download
    base["transform"] = transforms.ToTensor()
    has_splits = bool(_split_kwargs(cls, True))
    try:
        train = cls(**base, **_split_kwargs(cls, True))
        test = cls(**base, **_split_kwargs(cls, False)) if has_splits else train
    except (RuntimeError, OSError) as exc:
        hint = "" if download else "; set download = true to fetch it (needs network access)"
        raise DataError(f"torchvision.datasets.{name} under {root}: {exc}{hint}") from None
    if not has_splits:
        log.warning("torchvision.datasets.%s has no train/test switch; the one split serves as both", name)
    return to_bundle((train, test), name, where=f"torchvision.datasets.{name}")


# ---------------------------------------------------------------------------- checkpoints
def load_dataset(table: Mapping[str, Any], registry: Any = None, *, where: str = "dataset") -> DatasetBundle:
    """A registered dataset from a table ``{"name": ..., **options}``, its subsets applied, as
    the runner loads it (``name`` may be a source such as ``"python:data.py:load"``)."""
    from ..options import validate_options
    from ..registry import default_registry
    from .core import apply_limits

    registry = registry if registry is not None else default_registry()
    options = {k: v for k, v in table.items() if k != "name"}
    name = str(table.get("name"))
    if ":" in name:
        name, source = name.split(":", 1)
        options = {"source": source, **options}
    spec = registry.get("dataset", name)
    opts = validate_options(spec.options, options, where)
    bundle = spec.load(opts)
    return apply_limits(bundle, opts) if hasattr(opts, "limit_train") else bundle


def checkpoint_dataset(spec: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The dataset a checkpoint's model was trained on, as a dataset table ``{"name": ...,
    **options}``, or ``None`` and the reason it cannot be rebuilt from the checkpoint alone."""
    ds = spec.get("dataset")
    if not isinstance(ds, Mapping) or not ds.get("name"):
        return None, "it records no dataset options (written before checkpoints recorded them)"
    if not ds.get("rebuildable", True):
        return None, "it was trained on in-memory data handed to rtk from Python"
    if ds["name"] in ("python", "module"):
        source = (ds.get("options") or {}).get("source", "?")
        return None, (
            f"its dataset is built by user code ({ds['name']}:{source}), which rtk does not run on the word of a "
            f"checkpoint; evaluate through the experiment file that names it"
        )
    return {"name": ds["name"], **dict(ds.get("options") or {})}, ""


__all__ = [
    "as_tensor",
    "check_code_dataset",
    "load_code_dataset",
    "load_tensor_files",
    "tensor_file_problems",
    "as_split",
    "checkpoint_dataset",
    "infer_info",
    "load_dataset",
    "load_torchvision_dataset",
    "read_tensors_file",
    "split_off",
    "tensor_split",
    "to_bundle",
    "torchvision_dataset_class",
    "torchvision_problems",
]
