"""What attacks see: a model that takes inputs in [0, 1] and returns a logits tensor.

Models that return a tuple or a dict, or that expect normalized inputs, are adapted only
through explicit options, never silently:

- ``output``: ``"logits"`` (the default: the model must return a tensor), ``"first"``
  (item 0 of a tuple or list), ``"index:N"`` (item N), ``"key:NAME"`` (entry NAME of a
  dict, or attribute NAME of an output object).
- ``normalize``: ``{mean = [...], std = [...]}`` when the model expects ``(x - mean) / std``;
  the view applies it, so attacks keep working in [0, 1] pixel space.

The view also picks the memory format of image batches (``memory_format``): with
``"auto"`` (the default) a model with 2-d convolutions sees its inputs in ``channels_last``,
which the convolution kernels run faster on (measured 1.25x on a CIFAR ResNet-20 on CPU,
forward and input gradient); the model's own weights are left as they are. A model that
cannot take such inputs (a ``.view`` over a channels-last tensor raises) is fed contiguous
inputs from the first call on.

:class:`ModelView` also counts the work it does (examples x passes), which the sanity
checks use to stay within their share of an evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, RtkError
from .request import OUTPUT_PATTERN, Normalization

_OUTPUT_RE = re.compile(OUTPUT_PATTERN)

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Allowed values of ``memory_format``.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

log = logging.getLogger(__name__)


class ModelOutputError(RtkError):
    """The model's output is not what the evaluation was told to expect."""


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        kinds = ", ".join(type(o).__name__ for o in out[:4])
        return f"a {type(out).__name__} of {len(out)} items ({kinds}{', ...' if len(out) > 4 else ''})"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(map(str, out))}"
    return f"a {type(out).__name__}"


