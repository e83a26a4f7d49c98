"""Scale out with ``torch.distributed`` launched by ``torchrun``.

rtk does not schedule anything itself: ``torchrun`` (one machine or a multi-node c10d
rendezvous, for example under SLURM) starts one process per device and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. This module turns that
environment into a process group and gives the rest of rtk small, explicit helpers:

- **who am I**: :func:`is_distributed`, :func:`rank`, :func:`world_size`, :func:`local_rank`,
  :func:`is_main`, :func:`device`; :func:`init_from_env` / :func:`cleanup` or the
  :func:`session` context manager (``gloo`` on CPU, ``nccl`` on CUDA, chosen automatically).
- **evaluation**: :func:`shard_indices` splits ``range(n)`` over ranks (every index exactly
  once, no padding); :func:`gather_table` and :func:`gather_tensors` bring per-example
  results keyed by dataset index back to rank 0, in dataset order, so the merged table
  equals a single-process run.
- **streaming statistics** (minibatch CKA): :func:`all_reduce_sum` sums float64
  accumulators over ranks, keeping their dtype.
- **training**: :func:`wrap_model` (DDP when distributed), :func:`unwrap` (the bare module
  for hooks and checkpoints), :class:`DistributedBatchSampler` (per-epoch shuffling seeded by
  ``(seed, epoch)``, identical on every rank; the *global* batch is ``batch_size x world``),
  :func:`rank_seed` for per-rank augmentation and attack randomness.
- **files**: only rank 0 writes: :func:`main_process_only`, :func:`main_first`,
  :func:`barrier`, :func:`broadcast_object`.
- **launch**: :func:`launched_by_torchrun` and :func:`free_port`; the launcher itself
  (``rtk launch``, ``rtk run --nproc N``) is the CLI's, in :mod:`rtk.cli.launch`.

Every helper is a no-op (or the identity) in a plain single process, so library code can
call them unconditionally.

Objects travel between ranks with ``torch.distributed``'s object collectives, which pickle;
that is only ever data produced by the ranks of one job, never a file from outside.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, RtkError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The variables torchrun sets for every worker (all required by :func:`init_from_env`)."""


