"""Small builders shared by the trust-boundary tests: tiny checkpoints, run directories, payloads."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from experimenthelpers import digits_experiment, experiment_toml

import rtk
from rtk.models import ModelRecipe, save_checkpoint
from rtk.options import validate_options

EXPERIMENT = experiment_toml(
    digits_experiment(
        "trust",
        {"kind": "fine-tune", "model": "m", "epochs": 1},
        {"kind": "evaluate", "models": ["m"], "attacks": [{"name": "pgd", "eps": 0.1, "steps": 1}], "checks": False},
        limits=(60, 30),
        model={"arch": "mlp", "hidden": [8]},
        model_name="m",
    )
)


def finished_run(root: Path) -> Path:
    """Run :data:`EXPERIMENT` (fine-tune 1 epoch + evaluate) in ``root``; return its run directory."""
    (root / "e.toml").write_text(EXPERIMENT)
    rtk.run(root / "e.toml", out=root / "run")
    return root / "run"


def digits_info(registry: Any) -> Any:
    spec = registry.get("dataset", "digits")
    return spec.load(spec.options()).info


def make_checkpoint(path: Path, registry: Any, *, arch: str = "mlp", info: Any = None, **options: Any) -> Path:
    """A freshly initialised model saved as an rtk checkpoint at ``path`` (the stem)."""
    spec = registry.get("model", arch)
    opts = validate_options(spec.options, options or ({"hidden": [8]} if arch == "mlp" else {}), "test")
    info = info or digits_info(registry)
    model = spec.build(info, opts)
    return save_checkpoint(path, model, ModelRecipe(arch, opts.model_dump(), info))


def edit_spec(stem: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite a checkpoint's JSON with ``changes`` (None deletes a key)."""
    js = Path(str(stem) + ".json")
    spec = json.loads(js.read_text())
    for k, v in changes.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    js.write_text(json.dumps(spec))
    return spec


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def write_pickle_payload(path: Path, marker: Path) -> Path:
    """A ``.pt``-named file whose unpickling runs the payload (torch.load without weights_only)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Payload(marker)}, path)
    return path


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, bytes | str]]:
    """Every file (and symlink) under ``root`` except below ``skip``: its content or link target."""
    out: dict[str, tuple[int, bytes | str]] = {}
    skip = skip.resolve() if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        if skip is not None and (d.resolve() == skip or skip in d.resolve().parents):
            dirnames[:] = []
            continue
        for name in filenames + [n for n in dirnames if (d / n).is_symlink()]:
            p = d / name
            if skip is not None and p.resolve().is_relative_to(skip) and not p.is_symlink():
                continue
            out[str(p.relative_to(root))] = (1, os.readlink(p)) if p.is_symlink() else (0, p.read_bytes())
    return out


CIFAR_INFO = {
    "name": "cifar10",
    "num_classes": 10,
    "channels": 3,
    "height": 32,
    "width": 32,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
}


def write_tiny_cifar10(root: Path, per_batch: int = 2) -> Path:
    """A CIFAR-10 folder in the real format (pickled python batches) with a few random images."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": list(range(per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def hostile_zoo_spec(model_dir: Path, *, unsafe: bool = True) -> dict[str, Any]:
    """The JSON options of a checkpoint naming the robustbench model with unsafe loading."""
    return {
        "source": "cifar10/Linf/Ding2020MMA",
        "model_dir": str(model_dir),
        "allow_unsafe_pickle": unsafe,
    }


__all__ = [
    "CIFAR_INFO",
    "EXPERIMENT",
    "Payload",
    "digits_info",
    "edit_spec",
    "finished_run",
    "hostile_zoo_spec",
    "make_checkpoint",
    "pickle_bytes",
    "rtk",
    "snapshot",
    "write_pickle_payload",
    "write_tiny_cifar10",
]
