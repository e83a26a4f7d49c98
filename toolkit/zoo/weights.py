"""Reading RobustBench weight files safely.

Every file goes through the same steps, before any of its contents reach a model:

1. **sniff**: an HTML page (what a failed Google Drive download leaves), an empty file,
   or a file that is neither a zip nor a pickle is corrupt;
2. **hash**: sha256 against the ``sha256`` option, then the pinned table
   (:mod:`rtk.zoo.pinned`), then the hash recorded on the first successful load (a JSON
   sidecar ``<file>.rtk.json``); a mismatch is an error naming both hashes;
3. **torch.load(weights_only=True)**: a checkpoint that needs more than tensors and plain
   containers is refused (naming the Python globals it needs) unless the caller opts in
   with ``allow_unsafe_pickle``; a file torch cannot read is corrupt;
4. **state dict**: found inside the checkpoint (``state_dict`` / ``last`` / ... entries),
   its keys matched to the architecture by stripping or adding the ``module.`` /
   ``model.`` prefixes robustbench checkpoints carry; only normalization constants may be
   missing.

A corrupt file is moved aside to ``<file>.corrupt`` (so the next attempt does not treat
it as valid weights) and the error says so. The hash is recorded only after the weights
loaded into the architecture.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.checkpoint import mismatch_clauses, state_mismatch
from .pinned import PINNED_SHA256

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".rtk.json"
SIDECAR_FORMAT = "rtk-zoo-weights/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
#: Buffers an architecture may define itself (input normalization constants); a checkpoint may lack them.
NORMALIZATION_BUFFERS = frozenset({"mu", "sigma", "mean", "std"})
#: Containers robustbench checkpoints keep their state dict under, in the order tried.
STATE_KEYS = ("state_dict", "last", "model_state_dict", "model", "net")


class WeightsNotFoundError(CheckpointError):
    """The weight file is not in the model directory (and was not downloaded)."""


class CorruptWeightsError(CheckpointError):
    """The weight file is not a readable checkpoint (HTML page, truncated, garbage)."""


class HashMismatchError(CheckpointError):
    """The weight file's sha256 differs from the pinned, given or recorded hash."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs full unpickling, and the caller did not opt in."""


# ---------------------------------------------------------------------------- hashes
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_recorded(path: str | os.PathLike) -> dict[str, Any] | None:
    """The hash record written on the first successful load, or None."""
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"hash record {side} is unreadable ({exc}); delete it to record the hash anew") from None
    if not isinstance(data, dict) or not _HEX64.match(str(data.get("sha256", ""))):
        raise CheckpointError(f"hash record {side} holds no valid sha256; delete it to record the hash anew")
    return data


def record_hash(path: str | os.PathLike, digest: str, *, model_id: str) -> Path | None:
    """Write the sidecar ``<file>.rtk.json``; returns its path, or None when not writable."""
    side = sidecar_path(path)
    data = {
        "format": SIDECAR_FORMAT,
        "file": Path(path).name,
        "model": model_id,
        "sha256": digest,
        "size": Path(path).stat().st_size,
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, side)
    except OSError as exc:
        log.warning(
            "could not record the sha256 of %s in %s (%s); it will not be checked on later loads", path, side, exc
        )
        return None
    log.info("recorded sha256 %s of %s in %s", digest, path, side)
    return side


