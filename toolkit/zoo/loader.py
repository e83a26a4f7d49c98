"""Load a RobustBench zoo model from a local model directory.

The architecture comes from robustbench's constructors (``model_zoo.model_dicts``); the
weights are read by rtk itself (:mod:`rtk.zoo.weights`): sniffed, hashed,
``torch.load(weights_only=True)``, keys matched. Nothing is downloaded unless asked
(``download=True``, through robustbench's own Google Drive downloader), and a download is
checked like any other file before it is put in place.

RobustBench models take inputs in [0, 1] and normalize them themselves (each
architecture carries its own constants), exactly rtk's contract for models, so no
:class:`rtk.models.Normalize` layer is added.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .catalog import DATASETS, ZooEntry, ZooId, entry
from .compat import ZooError, import_robustbench
from .weights import (
    CorruptWeightsError,
    WeightsNotFoundError,
    check_hash,
    extract_state_dict,
    fit_state_dict,
    read_checkpoint,
    record_hash,
    sniff,
)

log = logging.getLogger(__name__)

ENV_MODEL_DIR = "RTK_MODEL_DIR"
DEFAULT_MODEL_DIR = "models"


def resolve_model_dir(model_dir: str | os.PathLike | None = None) -> Path:
    """``model_dir`` if given, else ``$RTK_MODEL_DIR``, else ``./models`` (robustbench's default)."""
    if model_dir:
        return Path(os.path.expanduser(str(model_dir)))
    env = os.environ.get(ENV_MODEL_DIR, "").strip()
    return Path(os.path.expanduser(env)) if env else Path(DEFAULT_MODEL_DIR)


@dataclass(frozen=True)
class WeightFile:
    """One weight file that was loaded: where, its sha256, and how it was checked."""

    path: str
    sha256: str
    checked_against: str | None  # "option", "pinned", "recorded", or None (first load: recorded now)
    unsafe_pickle: bool
    keys: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_data_info(zid: ZooId, info: Any) -> None:
    """Raise :class:`ZooError` when the experiment's data cannot feed the zoo model."""
    if info is None:
        return
    classes, channels, height, width = DATASETS[zid.dataset]
    problems = []
    if info.num_classes != classes:
        problems.append(f"{classes} classes (the data has {info.num_classes})")
    if info.channels != channels:
        problems.append(f"{channels} channels (the data has {info.channels})")
    size_ok = (info.height, info.width) == (height, width)
    if not size_ok and zid.dataset != "imagenet":
        problems.append(f"{height}x{width} images (the data has {info.height}x{info.width})")
    if problems:
        raise ZooError(
            f"the zoo model {zid} was trained on {zid.dataset} and expects "
            + ", ".join(problems)
            + f"; the experiment's dataset {getattr(info, 'name', '?')!r} does not match. Use a "
            f'{zid.dataset} dataset (for example name = "{zid.dataset}" with its root), or a zoo '
            f"model of the experiment's dataset"
        )
    if not size_ok:
        log.warning(
            "zoo model %s was evaluated by RobustBench on %dx%d images; the data is %dx%d",
            zid,
            height,
            width,
            info.height,
            info.width,
        )


def build_architecture(zid: ZooId | str) -> nn.Module:
    """robustbench's architecture for ``zid`` with its initial (random) weights, in eval mode."""
    zid = ZooId.parse(zid) if isinstance(zid, str) else zid
    e = entry(zid, describe=False)
    if not e.supported:
        raise ZooError(f"{zid}: {e.why_not}")
    import_robustbench()
    from .catalog import constructor

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = constructor(zid)()
        except Exception as exc:  # noqa: BLE001 - robustbench's constructors may need CUDA etc.
            raise ZooError(f"{zid}: robustbench could not build the architecture: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def _origin(e: ZooEntry, model_dir: Path) -> str:
    if not e.gdrive_ids:
        return f"RobustBench id {e.id.name!r} (dataset {e.id.dataset}, threat model {e.id.threat})"
    links = ", ".join(e.sources())
    return (
        f"Its weights come from RobustBench (model id {e.id.name!r}, dataset {e.id.dataset}, threat model "
        f"{e.id.threat}), downloadable from Google Drive: {links} ; or let robustbench fetch them with "
        f"robustbench.utils.load_model({e.id.name!r}, model_dir={str(model_dir)!r}, dataset={e.id.dataset!r}, "
        f"threat_model={e.id.threat!r}), or set download = true"
    )


def _download(e: ZooEntry, index: int, target: Path) -> Path:
    """Fetch one file with robustbench's downloader into ``<target>.part``; never in place."""
    import_robustbench()
    from robustbench import utils as rb_utils

    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (Google Drive id %s) to %s", e.id, e.gdrive_ids[index], part)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rb_utils.download_gdrive_new(e.gdrive_ids[index], part)
    except Exception as exc:  # noqa: BLE001 - requests/gdown errors: offline, quota, moved file
        if part.exists():
            part.unlink()
        raise WeightsNotFoundError(
            f"weights of {e.id} not found at {target} and the download failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Place the file there by hand. "
            + _origin(e, target.parents[2])
        ) from None
    if not part.exists():
        raise WeightsNotFoundError(
            f"weights of {e.id}: the download produced no file at {part}. " + _origin(e, target.parents[2])
        )
    return part


def _load_one(
    e: ZooEntry,
    path: Path,
    rel: str,
    module: nn.Module,
    *,
    sha256: str | None,
    allow_unsafe_pickle: bool,
    origin: str,
    record_at: Path | None = None,
) -> WeightFile:
    kind = sniff(path)  # corrupt files are moved aside before their hash is compared
    if kind in ("html", "empty", "unknown"):
        read_checkpoint(path, origin=origin)  # raises CorruptWeightsError
    final = record_at or path
    digest, exp = check_hash(path, rel, sha256, record_path=final)
    raw, unsafe = read_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle, origin=origin)
    state = extract_state_dict(raw, where=str(path))
    report = fit_state_dict(module, state, where=str(path))
    if record_at is not None:  # a checked download takes its place
        os.replace(path, final)
    if exp is None:
        record_hash(final, digest, model_id=str(e.id))
    return WeightFile(str(final), digest, exp.source if exp else None, unsafe, report.transform)


def _submodules(model: nn.Module, e: ZooEntry) -> list[nn.Module]:
    if e.ensemble == 1:
        return [model]
    members = getattr(model, "models", None)
    if members is None or len(members) != e.ensemble:
        raise ZooError(
            f"{e.id}: an ensemble of {e.ensemble} files whose architecture has no .models list; rtk cannot load it"
        )
    return list(members)


def load_zoo_model(
    zid: ZooId | str,
    *,
    model_dir: str | os.PathLike | None = None,
    info: Any = None,
    allow_unsafe_pickle: bool = False,
    sha256: str | list[str] | None = None,
    download: bool = False,
    pretrained: bool = True,
) -> nn.Module:
    """Build the zoo model ``zid`` (``"cifar10/Linf/Ding2020MMA"``) with its weights.

    - ``model_dir``: where weights live (``<model_dir>/<dataset>/<threat>/<name>.pt``);
      default ``$RTK_MODEL_DIR`` or ``./models``.
    - ``info``: the experiment's :class:`rtk.data.DataInfo`; checked against the zoo dataset.
    - ``sha256``: the expected hash (a list for ensembles); else pinned/recorded hashes apply.
    - ``allow_unsafe_pickle``: allow checkpoints that need full unpickling (logged warning).
    - ``download``: fetch a missing file with robustbench's downloader (checked before use).
    - ``pretrained=False``: the architecture with random weights (no file needed).

    The module takes [0, 1] inputs and returns logits; ``module.rtk_zoo`` describes what
    was loaded (id, files, sha256).
    """
    zid = ZooId.parse(zid) if isinstance(zid, str) else zid
    e = entry(zid, describe=False)
    if not e.supported:
        raise ZooError(f"{zid}: {e.why_not}")
    check_data_info(zid, info)
    model = build_architecture(zid)
    root = resolve_model_dir(model_dir)
    meta: dict[str, Any] = {"id": str(zid), "model_dir": str(root), "pretrained": pretrained, "files": []}
    if not pretrained:
        model.rtk_zoo = meta  # type: ignore[attr-defined]
        return model
    hashes = [sha256] if isinstance(sha256, str) or sha256 is None else list(sha256)
    if len(hashes) not in (1, len(e.files())) or (len(hashes) != len(e.files()) and hashes[0] is not None):
        raise ZooError(f"{zid}: sha256 must give {len(e.files())} hash(es), one per weight file, got {len(hashes)}")
    if len(hashes) != len(e.files()):
        hashes = [None] * len(e.files())
    origin = _origin(e, root)
    for i, (rel, member) in enumerate(zip(e.files(), _submodules(model, e), strict=True)):
        path = root / rel
        record_at = None
        if not path.is_file():
            if not download:
                raise WeightsNotFoundError(
                    f"weights of the zoo model {zid} not found: expected the file {path.resolve()} "
                    f"(model directory {root.resolve()}). {origin}"
                )
            record_at, path = path, _download(e, i, path)
        try:
            wf = _load_one(
                e,
                path,
                rel,
                member,
                sha256=hashes[i],
                allow_unsafe_pickle=allow_unsafe_pickle,
                origin=origin,
                record_at=record_at,
            )
        except CorruptWeightsError:
            raise
        except Exception:
            if record_at is not None and path.exists():  # a download that failed a check is not kept
                path.unlink()
            raise
        meta["files"].append(wf.to_dict())
        log.info("loaded %s from %s (sha256 %s)", zid, wf.path, wf.sha256)
    model.eval()
    model.rtk_zoo = meta  # type: ignore[attr-defined]
    return model


def file_status(e: ZooEntry, model_dir: str | os.PathLike | None = None) -> str:
    """``missing``, ``present``, ``verified`` (a recorded or pinned hash exists) or ``corrupt``."""
    from .pinned import PINNED_SHA256
    from .weights import read_recorded

    root = resolve_model_dir(model_dir)
    states = []
    for rel in e.files():
        p = root / rel
        if not p.is_file():
            states.append("corrupt" if p.with_name(p.name + ".corrupt").exists() else "missing")
            continue
        try:
            rec = read_recorded(p)
        except Exception:  # noqa: BLE001
            rec = None
        states.append("verified" if rec or rel in PINNED_SHA256 else "present")
    for s in ("missing", "corrupt", "present"):
        if s in states:
            return s
    return "verified"


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter count and what ``rtk_zoo`` says about a loaded zoo model."""
    return {"params": sum(p.numel() for p in model.parameters()), **getattr(model, "rtk_zoo", {})}


__all__ = [
    "ENV_MODEL_DIR",
    "DEFAULT_MODEL_DIR",
    "WeightFile",
    "build_architecture",
    "check_data_info",
    "file_status",
    "load_zoo_model",
    "model_summary",
    "resolve_model_dir",
]