def _hint(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return 'set output = "first" (item 0) or "index:N"'
    keys = list(map(str, out)) if isinstance(out, dict) else [k for k in ("logits",) if hasattr(out, k)]
    pick = next((k for k in keys if "logit" in k.lower()), keys[0] if keys else "NAME")
    return f'set output = "key:{pick}"'


def select_output(out: Any, output: str) -> torch.Tensor:
    """Pick the logits tensor out of a model's output according to ``output``."""
    if output == "logits":
        if isinstance(out, torch.Tensor):
            return out
        raise ModelOutputError(
            f"the model returned {_describe(out)}, not a logits tensor; attacks and the evaluation need logits: "
            f"{_hint(out)} (an option of the evaluate stage, of `rtk evaluate --output`, and of every attack)"
        )
    if output == "first" or output.startswith("index:"):
        i = 0 if output == "first" else int(output.split(":", 1)[1])
        if not isinstance(out, (tuple, list)):
            raise ModelOutputError(
                f'output = "{output}" expects the model to return a tuple or list, got {_describe(out)}'
            )
        if i >= len(out):
            raise ModelOutputError(f'output = "{output}": the model returned only {len(out)} items')
        picked = out[i]
    elif output.startswith("key:"):
        key = output.split(":", 1)[1]
        if isinstance(out, dict):
            if key not in out:
                raise ModelOutputError(
                    f'output = "{output}": the model returned a dict without {key!r}; keys: {sorted(map(str, out))}'
                )
            picked = out[key]
        elif hasattr(out, key):
            picked = getattr(out, key)
        else:
            raise ModelOutputError(f'output = "{output}": the model returned {_describe(out)} without {key!r}')
    else:
        raise ConfigError(f"output: {output!r} is not allowed; use logits, first, index:N or key:NAME")
    if not isinstance(picked, torch.Tensor):
        raise ModelOutputError(f'output = "{output}" selected {_describe(picked)}, not a logits tensor')
    return picked


class _Meter:
    """The view's mutable state, kept off ``nn.Module.__setattr__`` (slow on every forward)."""

    __slots__ = ("channels_last", "on", "probe", "work")

    def __init__(self) -> None:
        self.on = False
        self.work = 0
        self.channels_last = False  # feed 4-d inputs in channels_last
        self.probe = False  # "auto": fall back to contiguous if the first channels-last forward raises


class ModelView(nn.Module):
    """A model as attacks see it: inputs in [0, 1], a logits tensor out.

    ``work`` counts examples times passes (a forward with an input gradient counts 3: the
    forward and the backward that follows) while ``counting`` is on. ``memory_format``
    (``"auto"``, ``"channels_last"``, ``"contiguous"``) is the layout 4-d inputs reach the
    model in; ``"auto"`` means channels_last for models with 2-d convolutions.
    """

    def __init__(
        self,
        model: nn.Module,
        output: str = "logits",
        normalize: Normalization | dict | None = None,
        memory_format: str = "auto",
    ) -> None:
        super().__init__()
        if not _OUTPUT_RE.match(output):
            raise ConfigError(f"output: {output!r} is not allowed; use logits, first, index:N or key:NAME")
        if memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"memory_format: {memory_format!r} is not allowed; use {', '.join(MEMORY_FORMATS)}")
        self.model = model
        # mirror the model's mode: torchattacks restores the mode it finds on the view, and a
        # fresh view (training=True) would leave an eval-mode model in train mode after an attack
        self.training = model.training
        self.output = output
        self.memory_format = memory_format
        self._meter = _Meter()  # a plain object: nn.Module.__setattr__ is slow on every forward
        if memory_format == "auto":
            self._meter.channels_last = self._meter.probe = any(isinstance(m, nn.Conv2d) for m in model.modules())
        else:
            self._meter.channels_last = memory_format == "channels_last"
        if isinstance(normalize, dict):
            normalize = Normalization.model_validate(normalize)
        self.normalization = normalize
        device = _device_of(model)
        if normalize is not None:
            c = len(normalize.mean)
            self.register_buffer(
                "mean", torch.tensor(normalize.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
            )
            self.register_buffer(
                "std", torch.tensor(normalize.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
            )
        else:
            self.mean = self.std = None
        if next(model.parameters(), None) is None:
            # torchattacks finds the device through the parameters; a model without any gets an empty anchor
            self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    @property
    def counting(self) -> bool:
        return self._meter.on

    @counting.setter
    def counting(self, value: bool) -> None:
        self._meter.on = bool(value)

    @property
    def work(self) -> int:
        return self._meter.work

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        meter = self._meter
        if meter.on:
            meter.work += int(x.shape[0]) * (3 if x.requires_grad and torch.is_grad_enabled() else 1)
        if meter.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mean is not None:
            if x.ndim != 4 or self.mean.shape[1] not in (1, x.shape[1]):
                raise ConfigError(
                    f"normalize: mean and std give {self.mean.shape[1]} channel(s) but the inputs have shape "
                    f"{list(x.shape)} ({x.shape[1] if x.ndim > 1 else '?'} channel(s)); give one value per channel "
                    "of the data, or a single value"
                )
            x = (x - self.mean) / self.std
        if meter.probe:
            out = self._probe(x)
        else:
            out = self.model(x)
        if self.output == "logits" and type(out) is torch.Tensor:
            return out
        return select_output(out, self.output)

    def _probe(self, x: torch.Tensor) -> Any:
        """The first forward in ``"auto"`` mode: channels_last, or contiguous from now on if the model raises."""
        meter = self._meter
        try:
            out = self.model(x)
        except RuntimeError as exc:
            meter.channels_last = meter.probe = False
            log.info("the model does not take channels_last inputs (%s); feeding contiguous inputs", exc)
            return self.model(x.contiguous())
        meter.probe = False
        return out

    @property
    def channels_last(self) -> bool:
        """Whether 4-d inputs reach the model in channels_last."""
        return self._meter.channels_last

    @property
    def device(self) -> torch.device:
        return _device_of(self)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_view(
    model: nn.Module,
    output: str = "logits",
    normalize: Normalization | dict | None = None,
    memory_format: str = "auto",
) -> ModelView:
    """Wrap ``model`` for attacks; a :class:`ModelView` with the same settings is returned as is
    (a view asked for with the defaults is any view: it already returns logits of [0, 1] inputs)."""
    if isinstance(model, ModelView) and output == "logits" and normalize is None and memory_format == "auto":
        return model
    if (
        isinstance(model, ModelView)
        and model.output == output
        and model.normalization == normalize
        and model.memory_format == memory_format
    ):
        return model
    return ModelView(model, output, normalize, memory_format)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block under its own seed, restoring the global RNG states afterwards.

    torchattacks' APGD, FAB and Square reseed the global generators themselves; inside
    this block that cannot leak into the caller's random stream. (Cheaper than
    ``torch.random.fork_rng`` + ``torch.manual_seed``, which seed every backend.)
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cpu = torch.random.default_generator
    cpu_state = cpu.get_state()
    cuda_index = None
    if dev.type == "cuda":
        cuda_index = dev.index if dev.index is not None else torch.cuda.current_device()
        cuda_state = torch.cuda.get_rng_state(cuda_index)
    cpu.manual_seed(seed)
    if cuda_index is not None:
        with torch.cuda.device(cuda_index):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        cpu.set_state(cpu_state)
        if cuda_index is not None:
            torch.cuda.set_rng_state(cuda_state, cuda_index)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def with_restarts(
    run_once: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    restarts: int,
    seed: int,
    is_success: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``run_once(x, y, seed)`` up to ``restarts`` times on the examples not yet fooled.

    Restart ``r`` uses seed ``seed + r``; an example keeps the first adversarial example
    found for it (or the last attempt when none succeeded).
    """
    if restarts <= 1:
        return run_once(x, y, seed)
    success = is_success or (lambda pred, yy: pred != yy)
    x_adv = x.clone()
    todo = torch.arange(len(x), device=x.device)
    for r in range(restarts):
        if todo.numel() == 0:
            break
        xa = run_once(x[todo], y[todo], seed + r)
        x_adv[todo] = xa
        fooled = success(_predict(model, xa), y[todo])
        todo = todo[~fooled]
    return x_adv


def ensemble(attacks: Sequence[AttackFn], model: nn.Module) -> AttackFn:
    """Worst case over ``attacks`` in order: each runs only on the examples still classified
    correctly after the previous ones (as AutoAttack does)."""

    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for atk in attacks:
            if todo.numel() == 0:
                break
            xa = atk(x[todo], y[todo])
            fooled = _predict(model, xa) != y[todo]
            x_adv[todo[fooled]] = xa[fooled]
            todo = todo[~fooled]
        return x_adv

    return attack


__all__ = [
    "AttackFn",
    "MEMORY_FORMATS",
    "ModelOutputError",
    "ModelView",
    "Normalization",
    "OUTPUT_PATTERN",
    "ensemble",
    "model_view",
    "seeded",
    "select_output",
    "with_restarts",
]
