"""Devices, seeds and progress reporting.

Library code never prints. Long loops call :func:`progress` which returns a plain
iterator unless the CLI installed a progress factory (a tqdm bar on a TTY).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import ConfigError
from .lifecycle import installed

log = logging.getLogger(__name__)
T = TypeVar("T")

ProgressFactory = Callable[..., Iterable[Any]]
_PROGRESS: contextvars.ContextVar[ProgressFactory | None] = contextvars.ContextVar("rtk_progress", default=None)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterable[T]:
    """Wrap ``iterable`` in the installed progress display, if any."""
    factory = _PROGRESS.get()
    if factory is None:
        return iterable
    return factory(iterable, total=total, desc=desc)


def progress_display(factory: ProgressFactory | None) -> contextlib.AbstractContextManager[None]:
    """Install a progress factory (``factory(iterable, total=, desc=)``) for a block."""
    return installed(_PROGRESS, factory)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda[:i]`` must exist."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip()
    if spec == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} was requested but CUDA is not available here; use 'cpu' or 'auto'")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device: 'mps' was requested but is not available here")
        return torch.device("mps")
    if spec == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device: unknown device {spec!r}; allowed: auto, cpu, cuda, cuda:N, mps")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture every RNG state (for exact resume)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
