"""Checkpoints: safetensors weights plus a JSON architecture spec. Never pickle.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The JSON holds
the recipe (architecture name, its options, the data info) so the model can be rebuilt
through the registry, plus free-form ``extra`` metadata (epoch, metrics, masks, ...).

A checkpoint is untrusted input (``docs/security.md``): its JSON is checked against a schema
(:func:`validate_spec`: types, bounded sizes, no option that only the user may set), the
``sha256`` of ``NAME.safetensors`` stored in the JSON is verified before any tensor is read,
and options marked ``rebuild`` in a model's options (for example the zoo model's
``pretrained`` or ``model_dir``) take their rebuild value, never the JSON's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.core import DataInfo
from ..errors import CheckpointError
from ..trust import atomic_write, untrusted_settings

FORMAT = "rtk-checkpoint/1"

#: Bounds of the checkpoint JSON (schema): file size, nesting, tensors, dimensions.
MAX_SPEC_BYTES = 32 * 2**20
MAX_SPEC_DEPTH = 32
MAX_TENSORS = 100_000
MAX_DIMS = 8
MAX_DIM = 2**31
MAX_TRANSFORMS = 1_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    def from_dict(cls, d: dict[str, Any], *, where: str = "checkpoint spec") -> ModelRecipe:
        data = d.get("data")
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{where}: no 'data' object (the dataset the model was built for: name, num_classes, channels, "
                "height, width, mean, std); rtk cannot rebuild the model without it. Re-save the model with rtk"
            )
        try:
            names = {f.name for f in fields(DataInfo)}
            info = DataInfo.from_dict({k: v for k, v in data.items() if k in names})
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{where}: 'data' is not a valid data description ({exc}); expected the keys name, num_classes, "
                "channels, height, width, mean, std and optionally class_names"
            ) from None
        return cls(d["arch"], dict(d.get("options", {})), info, dict(d.get("extra", {})))


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
    The JSON records the sha256 of the safetensors file; options only the user may set
    (``allow_unsafe_pickle``) are stored as false, so the checkpoint never asks for them.
    """
    from safetensors.torch import save

    st_path, js_path = _paths(path)
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
    blob = save(state, metadata={"format": FORMAT})
    recipe_dict = recipe.to_dict()
    recipe_dict["options"] = _without_unsafe(recipe_dict["options"])
    spec = {
        "format": FORMAT,
        **recipe_dict,
        "metadata": metadata or {},
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    if dataset is not None:
        spec["dataset"] = dataset
    atomic_write(st_path, blob)
    atomic_write(js_path, json.dumps(spec, indent=2, sort_keys=True, default=str))
    return st_path.with_suffix("")


def _without_unsafe(options: dict[str, Any]) -> dict[str, Any]:
    from ..trust import UNSAFE_KEYS

    return {k: (False if k in UNSAFE_KEYS else v) for k, v in options.items()}


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


def _depth(doc: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counting stops above ``limit``."""
    stack = [(doc, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_spec(spec: Any, where: str = "checkpoint spec") -> list[str]:
    """Problems of a checkpoint JSON against its schema (empty when it is valid).

    ``format``, ``arch`` (a name), ``options``/``extra``/``metadata`` (objects), ``data``
    (an optional object: the data description), ``shapes`` (tensor name -> at most 8
    dimensions, each below 2**31), ``sha256`` (64 hex digits), ``extra.transforms`` (a list of
    objects with a string ``kind``); nesting at most 32 levels; no option only the user may
    set (``allow_unsafe_pickle``).
    """
    if not isinstance(spec, dict):
        return [f"{where}: expected a JSON object, got a {type(spec).__name__}"]
    problems = []
    if spec.get("format") != FORMAT:
        problems.append(f"{where}: unknown checkpoint format {spec.get('format')!r}, expected {FORMAT!r}")
    if _depth(spec, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
        problems.append(f"{where}: nested more than {MAX_SPEC_DEPTH} levels deep")
        return problems
    arch = spec.get("arch")
    if not isinstance(arch, str) or not arch or len(arch) > 128:
        problems.append(f"{where}.arch: expected the name of a registered model, got {arch!r}")
    for key in ("options", "extra", "metadata", "dataset"):
        if key in spec and not isinstance(spec[key], dict):
            problems.append(f"{where}.{key}: expected an object, got {type(spec[key]).__name__}")
    data = spec.get("data")
    if data is not None:
        if not isinstance(data, dict):
            problems.append(f"{where}.data: expected an object, got {type(data).__name__}")
        else:
            problems += _data_problems(data, f"{where}.data")
    shapes = spec.get("shapes", {})
    if not isinstance(shapes, dict) or len(shapes) > MAX_TENSORS:
        problems.append(f"{where}.shapes: expected an object of at most {MAX_TENSORS} tensor shapes")
    else:
        for name, shape in shapes.items():
            if not (
                isinstance(shape, list)
                and len(shape) <= MAX_DIMS
                and all(_is_int(d) and 0 <= d < MAX_DIM for d in shape)
            ):
                problems.append(
                    f"{where}.shapes.{name}: expected a list of at most {MAX_DIMS} sizes in [0, 2**31), got {shape!r}"
                )
                break
    sha = spec.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        problems.append(
            f"{where}.sha256: missing or not 64 hex digits (the checksum of the .safetensors file every rtk "
            "checkpoint records); re-save the model with this rtk"
        )
    transforms = (spec.get("extra") or {}).get("transforms", []) if isinstance(spec.get("extra"), dict) else []
    if not isinstance(transforms, list) or len(transforms) > MAX_TRANSFORMS:
        problems.append(f"{where}.extra.transforms: expected a list of at most {MAX_TRANSFORMS} objects")
    else:
        for i, t in enumerate(transforms):
            if not isinstance(t, dict) or not isinstance(t.get("kind"), str):
                problems.append(f"{where}.extra.transforms[{i}]: expected an object with a string 'kind'")
    for key in untrusted_settings(spec.get("options", {}) if isinstance(spec.get("options"), dict) else {}):
        problems.append(
            f"{where}.options.{key}: a checkpoint may not turn on unsafe loading; only your own experiment file or "
            "command-line flag can (see docs/security.md)"
        )
    return problems


_DATA_INTS = {"num_classes": 1_000_000, "channels": 4096, "height": 1 << 16, "width": 1 << 16}


def _data_problems(data: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key, top in _DATA_INTS.items():
        if key in data and not (_is_int(data[key]) and 1 <= data[key] <= top):
            problems.append(f"{where}.{key}: expected an integer in [1, {top}], got {data[key]!r}")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is not None and not (
            isinstance(v, list)
            and len(v) <= 4096
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            problems.append(f"{where}.{key}: expected a list of numbers, got {v!r}")
    if "name" in data and not isinstance(data["name"], str):
        problems.append(f"{where}.name: expected a string, got {data['name']!r}")
    return problems


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's JSON, checked against the schema (:func:`validate_spec`)."""
    st_path, js_path = _paths(path)
    if not js_path.is_file():
        raise CheckpointError(f"checkpoint spec {js_path} not found (a checkpoint is NAME.safetensors + NAME.json)")
    try:
        size = js_path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise CheckpointError(f"{js_path}: {size} bytes; a checkpoint spec has at most {MAX_SPEC_BYTES}")
        spec = json.loads(js_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint spec {js_path} is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint spec {js_path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint spec {js_path}: {exc.strerror or exc}") from None
    problems = validate_spec(spec, str(js_path))
    if problems:
        raise CheckpointError("invalid checkpoint: " + "; ".join(problems[:10]))
    return spec


def read_tensors(path: str | os.PathLike, spec: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, after checking the file's sha256 against its JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    st_path, _ = _paths(path)
    spec = spec if spec is not None else read_spec(path)
    if not st_path.is_file():
        raise CheckpointError(f"checkpoint weights {st_path} not found")
    try:
        blob = st_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {st_path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != spec.get("sha256"):
        raise CheckpointError(
            f"{st_path}: the weights do not match the checksum in its JSON (sha256 {digest}, recorded "
            f"{spec.get('sha256')}); the file was changed or damaged after it was saved. Use an intact copy"
        )
    try:
        tensors = load(blob)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{st_path} is not a valid safetensors file: {exc}") from None
    shapes = spec.get("shapes")
    if shapes is not None and {k: list(v.shape) for k, v in tensors.items()} != shapes:
        raise CheckpointError(f"{st_path}: its tensors do not match the shapes its JSON records")
    return tensors


def rebuild_options(options_model: Any, options: Any) -> Any:
    """``options`` with every field marked ``json_schema_extra={"rebuild": value}`` set to that
    value: what a model takes when it is rebuilt from a checkpoint (its weights come from the
    checkpoint, so for example a zoo model does not read its own weight file)."""
    fields = getattr(options_model, "model_fields", {})
    update = {}
    for name, f in fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "rebuild" in extra:
            update[name] = extra["rebuild"]
    return options.model_copy(update=update) if update else options


def check_data_matches(info: DataInfo, data: DataInfo, where: str) -> None:
    """Raise :class:`CheckpointError` when a model built for ``info`` cannot take ``data``."""
    got = (data.channels, data.height, data.width, data.num_classes)
    want = (info.channels, info.height, info.width, info.num_classes)
    if got != want:
        raise CheckpointError(
            f"{where} was built for {info.name!r} ({want[0]}x{want[1]}x{want[2]} images, {want[3]} classes); the "
            f"experiment's dataset {data.name!r} has {got[0]}x{got[1]}x{got[2]} images and {got[3]} classes. Use "
            "a checkpoint trained on this dataset, or the dataset the checkpoint was trained on"
        )


def checkpoint_declaration(path: str | os.PathLike, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The experiment declaration of the model in checkpoint ``path`` (``[models.NAME]``): its
    options, then its ``arch`` and the checkpoint's absolute stem (options cannot override those)."""
    spec = spec if spec is not None else read_spec(path)
    stem = _paths(path)[0].with_suffix("")
    options = {k: v for k, v in (spec.get("options") or {}).items() if k not in ("arch", "checkpoint")}
    return {**options, "arch": spec["arch"], "checkpoint": str(stem.resolve())}


#: a shared key whose shapes differ: (key, its shape in the checkpoint, its shape in the model)
ShapeMismatch = tuple[str, list[int], list[int]]


def state_mismatch(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[ShapeMismatch]]:
    """How the state dict ``state`` differs from a model's own ``own``: the model's keys it lacks
    and its keys the model lacks (both sorted), and each shared key whose shapes differ (in the
    model's order)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        (k, list(state[k].shape), list(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape
    ]
    return missing, unexpected, wrong


def mismatch_clauses(
    missing: list[str],
    unexpected: list[str],
    wrong: list[ShapeMismatch],
    *,
    target: str,
    listed: Callable[[list[str]], str],
    most: int,
) -> list[str]:
    """The clauses of an error about a state dict that does not fit ``target`` (``"model"``,
    ``"architecture"``): the keys ``listed`` that the checkpoint lacks and that ``target`` lacks,
    then up to ``most`` keys whose shapes differ."""
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {listed(missing)}")
    if unexpected:
        parts.append(f"not in the {target}: {listed(unexpected)}")
    for k, got, want in wrong[:most]:
        parts.append(f"{k}: checkpoint has shape {got}, {target} expects {want}")
    return parts


def _first_ten(keys: list[str]) -> str:
    return f"{', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """Load ``state`` into ``model``; on any mismatch say exactly which keys and shapes differ."""
    missing, unexpected, wrong = state_mismatch(model.state_dict(), state)
    if missing or unexpected or wrong:
        parts = mismatch_clauses(missing, unexpected, wrong, target="model", listed=_first_ten, most=10)
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
    where = str(_paths(path)[1])
    recipe = ModelRecipe.from_dict(spec, where=where)
    mspec = registry.get("model", recipe.arch)
    opts = validate_options(mspec.options, recipe.options, where=f"{where}: options")
    opts = rebuild_options(mspec.options, opts)
    tensors = read_tensors(path, spec)
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    state = {k: v for k, v in tensors.items() if not k.startswith("extra/")}
    try:
        model = mspec.build(recipe.info, opts)
        model = apply_load_transforms(model, spec, extra)
        hook = getattr(model, "rtk_prepare_load", None)
        if callable(hook):  # e.g. a pruned model re-applies masks or shapes before loading
            hook(spec, extra)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{where}: the model {recipe.arch!r} cannot be rebuilt from this checkpoint's recipe "
            f"({type(exc).__name__}: {exc})"
        ) from None
    load_state_strict(model, state, where=str(_paths(path)[0]))
    spec["extra_tensors"] = extra
    return model.to(device), recipe, spec
