"""Model sources beyond the registry: the user's own code, torchvision and timm builders,
and plain PyTorch state dicts.

In an experiment file::

    [models.mine]
    arch = "python:net.py:Net"          # a callable in a file, relative to the experiment file
    hidden = 64                         # every other key is a keyword argument of the callable

    [models.lib]
    arch = "module:mypkg.nets:make"     # a callable of an importable module

    [models.tv]
    arch = "torchvision:resnet18"       # any torchvision classification builder (no weights)

    [models.tm]
    arch = "timm:resnet18"              # any timm model (optional extra rtk[timm])
    init = "weights.safetensors"        # start from a plain state dict (.safetensors or .pt)
    strict = false                      # allow a partial load (a key-by-key report is written)

A callable may take ``num_classes``, ``in_channels`` (or ``channels``) and ``info`` (the
dataset's :class:`~rtk.data.DataInfo`); rtk fills those it accepts and that are not given.
It must return an ``nn.Module`` mapping [0, 1] images to logits.

User code runs only where the user named it: a source is *trusted* when an experiment
(a file, a dict passed to ``rtk.run``) declares it and is planned; a checkpoint's JSON never
decides what code runs (:func:`require_trusted`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..data.core import DataInfo
from ..errors import CheckpointError, ConfigError, RtkError

log = logging.getLogger(__name__)

#: Parameters rtk fills from the dataset when a callable accepts them.
INFO_PARAMS = ("num_classes", "in_channels", "channels", "info")


class SourceError(ConfigError):
    """A model or dataset source cannot be resolved: file, module or callable missing, bad return."""


# ---------------------------------------------------------------------------- user code
_TRUSTED: set[str] = set()


def trust(kind: str, source: str) -> None:
    """Mark ``kind:source`` as named by the user (called when an experiment declaring it is planned)."""
    _TRUSTED.add(f"{kind}:{source}")


def require_trusted(kind: str, source: str) -> None:
    """Refuse to run code that no planned experiment named (for example one named only in a checkpoint)."""
    if f"{kind}:{source}" not in _TRUSTED:
        raise CheckpointError(
            f"{kind}:{source} is user code that no experiment of this session declares; rtk does not run code "
            f"named inside a checkpoint or run directory. Declare it in an experiment file "
            f'(arch = "{kind}:{source}" with checkpoint = "...", or [dataset] name = "{kind}:{source}") and '
            f"give that file (rtk evaluate EXPERIMENT.toml --model NAME)"
        )


#: Model kinds whose build runs the user's code.
CODE_KINDS = ("python", "module")


def refuse_code_from_checkpoint(spec: dict[str, Any], where: str) -> None:
    """For commands that rebuild a model from a checkpoint's JSON alone: refuse an architecture
    that is user code, since the JSON (data) must not decide what code runs."""
    arch = spec.get("arch")
    if arch == "in-memory":
        raise CheckpointError(
            f"{where}: written by rtk.train / rtk.prune for a module handed over from Python, which rtk cannot "
            f"rebuild by itself; load the weights into your module (the .safetensors holds its state dict; "
            f"keys under extra/ are not weights), or declare the architecture as a source "
            f'(arch = "python:net.py:Net") with init = "<the .safetensors>"'
        )
    if arch in CODE_KINDS:
        source = (spec.get("options") or {}).get("source", "?")
        raise CheckpointError(
            f"{where}: the model is built by user code ({arch}:{source}); rtk does not run code named inside a "
            f"checkpoint or run directory. Declare it in an experiment file ([models.NAME] arch = "
            f'"{arch}:{source}", checkpoint = "...") and give that file instead (rtk evaluate EXPERIMENT.toml)'
        )


def split_source(source: str, kind: str) -> tuple[str, str]:
    """``"net.py:Net"`` -> ``("net.py", "Net")``; the callable may be dotted (``Factory.make``)."""
    where, sep, attr = source.rpartition(":")
    if not sep or not where or not attr:
        example = "net.py:Net" if kind == "python" else "mypkg.nets:make"
        raise SourceError(
            f"{kind} source {source!r}: expected '<{'file.py' if kind == 'python' else 'module'}>:<callable>', e.g. '{example}'"
        )
    return where, attr


def _load_file(path: Path) -> Any:
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    modname = f"rtk_user_code.{resolved.stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, resolved)
    if spec is None or spec.loader is None:
        raise SourceError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    folder = str(resolved.parent)
    sys.path.insert(0, folder)  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[modname]
        raise SourceError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def load_callable(kind: str, source: str) -> Callable[..., Any]:
    """The callable of a ``python`` (``file.py:name``, path already absolute) or ``module``
    (``package.module:name``) source."""
    where, attr = split_source(source, kind)
    if kind == "python":
        path = Path(where)
        if not path.is_file():
            raise SourceError(f"python source {source!r}: file {path} not found")
        module = _load_file(path)
    elif kind == "module":
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise SourceError(f"module source {source!r}: cannot import {where!r}: {exc}") from exc
    else:  # pragma: no cover - callers pass one of the two
        raise SourceError(f"unknown source kind {kind!r}; allowed: python, module")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            from ..errors import suggest

            raise SourceError(
                f"{kind} source {source!r}: {where} has no {attr!r}{suggest(part, names)}; callables there: "
                f"{', '.join(names[:20]) or '(none)'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"{kind} source {source!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def check_call(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> list[str]:
    """Problems binding ``kwargs`` (plus the info parameters rtk fills) to ``fn``'s signature."""
    sig = _signature(fn)
    if sig is None:
        return []
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    problems = []
    if not takes_any:
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            problems.append(
                f"{what} takes no option {', '.join(map(repr, unknown))}; its parameters: {', '.join(allowed) or '(none)'}"
            )
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if name not in kwargs and name not in INFO_PARAMS:
            problems.append(f"{what} needs {name!r}; give it as a key of the model table")
    return problems


