"""Checkpoints: safetensors weights plus a JSON architecture spec. Never pickle.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The JSON holds
the recipe (architecture name, its options, the data info) so the model can be rebuilt
through the registry, plus free-form ``extra`` metadata (epoch, metrics, masks, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.core import DataInfo
from ..errors import CheckpointError

FORMAT = "rtk-checkpoint/1"


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild a model: architecture name, options, and data info."""

    arch: str
    options: dict[str, Any]
    info: DataInfo
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "options": dict(self.options),
            "data": self.info.to_dict(),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRecipe:
        return cls(d["arch"], dict(d.get("options", {})), DataInfo.from_dict(d["data"]), dict(d.get("extra", {})))


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    recipe: ModelRecipe,
    *,
    metadata: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    dataset: dict[str, Any] | None = None,
) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically; return the stem path.

    ``tensors`` adds extra named tensors (for example pruning masks) under ``extra/``.
    ``dataset`` (optional JSON key ``dataset``): the data the model was trained on, ``{"name",
    "options", "normalize", "rebuildable"}``, so a bare checkpoint is evaluated on that data.
    """
    from safetensors.torch import save_file

    st_path, js_path = _paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (tensors or {}).items():
        state[f"extra/{k}"] = v.detach().cpu().contiguous()
    # safetensors refuses tensors that share memory; clone those.
    seen: dict[int, str] = {}
    for k, v in list(state.items()):
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen and ptr != -1:
            state[k] = v.clone()
        seen[ptr] = k
    spec = {
        "format": FORMAT,
        **recipe.to_dict(),
        "metadata": metadata or {},
        "shapes": {k: list(v.shape) for k, v in state.items()},
    }
    if dataset is not None:
        spec["dataset"] = dataset
    tmp_st = st_path.with_name(st_path.name + ".tmp")
    tmp_js = js_path.with_name(js_path.name + ".tmp")
    save_file(state, str(tmp_st), metadata={"format": FORMAT})
    tmp_js.write_text(json.dumps(spec, indent=2, sort_keys=True))
    os.replace(tmp_st, st_path)
    os.replace(tmp_js, js_path)
    return st_path.with_suffix("")


#: Post-build transforms that ``load_checkpoint`` replays before loading the weights, keyed by
#: the ``kind`` of each entry of the spec's ``extra.transforms`` list (for example a pruned
#: model's masks or its new channel counts). ``fn(model, entry, extra_tensors)`` changes the
#: freshly built model in place or returns a replacement.
_LOAD_TRANSFORMS: dict[str, Any] = {}
#: Built-in providers, imported on first use: kind prefix -> module that registers them.
_TRANSFORM_PROVIDERS = {"pruning.": "rtk.pruning"}


def register_load_transform(kind: str, fn: Any) -> None:
    """Register ``fn(model, entry, extra_tensors)`` for transforms of this ``kind``."""
    _LOAD_TRANSFORMS[kind] = fn


def apply_load_transforms(model: nn.Module, spec: dict[str, Any], extra: dict[str, torch.Tensor]) -> nn.Module:
    """Replay the spec's ``extra.transforms`` on a freshly built model."""
    import importlib

    entries = (spec.get("extra") or {}).get("transforms") or []
    for i, entry in enumerate(entries):
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind not in _LOAD_TRANSFORMS:
            for prefix, module in _TRANSFORM_PROVIDERS.items():
                if isinstance(kind, str) and kind.startswith(prefix):
                    importlib.import_module(module)
        fn = _LOAD_TRANSFORMS.get(kind)
        if fn is None:
            raise CheckpointError(
                f"extra.transforms[{i}]: unknown transform {kind!r}; known: "
                f"{', '.join(sorted(_LOAD_TRANSFORMS)) or '(none)'}. Install the plugin that wrote it"
            )
        out = fn(model, entry, extra)
        model = out if out is not None else model
    return model


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    st_path, js_path = _paths(path)
    if not js_path.exists():
        raise CheckpointError(f"checkpoint spec {js_path} not found (a checkpoint is NAME.safetensors + NAME.json)")
    try:
        spec = json.loads(js_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint spec {js_path} is not valid JSON: {exc}") from None
    if spec.get("format") != FORMAT:
        raise CheckpointError(f"{js_path}: unknown checkpoint format {spec.get('format')!r}, expected {FORMAT!r}")
    return spec


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, _ = _paths(path)
    if not st_path.exists():
        raise CheckpointError(f"checkpoint weights {st_path} not found")
    try:
        return load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{st_path} is not a valid safetensors file: {exc}") from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """Load ``state`` into ``model``; on any mismatch say exactly which keys and shapes differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        (k, list(state[k].shape), list(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
        for k, got, want in wrong[:10]:
            parts.append(f"{k}: checkpoint has shape {got}, model expects {want}")
        raise CheckpointError(f"{where} does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | os.PathLike, registry: Any = None, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelRecipe, dict[str, Any]]:
    """Rebuild the model from its spec through the registry and load its weights.

    Returns ``(model, recipe, spec)``; ``spec["metadata"]`` holds what was saved with it,
    and extra tensors saved with ``tensors=`` are in ``spec["extra_tensors"]``.
    """
    from ..options import validate_options
    from ..registry import default_registry

    registry = registry if registry is not None else default_registry()
    spec = read_spec(path)
    recipe = ModelRecipe.from_dict(spec)
    mspec = registry.get("model", recipe.arch)
    opts = validate_options(mspec.options, recipe.options, where=f"{path}: options")
    model = mspec.build(recipe.info, opts)
    tensors = read_tensors(path)
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    state = {k: v for k, v in tensors.items() if not k.startswith("extra/")}
    model = apply_load_transforms(model, spec, extra)
    hook = getattr(model, "rtk_prepare_load", None)
    if callable(hook):  # e.g. a pruned model re-applies masks or shapes before loading
        hook(spec, extra)
    load_state_strict(model, state, where=str(_paths(path)[0]))
    spec["extra_tensors"] = extra
    return model.to(device), recipe, spec