def normalize_sha256(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("sha256:"):
        v = v[len("sha256:") :]
    if not _HEX64.match(v):
        raise ValueError(f"expected a sha256 hex digest (64 hex digits), got {value!r}")
    return v


@dataclass(frozen=True)
class Expected:
    """The hash a file must have, and where that expectation comes from."""

    sha256: str
    source: str  # "option", "pinned", "recorded"
    detail: str = ""


def expected_hash(path: Path, rel: str, given: str | None) -> Expected | None:
    if given:
        return Expected(normalize_sha256(given), "option", "the model's sha256 option")
    pinned = PINNED_SHA256.get(rel)
    if pinned:
        return Expected(normalize_sha256(pinned), "pinned", "rtk's pinned hash table (rtk.zoo.pinned)")
    rec = read_recorded(path)
    if rec:
        when = rec.get("recorded", "an earlier load")
        return Expected(rec["sha256"], "recorded", f"the hash recorded on first load ({when}) in {sidecar_path(path)}")
    return None


def check_hash(
    path: Path, rel: str, given: str | None, *, record_path: Path | None = None
) -> tuple[str, Expected | None]:
    """Hash ``path`` and compare; raises :class:`HashMismatchError` naming both hashes.

    ``record_path`` is the file whose recorded hash applies (default ``path``; a download
    in progress is checked against the record of the file it will replace)."""
    digest = sha256_file(path)
    exp = expected_hash(record_path or path, rel, given)
    if exp is not None and exp.sha256 != digest:
        advice = {
            "option": "fix the sha256 option or replace the file with the right one",
            "pinned": "the file is not the published checkpoint: delete it and fetch it again",
            "recorded": (
                f"the file changed since it was first loaded; if you replaced it on purpose, delete "
                f"{sidecar_path(record_path or path)} so the new hash is recorded, otherwise fetch the file again"
            ),
        }[exp.source]
        raise HashMismatchError(
            f"sha256 mismatch for {path}: expected {exp.sha256} (from {exp.detail}), found {digest}; {advice}"
        )
    return digest, exp


# ---------------------------------------------------------------------------- sniff and quarantine
def sniff(path: Path) -> str:
    """``zip`` (torch >= 1.6), ``pickle`` (legacy torch.save), ``html``, ``empty`` or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80"):
        return "pickle"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<body")) or b"<html" in text:
        return "html"
    return "unknown"


def quarantine(path: Path) -> Path | None:
    """Move a corrupt file aside to ``<file>.corrupt`` (replacing an older one) and drop its
    hash record. Returns the new path, or None when the file could not be moved."""
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.warning("could not move corrupt file %s aside: %s", path, exc)
        try:
            path.unlink()
        except OSError:
            return None
        return None
    side = sidecar_path(path)
    if side.exists():
        try:
            side.unlink()
        except OSError:
            pass
    return target


def _corrupt(path: Path, what: str, origin: str) -> CorruptWeightsError:
    moved = quarantine(path)
    where = (
        f"it was moved aside to {moved}"
        if moved is not None
        else "it could not be moved aside; delete it"
        if path.exists()
        else "it was deleted"
    )
    return CorruptWeightsError(f"{path} is not a valid checkpoint: {what}; {where}. {origin}")


# ---------------------------------------------------------------------------- loading
def _unsafe_globals(path: Path, kind: str, exc: BaseException) -> list[str] | None:
    """The Python globals a checkpoint needs beyond weights_only, or None when it is corrupt."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if kind == "zip" and finder is not None:
        try:
            names = finder(str(path))
        except Exception:  # noqa: BLE001 - unreadable zip: corrupt
            return None
        return list(names) or None
    found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
    return found or None


def read_checkpoint(path: Path, *, allow_unsafe_pickle: bool = False, origin: str = "") -> tuple[Any, bool]:
    """``torch.load`` the file with ``weights_only=True``; see the module docstring.

    Returns ``(object, unsafe)``; ``unsafe`` is True when full unpickling was used (only
    with ``allow_unsafe_pickle``)."""
    kind = sniff(path)
    if kind == "html":
        raise _corrupt(path, "it is an HTML page (a failed download), not weights", origin)
    if kind == "empty":
        raise _corrupt(path, "it is empty", origin)
    if kind == "unknown":
        raise _corrupt(path, "it is neither a PyTorch zip checkpoint nor a pickle", origin)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True), False
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        needs = _unsafe_globals(path, kind, exc)
        if needs is None:
            raise _corrupt(path, f"torch cannot read it ({type(exc).__name__}: {_first_line(exc)})", origin) from None
        if not allow_unsafe_pickle:
            raise UnsafeCheckpointError(
                f"{path} needs full unpickling (it stores the Python objects {', '.join(needs)}), which can run "
                f"arbitrary code, so rtk refused to load it. Only if you trust where the file came from, set "
                f"allow_unsafe_pickle = true for this model (or pass --allow-unsafe-pickle)"
            ) from None
    log.warning(
        "loading %s with full unpickling (allow_unsafe_pickle = true): this can run arbitrary code; the file needs %s",
        path,
        ", ".join(needs),
    )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), True
    except Exception as exc:  # noqa: BLE001
        raise _corrupt(path, f"torch cannot read it ({type(exc).__name__}: {_first_line(exc)})", origin) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, *, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a robustbench checkpoint: the object itself, or under ``state_dict``,
    ``last`` (robustbench takes the last, not the best, epoch), ``model_state_dict`` ..."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return extract_state_dict(inner, where=f"{where}[{key!r}]")
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(
            f"{where}: no state dict found in the checkpoint; its top-level keys are {keys}; "
            f"expected tensors, or one of {', '.join(STATE_KEYS)}"
        )
    raise CheckpointError(f"{where}: expected a state dict (a mapping of tensors), found {type(obj).__name__}")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _add(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def key_candidates(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The state dict as saved and with robustbench's prefix fixes (``module.`` from
    DataParallel, ``model.`` from wrappers, ``model.`` added for normalizing wrappers)."""
    no_module = _strip(state, "module.")
    out = [
        ("as saved", state),
        ("without 'module.'", no_module),
        ("without 'module.'/'model.'", _strip(no_module, "model.")),
        ("with 'model.' added", _add(no_module, "model.")),
    ]
    seen: set[frozenset[str]] = set()
    unique = []
    for label, cand in out:
        key = frozenset(cand)
        if key not in seen:
            seen.add(key)
            unique.append((label, cand))
    return unique


@dataclass(frozen=True)
class FitReport:
    """How a state dict was matched to an architecture."""

    transform: str
    defaulted: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def _tolerated_missing(model: nn.Module, key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        return True
    buffers = dict(model.named_buffers())
    return last in NORMALIZATION_BUFFERS and key in buffers


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> FitReport:
    """Load ``state`` into ``model`` after matching its keys; error naming the differences."""
    own = model.state_dict()
    own_keys = set(own)
    best_label, best = max(key_candidates(state), key=lambda c: len(own_keys & set(c[1])))
    missing, unexpected, wrong = state_mismatch(own, best)
    bad_missing = [k for k in missing if not _tolerated_missing(model, k)]
    if bad_missing or wrong:
        parts = mismatch_clauses(bad_missing, unexpected, sorted(wrong), target="architecture", listed=_some, most=8)
        raise CheckpointError(f"{where} does not match the architecture (keys taken {best_label}): " + "; ".join(parts))
    result = model.load_state_dict(best, strict=False)
    still_missing = [k for k in result.missing_keys if not _tolerated_missing(model, k)]
    if still_missing:  # pragma: no cover - guarded above
        raise CheckpointError(f"{where}: keys not loaded: {_some(still_missing)}")
    defaulted = tuple(k for k in missing if not k.endswith("num_batches_tracked"))
    if defaulted:
        log.info("%s: kept the architecture's own values of %s (not in the checkpoint)", where, _some(list(defaulted)))
    if unexpected:
        log.warning("%s: ignored checkpoint entries that are not in the architecture: %s", where, _some(unexpected))
    return FitReport(best_label, defaulted, tuple(unexpected))


def _some(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def save_zoo_checkpoint(
    model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *, data_parallel: bool = True
) -> Path:
    """Write weights in the layout robustbench reads: ``{"state_dict": {"module.<key>": tensor}}``
    (``data_parallel=False`` drops the ``module.`` prefix). Atomic; returns the path.

    Used to place a locally trained or fine-tuned model where the zoo loader finds it,
    and by tests to create a checkpoint without a download.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    prefix = "module." if data_parallel else ""
    payload = {"state_dict": {prefix + k: v.detach().cpu().clone() for k, v in state.items()}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(payload, str(tmp))
    os.replace(tmp, p)
    return p