def needs_info(fn: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    """Whether rtk would fill a dataset-derived argument of ``fn``."""
    sig = _signature(fn)
    return sig is not None and any(n in sig.parameters and n not in kwargs for n in INFO_PARAMS)


def call_user(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """``fn(**kwargs)``, user code named ``what``: an rtk error passes through, any other exception
    becomes a :class:`SourceError` naming ``what``."""
    try:
        return fn(**kwargs)
    except RtkError:
        raise
    except Exception as exc:
        raise SourceError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def call_builder(fn: Callable[..., Any], kwargs: dict[str, Any], info: DataInfo | None, what: str) -> nn.Module:
    """Call ``fn`` with ``kwargs`` and the info parameters it accepts; check it returns a module."""
    call = dict(kwargs)
    sig = _signature(fn)
    if sig is not None and info is not None:
        fill = {"num_classes": info.num_classes, "in_channels": info.channels, "channels": info.channels, "info": info}
        for name, value in fill.items():
            if name in sig.parameters and name not in call:
                call[name] = value
    module = call_user(fn, call, what)
    if not isinstance(module, nn.Module):
        raise SourceError(f"{what} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def rebase_source(source: str, base: Path) -> str:
    """``net.py:Net`` with the file relative to ``base`` (an experiment's folder) -> an absolute
    path; a malformed source is returned as is (its check reports it)."""
    try:
        where, attr = split_source(source, "python")
    except SourceError:
        return source
    path = Path(where).expanduser()
    return f"{path if path.is_absolute() else (base / path).resolve()}:{attr}"


def check_code_source(kind: str, source: str, kwargs: dict[str, Any], *, builds_module: bool = True) -> list[str]:
    """Plan-time problems of a ``python:`` / ``module:`` source: file, callable, options, and (for
    a model, when nothing needs filling from the data) that it returns an ``nn.Module``. A source
    without problems is trusted (an experiment names it)."""
    what = f"{kind}:{source}"
    try:
        fn = load_callable(kind, source)
    except SourceError as exc:
        return exc.problems
    problems = check_call(fn, kwargs, what)
    if problems:
        return problems
    trust(kind, source)
    if builds_module and not needs_info(fn, kwargs):  # nothing to fill from the data: call it now
        try:
            call_builder(fn, kwargs, None, what)
        except SourceError as exc:
            return exc.problems
    return []


def check_code_model(kind: str, source: str, kwargs: dict[str, Any]) -> list[str]:
    """Plan-time problems of a ``python:`` / ``module:`` model (see :func:`check_code_source`)."""
    return check_code_source(kind, source, kwargs)


def build_code_model(kind: str, source: str, kwargs: dict[str, Any], info: DataInfo) -> nn.Module:
    """The module a trusted ``python:`` / ``module:`` source builds for ``info``."""
    require_trusted(kind, source)
    return call_builder(load_callable(kind, source), kwargs, info, f"{kind}:{source}")


# ---------------------------------------------------------------------------- libraries
def _normalized(info: DataInfo, net: nn.Module) -> nn.Module:
    """A library model behind rtk's Normalize, so it takes [0, 1] inputs like rtk's own models."""
    from .layers import Normalize

    return nn.Sequential(OrderedDict(norm=Normalize(info.mean, info.std), net=net))


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    """Give the first convolution ``channels`` input channels (a fresh layer, same geometry)."""
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == channels:
                return
            pair = tuple[int, int]
            new = nn.Conv2d(
                channels,
                mod.out_channels,
                cast(pair, mod.kernel_size),
                stride=cast(pair, mod.stride),
                padding=cast(pair, mod.padding),
                dilation=cast(pair, mod.dilation),
                bias=mod.bias is not None,
            )
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], new)
            log.info("torchvision model: first convolution %s now takes %d input channels", name, channels)
            return


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError:
        raise SourceError(
            'torchvision is not installed; "torchvision:<name>" sources need it: pip install "rtk[vision]"'
        ) from None
    return torchvision


def torchvision_names() -> list[str]:
    torchvision = _torchvision()

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    torchvision = _torchvision()

    names = torchvision_names()
    if name not in names:
        from ..errors import suggest

        raise SourceError(
            f"torchvision has no classification model {name!r}{suggest(name, names)}; "
            f"models: {', '.join(names[:12])}, ... ({len(names)} in all)"
        )
    return torchvision.models.get_model_builder(name)


def check_torchvision_model(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Plan-time problems of a ``torchvision:`` model: the builder and its options."""
    try:
        fn = torchvision_builder(name)
    except SourceError as exc:
        return exc.problems
    return check_call(fn, {"weights": None, "num_classes": 1, **kwargs}, f"torchvision:{name}")


def build_torchvision(name: str, kwargs: dict[str, Any], info: DataInfo) -> nn.Module:
    """A torchvision classifier without pretrained weights, for ``info``'s classes and channels."""
    fn = torchvision_builder(name)
    call = {"weights": None, "num_classes": info.num_classes, **kwargs}
    net = call_builder(fn, call, None, f"torchvision.models.{name}")
    if info.channels != 3:
        _adapt_first_conv(net, info.channels)
    return _normalized(info, net)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise SourceError(
            'timm is not installed; models "timm:<name>" need the optional extra: pip install "rtk[timm]"'
        ) from None
    return timm


def check_timm(name: str) -> list[str]:
    """Plan-time problems of a ``timm:`` model (timm missing, unknown name)."""
    try:
        timm = _timm()
    except SourceError as exc:
        return exc.problems
    names = timm.list_models()
    if name not in names:
        from ..errors import suggest

        return [f"timm has no model {name!r}{suggest(name, names)}"]
    return []


def build_timm(name: str, kwargs: dict[str, Any], info: DataInfo) -> nn.Module:
    timm = _timm()
    call = {"pretrained": False, "num_classes": info.num_classes, "in_chans": info.channels, **kwargs}
    try:
        net = timm.create_model(name, **call)
    except Exception as exc:
        raise SourceError(f"timm.create_model({name!r}) raised {type(exc).__name__}: {exc}") from exc
    return _normalized(info, net)


# ---------------------------------------------------------------------------- init
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain PyTorch state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``,
    so no code runs). A ``.pt`` holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"init: file {p} not found")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"init: {p} is not a valid safetensors file: {exc}") from None
    if p.suffix not in (".pt", ".pth", ".bin"):
        raise CheckpointError(f"init: {p}: unknown suffix {p.suffix!r}; allowed: .safetensors, .pt, .pth, .bin")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"init: {p} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); save a "
            f"plain state dict (torch.save(model.state_dict(), ...)) or a .safetensors file"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"init: {p} does not hold a state dict (a mapping of names to tensors)")
    return obj


