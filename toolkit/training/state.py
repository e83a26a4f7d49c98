"""Exact-resume training state: safetensors for tensors, JSON for everything else. Never pickle.

A state is a directory ``<state_dir>/epoch-NNNN/`` holding ``state.safetensors`` (model
weights and buffers, optimizer tensors such as momentum buffers and Adam moments, RNG states
as byte tensors) and ``state.json`` (optimizer param groups and scalar state, scheduler and
grad-scaler state, Python and NumPy RNG states, epoch, history, best metric, ...).
``<state_dir>/LATEST`` names the newest complete one.

Writes are atomic: the epoch directory is written under a temporary name and renamed, and
only then is ``LATEST`` replaced (itself atomically). A process killed at any moment
leaves the previous complete state in place, so at most the running epoch is lost.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..trust import atomic_write

FORMAT = "rtk-train-state/1"
LATEST = "LATEST"


# ---------------------------------------------------------------------------- flattening
def _cpu_tensors(prefix: str, items: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Copy tensors to CPU under ``prefix`` (always copies: safetensors refuses shared storage,
    and a state must never alias live tensors)."""
    for k, v in items.items():
        out[prefix + k] = v.detach().to("cpu", copy=True).contiguous()


def flatten_optimizer_state(
    sd: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str = "optimizer/"
) -> dict[str, Any]:
    """Move every tensor of an optimizer ``state_dict`` into ``tensors`` and return the rest
    as JSON-able data, with ``{"$tensor": key}`` placeholders."""
    state_meta: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for name, value in st.items():
            if torch.is_tensor(value):
                key = f"{prefix}state/{pid}/{name}"
                _cpu_tensors("", {key: value}, tensors)
                entry[name] = {"$tensor": key}
            else:
                entry[name] = value
        state_meta[str(pid)] = entry
    groups = []
    for g in sd["param_groups"]:
        group = {}
        for k, v in g.items():
            if torch.is_tensor(v):
                key = f"{prefix}group/{len(groups)}/{k}"
                _cpu_tensors("", {key: v}, tensors)
                group[k] = {"$tensor": key}
            elif isinstance(v, tuple):
                group[k] = {"$tuple": list(v)}
            else:
                group[k] = v
        groups.append(group)
    return {"state": state_meta, "param_groups": groups}


def _restore(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and set(value) == {"$tensor"}:
        return tensors[value["$tensor"]]
    if isinstance(value, dict) and set(value) == {"$tuple"}:
        return tuple(value["$tuple"])
    return value


def unflatten_optimizer_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {int(pid): {k: _restore(v, tensors) for k, v in st.items()} for pid, st in meta["state"].items()}
    groups = [{k: _restore(v, tensors) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _py_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _np_rng_to_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


def capture_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, Any]:
    """Store every RNG state: torch CPU/CUDA and ``generator`` as byte tensors, Python and
    NumPy as JSON."""
    import random

    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    if generator is not None:
        tensors["rng/data"] = generator.get_state()
    return {
        "python": _py_rng_to_json(random.getstate()),
        "numpy": _np_rng_to_json(np.random.get_state()),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor], generator: torch.Generator | None) -> None:
    import random

    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    n_cuda = meta.get("cuda_devices", 0)
    if n_cuda and torch.cuda.is_available():
        states = [tensors[f"rng/cuda/{i}"] for i in range(n_cuda) if f"rng/cuda/{i}" in tensors]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if generator is not None and "rng/data" in tensors:
        generator.set_state(tensors["rng/data"])


# ---------------------------------------------------------------------------- files
@dataclass
class TrainingState:
    """A loaded state: ``tensors`` (everything from the safetensors file) and ``meta`` (the JSON)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model/") :]: v for k, v in self.tensors.items() if k.startswith("model/")}


def write_state(
    state_dir: str | os.PathLike, epoch: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, keep: int = 1
) -> Path:
    """Write one epoch's state atomically, point ``LATEST`` at it, and delete older ones
    (keeping the newest ``keep``)."""
    from safetensors.torch import save_file

    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": FORMAT, "epoch": str(epoch)})
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=1, sort_keys=True))
    if final.exists():  # the same epoch re-run after an interruption: LATEST still names an older state
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write(root / LATEST, name)
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch-") and p.name != name)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_state_path(state_dir: str | os.PathLike) -> Path | None:
    root = Path(state_dir)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() and (path / "state.safetensors").exists() else None


def read_state(path: str | os.PathLike) -> TrainingState:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"training state {path} is unreadable: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}/state.json: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    return TrainingState(path, tensors, meta)


def load_latest(state_dir: str | os.PathLike) -> TrainingState | None:
    """The newest complete state under ``state_dir``, or None when there is none."""
    path = latest_state_path(state_dir)
    return read_state(path) if path is not None else None


__all__ = [
    "TrainingState",
    "capture_rng",
    "flatten_optimizer_state",
    "latest_state_path",
    "load_latest",
    "read_state",
    "restore_rng",
    "unflatten_optimizer_state",
    "write_state",
]