# ---------------------------------------------------------------------------- who am I
def is_initialized() -> bool:
    """A default process group exists (possibly of size 1)."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """A process group of more than one process is active: collectives do real work."""
    return is_initialized() and dist.get_world_size() > 1


def launched_by_torchrun() -> bool:
    """This process was started by torchrun (or anything that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def rank() -> int:
    """Global rank: from the process group, else from ``RANK`` (before init), else 0."""
    if is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group, else ``WORLD_SIZE``, else 1."""
    if is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """Rank on this machine (``LOCAL_RANK``), which picks the GPU; 0 in a single process."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0: the one process that writes files, checkpoints and prints."""
    return rank() == 0


def backend() -> str | None:
    """The active backend (``"gloo"``, ``"nccl"``) or None without a process group."""
    return dist.get_backend() if is_initialized() else None


def choose_backend() -> str:
    """``nccl`` when CUDA devices and NCCL are present, else ``gloo`` (CPU)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0 and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def device() -> torch.device:
    """This rank's device: ``cuda:<local_rank>`` when CUDA is present, else CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device(f"cuda:{local_rank() % torch.cuda.device_count()}")
    return torch.device("cpu")


def _comm_device() -> torch.device:
    """Where tensors must live for a collective of the active backend."""
    return device() if backend() == "nccl" else torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: str

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and self.backend is not None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info() -> DistInfo:
    """Rank, world size, local rank, backend and device of this process."""
    return DistInfo(rank(), world_size(), local_rank(), backend(), str(device()))


def init_from_env(backend: str | None = None, *, timeout: float | _dt.timedelta | None = None) -> bool:
    """Create the default process group from torchrun's environment.

    Returns True when a process group is active afterwards, False when this is a plain
    single process (no ``RANK``/``WORLD_SIZE`` in the environment). Idempotent: a second
    call (or a group created by someone else) is left as it is. ``backend`` defaults to
    :func:`choose_backend`; on CUDA the device is set to ``cuda:<LOCAL_RANK>`` first.
    ``timeout`` (seconds) bounds every collective, so a dead peer fails instead of hanging.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RtkError("torch.distributed is not available in this build of PyTorch; cannot run under torchrun")
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"distributed launch: environment variable(s) {', '.join(missing)} are not set; "
            f"start rtk with torchrun (it sets {', '.join(TORCHRUN_ENV)})"
        )
    chosen = backend or choose_backend()
    if chosen not in ("gloo", "nccl", "mpi", "ucc"):
        raise ConfigError(f"distributed backend {chosen!r} is unknown; allowed: gloo (CPU), nccl (CUDA)")
    if chosen == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("distributed backend 'nccl' needs CUDA, which is not available here; use 'gloo'")
        torch.cuda.set_device(device())
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["timeout"] = timeout if isinstance(timeout, _dt.timedelta) else _dt.timedelta(seconds=float(timeout))
    dist.init_process_group(backend=chosen, init_method="env://", **kwargs)
    log.info(
        "process group ready: rank %d of %d (local rank %d), backend %s, device %s",
        dist.get_rank(),
        dist.get_world_size(),
        local_rank(),
        chosen,
        device(),
    )
    return True


def cleanup() -> None:
    """Destroy the default process group if one exists (safe to call more than once)."""
    if is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(backend: str | None = None, *, timeout: float | _dt.timedelta | None = None) -> Iterator[DistInfo]:
    """A distributed session: initialise from torchrun's environment, yield :class:`DistInfo`,
    destroy the process group on exit if this session created it.

    In a plain process it yields a single-process :class:`DistInfo` and does nothing else,
    so ``with rtk.distributed.session(): ...`` is safe everywhere.
    """
    created = not is_initialized() and init_from_env(backend, timeout=timeout)
    try:
        yield info()
    finally:
        if created:
            cleanup()


# ---------------------------------------------------------------------------- sharding
def shard_indices(
    n: int, rank_: int | None = None, world: int | None = None, *, mode: str = "contiguous", align: int = 1
) -> torch.Tensor:
    """The dataset indices of ``rank_``'s shard of ``range(n)`` (int64, increasing).

    Over all ranks the shards cover every index exactly once, also when ``n % world != 0``
    (shard sizes then differ; nothing is padded or repeated; a shard may be empty when
    ``n < world``). Deterministic: it depends only on its arguments.

    - ``mode="contiguous"``: rank r gets one block; blocks are consecutive in rank order.
      ``align=b`` makes every boundary a multiple of ``b``: with ``b`` the batch size, each
      rank's batches are exactly the single-process batches, so attacks whose randomness is
      seeded per batch (rtk's ``pgd``) give bit-identical per-example results.
    - ``mode="strided"``: rank r gets ``r, r + world, r + 2 world, ...`` (balances cost
      when difficulty varies along the dataset).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if n < 0:
        raise ValueError(f"shard_indices: n must be >= 0, got {n}")
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"shard_indices: need 0 <= rank < world, got rank {r}, world {w}")
    if align < 1:
        raise ValueError(f"shard_indices: align must be >= 1, got {align}")
    if mode == "strided":
        if align != 1:
            raise ValueError("shard_indices: align applies to mode='contiguous' only")
        return torch.arange(min(r, n), n, w, dtype=torch.long)
    if mode != "contiguous":
        raise ValueError(f"shard_indices: unknown mode {mode!r}; allowed: contiguous, strided")
    blocks = math.ceil(n / align)
    base, extra = divmod(blocks, w)
    # the last `extra` ranks take one more block: the last rank also holds the partial
    # block, so shard sizes differ by at most `align`
    lead = w - extra
    first = r * base + max(0, r - lead)
    count = base + (1 if r >= lead else 0)
    start, stop = min(first * align, n), min((first + count) * align, n)
    return torch.arange(start, stop, dtype=torch.long)


def shard_sizes(n: int, world: int | None = None, *, mode: str = "contiguous", align: int = 1) -> list[int]:
    """How many indices each rank gets from :func:`shard_indices`."""
    w = world_size() if world is None else world
    return [len(shard_indices(n, r, w, mode=mode, align=align)) for r in range(w)]


# ---------------------------------------------------------------------------- collectives
def barrier() -> None:
    """Wait until every rank arrives (no-op in a single process)."""
    if not is_distributed():
        return
    if backend() == "nccl":
        dist.barrier(device_ids=[device().index])
    else:
        dist.barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Return ``src``'s ``obj`` on every rank (a run directory path, a seed, a small dict)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if backend() == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on ``dst``; None on the other ranks."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all ranks (of ``group``, default the whole world),
    as a new tensor of the same dtype and device (float64 stays float64: gloo and nccl both
    reduce doubles; bool is summed as int64).

    This is how streaming statistics merge: each rank accumulates sums over its own
    minibatches (for minibatch CKA, the sums of HSIC terms and the batch count), and the
    all-reduced sums equal one process's sums over all minibatches up to summation order.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"all_reduce_sum expects a torch.Tensor, got {type(tensor).__name__}")
    if not is_distributed():
        return tensor.clone()
    dev = _comm_device()
    buf = tensor.detach().to(dev, copy=True).contiguous()
    if buf.dtype == torch.bool:
        buf = buf.to(torch.int64)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(tensor.device)


def all_reduce_sums(tensors: Mapping[str, torch.Tensor], group: Any = None) -> dict[str, torch.Tensor]:
    """:func:`all_reduce_sum` of several accumulators in one collective per dtype."""
    if not is_distributed():
        return {k: v.clone() for k, v in tensors.items()}
    out: dict[str, torch.Tensor] = {}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k, v in tensors.items():
        by_dtype.setdefault(v.dtype, []).append(k)
    for dtype, keys in by_dtype.items():
        flat = torch.cat(
            [tensors[k].detach().reshape(-1).to(torch.int64 if dtype == torch.bool else dtype) for k in keys]
        )
        flat = all_reduce_sum(flat, group)
        offset = 0
        for k in keys:
            t = tensors[k]
            out[k] = flat[offset : offset + t.numel()].reshape(t.shape).to(t.device)
            offset += t.numel()
    return out


# ---------------------------------------------------------------------------- gathering results
def _expected_set(n: int | None, expected: Sequence[int] | torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if expected is not None:
        return np.unique(
            np.asarray(
                torch.as_tensor(expected).cpu().numpy() if isinstance(expected, torch.Tensor) else expected,
                dtype=np.int64,
            )
        )
    return np.arange(n, dtype=np.int64) if n is not None else None


def _check_cover(index: np.ndarray, rows: Any, want: np.ndarray | None, what: str) -> None:
    """No row key twice (``rows``: a frame of key columns, or None to use ``index``), and with
    ``want`` given, the dataset indices are exactly ``want``."""
    if rows is None:
        uniq, counts = np.unique(index, return_counts=True)
        dup = uniq[counts > 1].tolist()
    else:
        dup = rows[rows.duplicated(keep=False)].drop_duplicates().head(10).to_dict("records")
        uniq = np.unique(index)
    if len(dup):
        raise RtkError(f"{what}: rows gathered more than once (shards overlap): {dup[:10]}")
    if want is not None and not np.array_equal(uniq, want):
        missing = np.setdiff1d(want, uniq)
        extra = np.setdiff1d(uniq, want)
        raise RtkError(
            f"{what}: expected each of {len(want)} dataset indices exactly once, got {len(uniq)}; "
            f"missing {missing[:10].tolist()}{' ...' if len(missing) > 10 else ''}"
            + (f", unexpected {extra[:10].tolist()}" if len(extra) else "")
        )


def gather_table(
    df: Any,
    *,
    key: str | Sequence[str] = "index",
    n: int | None = None,
    expected: Sequence[int] | torch.Tensor | None = None,
    dst: int | None = 0,
) -> Any:
    """Merge per-rank per-example tables into one, sorted by dataset index.

    ``df`` is this rank's pandas DataFrame with the rows of its shard. ``key`` names the
    dataset-index column (or, when the frame has no such column, its index), or several
    columns whose combination identifies a row, dataset index first (long tables with one
    row per example and attack: ``key=("index", "unit")``). Returns the merged frame, sorted
    by ``key`` with a fresh RangeIndex, on ``dst`` and None elsewhere; ``dst=None`` returns it
    on every rank. Raises :class:`RtkError` when a row key appears twice (overlapping shards)
    or, given ``n`` (indices ``range(n)``) or ``expected`` (any index list), when the dataset
    indices differ from those. In a single process the same checks and sorting apply, so both
    paths give equal tables.
    """
    import pandas as pd

    keys = [key] if isinstance(key, str) else list(key)
    parts = all_gather_object(df) if dst is None else gather_object(df, dst=dst)
    if parts is None:
        return None
    frames = [p for p in parts if p is not None and len(p)]
    if not frames:
        return parts[0].iloc[0:0].copy() if parts and parts[0] is not None else pd.DataFrame()
    in_columns = keys[0] in frames[0].columns
    merged = pd.concat(frames, ignore_index=in_columns)
    if not in_columns:
        merged = merged.rename_axis(keys[0]).reset_index()
    missing = [k for k in keys if k not in merged.columns]
    if missing:
        raise RtkError(f"gather_table: key column(s) {missing} not in the table; columns: {list(merged.columns)}")
    _check_cover(
        merged[keys[0]].to_numpy(), merged[keys] if len(keys) > 1 else None, _expected_set(n, expected), "gather_table"
    )
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def gather_tensors(
    tensors: Mapping[str, torch.Tensor],
    indices: torch.Tensor,
    *,
    n: int | None = None,
    expected: Sequence[int] | torch.Tensor | None = None,
    dst: int | None = 0,
) -> dict[str, torch.Tensor] | None:
    """Merge per-example tensors keyed by dataset index into dataset order.

    ``tensors[k]`` has one row per entry of ``indices`` (this rank's shard, any order);
    trailing shapes and dtypes must agree across ranks. Returns ``{k: full}`` where
    ``full[j]`` is the row of dataset index ``sorted_indices[j]`` (with ``n`` given and the
    shards covering ``range(n)``, ``full[i]`` is example ``i``), plus ``"index"``, on ``dst``
    (every rank when ``dst=None``); None on other ranks. Duplicated indices, and indices
    other than ``range(n)`` / ``expected`` when given, raise :class:`RtkError`. Uses tensor all-gathers (padded to
    the largest shard), not pickling. Results come back on CPU.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    for k, t in tensors.items():
        if t.shape[0] != idx.numel():
            raise ValueError(f"gather_tensors: {k!r} has {t.shape[0]} rows but there are {idx.numel()} indices")
    if not is_distributed():
        all_idx, cols = idx.cpu(), {k: t.detach().cpu() for k, t in tensors.items()}
    else:
        dev = _comm_device()
        sizes = [int(t[0]) for t in _all_gather_padded(torch.tensor([idx.numel()], device=dev), 1)]
        longest = max(max(sizes), 1)
        gathered_idx = _all_gather_padded(idx.to(dev), longest)
        all_idx = torch.cat([g[:s] for g, s in zip(gathered_idx, sizes)]).cpu()
        cols = {}
        for k, t in tensors.items():
            dtype = t.dtype
            src = t.detach().to(dev)
            if dtype == torch.bool:
                src = src.to(torch.uint8)
            parts = _all_gather_padded(src, longest)
            cols[k] = torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu().to(dtype)
    if dst is not None and rank() != dst:
        return None
    _check_cover(all_idx.numpy(), None, _expected_set(n, expected), "gather_tensors")
    order = torch.argsort(all_idx, stable=True)
    out = {k: v[order] for k, v in cols.items()}
    out["index"] = all_idx[order]
    return out


def _all_gather_padded(t: torch.Tensor, length: int) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension differs by rank (padded to ``length``)."""
    t = t.contiguous()
    pad = torch.zeros((length - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded = torch.cat([t, pad]) if pad.shape[0] else t
    out = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return out


# ---------------------------------------------------------------------------- training
def wrap_model(
    model: nn.Module,
    device_: torch.device | str | None = None,
    *,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = False,
    **ddp_kwargs: Any,
) -> nn.Module:
    """Move ``model`` to ``device_`` (default :func:`device`) and wrap it in
    ``DistributedDataParallel`` when distributed; return it unchanged (moved) otherwise.

    DDP averages gradients over ranks, so with every rank's loss a mean over its own batch
    (and :attr:`RankBatch.weight` applied when batches are uneven), a step equals a
    single-process step on the global batch. Parameters are broadcast from rank 0 when
    wrapping, so every rank starts identical. ``find_unused_parameters`` is needed when some
    parameters get no gradient in a step (frozen weights with learned pruning scores, ...).
    ``sync_batchnorm`` converts BatchNorm layers to SyncBatchNorm (CUDA only) so batch
    statistics are taken over the global batch. Other keyword arguments go to DDP as they
    are (``gradient_as_bucket_view``, ``static_graph``, ...). Attacks run inside training should call
    :func:`unwrap` and attack the bare module, which shares the parameters.
    """
    dev = torch.device(device_) if device_ is not None else device()
    model = model.to(dev)
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        return model
    if sync_batchnorm:
        if dev.type != "cuda":
            raise ConfigError(
                "sync_batchnorm needs CUDA devices (SyncBatchNorm does not run on CPU); turn it off for gloo/CPU runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / DataParallel / FSDP (and ``torch.compile``) wrappers, so
    feature hooks, layer names, checkpoints and attacks see the same model as in a single
    process (an attack on the bare module shares its parameters and takes no part in DDP's
    gradient synchronisation). rtk's one unwrap."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)) or (
            type(model).__name__ == "FullyShardedDataParallel" and isinstance(getattr(model, "module", None), nn.Module)
        ):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """A per-rank seed for augmentation and attack randomness.

    Rank 0 keeps ``seed`` itself (a single process behaves exactly as without distribution);
    other ranks get a distinct seed mixed from ``(seed, rank)``. Shuffling must NOT use this:
    the sampler's order comes from ``(seed, epoch)`` and is the same on every rank.
    """
    r = rank() if rank_ is None else rank_
    if r == 0:
        return int(seed)
    mixed = np.random.SeedSequence([int(seed) % 2**63, r]).generate_state(2, np.uint32)
    return int((int(mixed[0]) << 31) ^ int(mixed[1])) % 2**63


def epoch_order(n: int, seed: int, epoch: int, *, shuffle: bool = True) -> torch.Tensor:
    """The global example order of one epoch: a permutation seeded by ``(seed, epoch)``
    (identical on every rank and for every world size), or ``arange(n)``."""
    if not shuffle:
        return torch.arange(n, dtype=torch.long)
    mixed = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(2, np.uint32)
    g = torch.Generator().manual_seed((int(mixed[0]) << 32) | int(mixed[1]))
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class RankBatch:
    """One step's share of a rank.

    ``indices``: dataset indices of this rank's part of the global batch. ``global_size``:
    examples in the whole global batch (over all ranks). ``weight``: multiply this rank's
    mean loss by it, so DDP's gradient average equals the gradient of the mean over the
    global batch even when the last global batch splits unevenly (``world * local / global``;
    exactly 1.0 for full batches).
    """

    step: int
    indices: torch.Tensor
    global_size: int
    weight: float


class DistributedBatchSampler(torch.utils.data.Sampler):
    """Per-rank batches of a split of ``n`` examples, for data-parallel training.

    Convention: ``batch_size`` is the **per-rank** batch; the global batch (the one an
    optimizer step sees) is ``batch_size * world``. Each epoch, the global order is
    :func:`epoch_order` ``(n, seed, epoch)``, identical on every rank; it is cut into
    consecutive global batches, and rank r takes the r-th contiguous part of each. So a
    single process with ``batch_size * world`` sees exactly the same global batches in the
    same order, and DDP training follows single-process training.

    The last global batch, when partial, is split as evenly as possible (use
    :attr:`RankBatch.weight`); it is dropped when ``drop_last`` or when it has fewer
    examples than ranks (each rank needs at least one). Every rank yields the same number of
    steps, so DDP's collectives stay in step.

    Iterating yields lists of indices (usable as a ``DataLoader`` ``batch_sampler``);
    :meth:`batches` yields :class:`RankBatch` records; :meth:`iterate` yields
    ``(x, y, weight)`` from a split. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank_: int | None = None,
        world: int | None = None,
    ) -> None:
        if n < 0:
            raise ValueError(f"DistributedBatchSampler: n must be >= 0, got {n}")
        if batch_size < 1:
            raise ValueError(f"DistributedBatchSampler: batch_size must be >= 1, got {batch_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.world = world_size() if world is None else int(world)
        self.rank = rank() if rank_ is None else int(rank_)
        if not 0 <= self.rank < self.world:
            raise ValueError(
                f"DistributedBatchSampler: need 0 <= rank < world, got rank {self.rank}, world {self.world}"
            )
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses (same value on every rank)."""
        self.epoch = int(epoch)

    def _global_chunks(self) -> list[tuple[int, int]]:
        gb = self.global_batch_size
        chunks = [(s, min(s + gb, self.n)) for s in range(0, self.n, gb)]
        if chunks:
            s, e = chunks[-1]
            if e - s < gb and (self.drop_last or e - s < self.world):
                chunks.pop()
        return chunks

    def __len__(self) -> int:
        return len(self._global_chunks())

    def batches(self) -> Iterator[RankBatch]:
        order = epoch_order(self.n, self.seed, self.epoch, shuffle=self.shuffle)
        for step, (s, e) in enumerate(self._global_chunks()):
            size = e - s
            part = shard_indices(size, self.rank, self.world)
            local = order[s:e][part]
            yield RankBatch(step, local, size, self.world * len(local) / size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches():
            yield b.indices.tolist()

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's examples of ``epoch`` in step order, concatenated (selects the epoch).

        Sliced into consecutive chunks of ``batch_size`` they are exactly this rank's
        batches (only the last one can be shorter), so a loop that batches a given index
        order (``rtk.data.batches(split, batch_size, indices=...)``, the training loop's
        ``epoch_indices`` hook) trains on the right shard."""
        self.set_epoch(epoch)
        parts = [b.indices for b in self.batches()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def weights(self, epoch: int | None = None) -> list[float]:
        """:attr:`RankBatch.weight` of each step of ``epoch`` (default: the current one);
        1.0 except for an uneven last global batch."""
        if epoch is not None:
            self.set_epoch(epoch)
        return [b.weight for b in self.batches()]

    def iterate(
        self, split: Any, *, device: torch.device | str | None = None, num_workers: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """``(x, y, weight)`` for each step of the current epoch from an rtk data split
        (in-memory splits are sliced; other datasets go through one DataLoader)."""
        from .data.core import TensorSplit

        if len(split) != self.n:
            raise ValueError(f"DistributedBatchSampler was built for {self.n} examples, the split has {len(split)}")
        plan = list(self.batches())
        non_blocking = device is not None and torch.device(device).type == "cuda"
        if isinstance(split, TensorSplit):
            for b in plan:
                x, y = split.x[b.indices], split.y[b.indices]
                if device is not None:
                    x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
                yield x, y, b.weight
            return
        loader = torch.utils.data.DataLoader(
            split, batch_sampler=[b.indices.tolist() for b in plan], num_workers=num_workers, pin_memory=non_blocking
        )
        for b, (x, y) in zip(plan, loader):
            if device is not None:
                x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
            yield x, y, b.weight


# ---------------------------------------------------------------------------- only rank 0 writes
def main_process_only(fn: F | None = None, *, broadcast: bool = False) -> Any:
    """Decorate a function that writes files (checkpoints, tables, figures, reports) so it
    runs on rank 0 only. Other ranks get None, or with ``broadcast=True`` rank 0's return
    value (then every rank must call the function; an exception on rank 0 is re-raised on
    every rank instead of leaving them waiting).

    Usable bare (``@main_process_only``) or with options (``@main_process_only(broadcast=True)``).
    """

    def deco(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not broadcast or not is_distributed():
                return f(*args, **kwargs) if is_main() else None
            payload: tuple[str, Any] = ("ok", None)
            error: BaseException | None = None
            if is_main():
                try:
                    payload = ("ok", f(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
                    error = exc
                    payload = ("error", f"{type(exc).__name__}: {exc}")
            status, value = broadcast_object(payload, src=0)
            if error is not None:
                raise error
            if status == "error":
                raise RtkError(f"{getattr(f, '__qualname__', f)} failed on rank 0: {value}")
            return value

        return wrapper  # type: ignore[return-value]

    return deco(fn) if fn is not None else deco


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (download, unpack, create a directory), then the others.

    If rank 0 fails inside the block, the others are released and run the block themselves
    while rank 0's exception propagates.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


# ---------------------------------------------------------------------------- launch
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = [
    "DistInfo",
    "DistributedBatchSampler",
    "RankBatch",
    "TORCHRUN_ENV",
    "all_gather_object",
    "all_reduce_sum",
    "all_reduce_sums",
    "backend",
    "barrier",
    "broadcast_object",
    "choose_backend",
    "cleanup",
    "device",
    "epoch_order",
    "free_port",
    "gather_object",
    "gather_table",
    "gather_tensors",
    "info",
    "init_from_env",
    "is_distributed",
    "is_initialized",
    "is_main",
    "launched_by_torchrun",
    "local_rank",
    "main_first",
    "main_process_only",
    "rank",
    "rank_seed",
    "session",
    "shard_indices",
    "shard_sizes",
    "unwrap",
    "world_size",
    "wrap_model",
]