def init_report(model: nn.Module, state: dict[str, torch.Tensor]) -> Any:
    """One row per tensor name: ``loaded``, ``missing`` (in the model only), ``unexpected`` (in
    the file only) or ``shape mismatch``, with both shapes."""
    import pandas as pd

    own = model.state_dict()
    rows = []
    for key in sorted(set(own) | set(state)):
        mine, theirs = own.get(key), state.get(key)
        if mine is None:
            status = "unexpected"
        elif theirs is None:
            status = "missing"
        elif tuple(mine.shape) != tuple(theirs.shape):
            status = "shape mismatch"
        else:
            status = "loaded"
        rows.append(
            {
                "key": key,
                "status": status,
                "file_shape": list(theirs.shape) if theirs is not None else None,
                "model_shape": list(mine.shape) if mine is not None else None,
            }
        )
    return pd.DataFrame(rows, columns=["key", "status", "file_shape", "model_shape"])


def apply_init(model: nn.Module, path: str | Path, *, strict: bool = True, where: str = "init") -> Any:
    """Load the state dict at ``path`` into ``model``; return the key-by-key report.

    ``strict``: any missing, unexpected or mismatched tensor is a CheckpointError naming them;
    otherwise the matching tensors are loaded and the rest reported (and logged).
    """
    state = read_state_dict(path)
    report = init_report(model, state)
    bad = report[report["status"] != "loaded"]
    if len(bad) and strict:
        lines = [f"{r.key}: {r.status} (file {r.file_shape}, model {r.model_shape})" for r in bad.head(10).itertuples()]
        more = f"; ... {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CheckpointError(
            f"{where}: {path} does not match the model ({len(bad)} of {len(report)} tensors): "
            + "; ".join(lines)
            + more
            + ". Set strict = false to load only the matching tensors"
        )
    ok = set(report.loc[report["status"] == "loaded", "key"])
    model.load_state_dict({k: v for k, v in state.items() if k in ok}, strict=False)
    n = len(ok)
    log.info("%s: loaded %d of %d tensors from %s", where, n, len(report), path)
    if len(bad):
        log.warning(
            "%s: %d tensors not loaded from %s: %s",
            where,
            len(bad),
            path,
            ", ".join(f"{r.key} ({r.status})" for r in bad.head(10).itertuples()),
        )
    return report


__all__ = [
    "CODE_KINDS",
    "INFO_PARAMS",
    "build_code_model",
    "call_user",
    "check_code_model",
    "check_code_source",
    "check_torchvision_model",
    "rebase_source",
    "SourceError",
    "apply_init",
    "build_timm",
    "build_torchvision",
    "call_builder",
    "check_call",
    "check_timm",
    "init_report",
    "load_callable",
    "needs_info",
    "read_state_dict",
    "refuse_code_from_checkpoint",
    "require_trusted",
    "split_source",
    "torchvision_builder",
    "torchvision_names",
    "trust",
]
