"""Per-example records: which attack broke which example, at what eps.

The key of a record is ``(model, unit, index)``: a fingerprint of the model's weights, the
attack unit's key, and the example's index in the dataset split. Records are written as
they are produced, one JSON line per batch and unit, to an append-only *part* file that
belongs to one writer (one process)::

    <root>/records/part-<host>-<pid>-<time>.jsonl
    <root>/adversarial/<model>/<unit>/<first>-<last>.safetensors   (saved adversarial examples)

An interrupted evaluation resumes from whatever lines were completely written (a torn last
line is ignored). Runs or processes that evaluated different examples (shards by index)
are gathered by reading all their part files together; duplicates keep the first record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..trust import atomic_write, inside

log = logging.getLogger(__name__)

VERSION = 1
#: Columns of the per-example record table.
COLUMNS = ("model", "unit", "index", "label", "pred", "correct", "attacked", "invalid", "linf", "l2", "l1")
#: Bits of the ``invalid`` column: why an adversarial example does not count.
NONFINITE, OUT_OF_RANGE, OVER_BUDGET = 1, 2, 4
CLEAN = "clean"


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer (names, shapes, values)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.detach().float().cpu().numpy().tobytes()
        )
    return h.hexdigest()[:16]


def _tolist(t: Any) -> list:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().tolist()
    return list(t)


def _floats(t: torch.Tensor) -> list:
    """float32 values as Python floats (NaN where not attacked; JSON writes it as NaN)."""
    return t.detach().float().cpu().tolist()


class RecordStore:
    """Where per-example records go.

    ``RecordStore(None)`` keeps them in memory (nothing is resumable). ``RecordStore(dir)``
    appends to a new part file in ``dir/records`` and reads every part file of ``dir``
    plus those of ``extra`` directories (records of other runs or shards to merge).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, extra: Sequence[str | os.PathLike] = ()) -> None:
        self.root = Path(root) if root is not None else None
        self.extra = [Path(p) for p in extra]
        self._memory: list[dict[str, Any]] = []
        self._part: Path | None = None
        self._fh = None
        self.units: dict[str, dict[str, Any]] = {}
        #: (model, unit) -> {"work", "seconds", "attacked", "chunks", "examples"} summed over the chunks read by table()
        self.stats: dict[tuple[str, str], dict[str, float]] = {}
        for p in self.extra:
            if not p.exists():
                raise DataError(f"records_from: {p} does not exist (expected a directory with records/part-*.jsonl)")

    # writing -------------------------------------------------------------------
    def _open(self):
        if self._fh is None:
            assert self.root is not None
            d = self.root / "records"
            d.mkdir(parents=True, exist_ok=True)
            inside(self.root, d, "records folder")  # a planted symlink must not lead the records elsewhere
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self._part = d / f"part-{socket.gethostname()}-{os.getpid()}-{stamp}-{time.monotonic_ns() % 10**6}.jsonl"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
            self._fh = os.fdopen(os.open(self._part, flags, 0o644), "a", encoding="utf-8")
        return self._fh

    def append(self, chunk: dict[str, Any]) -> None:
        """Write one batch x unit chunk (columnar lists)."""
        chunk = {"v": VERSION, **chunk}
        if self.root is None:
            self._memory.append(chunk)
            return
        fh = self._open()
        fh.write(json.dumps(chunk, separators=(",", ":")) + "\n")
        fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # reading -------------------------------------------------------------------
    def part_files(self) -> list[Path]:
        roots = ([self.root] if self.root is not None else []) + self.extra
        files: list[Path] = []
        for r in roots:
            d = r / "records" if (r / "records").is_dir() else r
            files += sorted(d.glob("part-*.jsonl"))
        return files

    def chunks(self) -> Iterable[dict[str, Any]]:
        yield from (c for c in self._memory if not c.get("adv"))
        for f in self.part_files():
            if self._fh is not None and f == self._part:
                self._fh.flush()
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        chunk = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s line %d is incomplete (an interrupted write); ignored", f, n)
                        continue
                    if chunk.get("v") != VERSION:
                        log.warning(
                            "%s line %d has record format %r, expected %r; ignored", f, n, chunk.get("v"), VERSION
                        )
                        continue
                    yield chunk

    def table(self, model: str | None = None) -> pd.DataFrame:
        """Every record (of ``model`` when given) as a DataFrame with :data:`COLUMNS`;
        duplicates of one ``(model, unit, index)`` keep the first."""
        self.stats = {}
        files = self.part_files()
        if not files and not self._memory:
            return _empty_table()
        single_writer = not files and self.root is None  # in memory: one writer, no duplicates possible
        seen: set[tuple[str, str, int]] = set()
        names: dict[tuple[str, str], int] = {}
        parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS if c not in ("model", "unit")}
        codes: list[np.ndarray] = []
        for ch in self.chunks():
            if model is not None and ch["model"] != model:
                continue
            if ch["unit"] != CLEAN and "meta" in ch:
                self.units.setdefault(ch["unit"], ch["meta"])
            n = len(ch["index"])
            first = (ch["model"], ch["unit"], ch["index"][0] if n else -1)
            if first not in seen:  # the same chunk read twice (a directory given twice) counts once
                seen.add(first)
                st = self.stats.setdefault(
                    (ch["model"], ch["unit"]), {"work": 0, "seconds": 0.0, "attacked": 0, "chunks": 0, "examples": 0}
                )
                st["work"] += ch.get("work", n)
                st["examples"] += n
                st["seconds"] += ch.get("seconds", 0.0)
                st["attacked"] += sum(ch.get("attacked", []))
                st["chunks"] += 1
            code = names.setdefault((ch["model"], ch["unit"]), len(names))
            codes.append(np.full(n, code, dtype=np.int32))
            for c in ("index", "label", "pred"):
                parts[c].append(np.asarray(ch[c], dtype=np.int64))
            parts["correct"].append(np.asarray(ch["correct"], dtype=bool))
            parts["attacked"].append(np.asarray(ch.get("attacked", np.zeros(n, dtype=bool)), dtype=bool))
            parts["invalid"].append(np.asarray(ch.get("invalid", np.zeros(n, dtype=np.int64)), dtype=np.int64))
            for c in ("linf", "l2", "l1"):
                parts[c].append(np.asarray(ch[c], dtype=np.float64) if c in ch else np.full(n, np.nan))
        empty = {
            "index": np.int64,
            "label": np.int64,
            "pred": np.int64,
            "correct": bool,
            "attacked": bool,
            "invalid": np.int64,
            "linf": np.float64,
            "l2": np.float64,
            "l1": np.float64,
        }
        cols = {c: np.concatenate(v) if v else np.zeros(0, dtype=empty[c]) for c, v in parts.items()}
        pair_codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
        pairs = list(names)
        model_names = sorted({m for m, _ in pairs})
        unit_names = sorted({u for _, u in pairs})
        m_of = np.array([model_names.index(m) for m, _ in pairs], dtype=np.int32)
        u_of = np.array([unit_names.index(u) for _, u in pairs], dtype=np.int32)

        def categorical(codes_: np.ndarray, cats: list[str]) -> pd.Categorical:
            return pd.Categorical.from_codes(codes_, dtype=pd.CategoricalDtype(pd.Index(cats, dtype=object)))

        df = pd.DataFrame(
            {
                "model": categorical(m_of[pair_codes] if len(pairs) else pair_codes, model_names),
                "unit": categorical(u_of[pair_codes] if len(pairs) else pair_codes, unit_names),
                **cols,
            }
        )
        dup = df.duplicated(subset=["model", "unit", "index"], keep="first") if not single_writer and len(df) else None
        if dup is not None and dup.any():
            log.info("records: %d duplicate (model, unit, index) rows dropped (kept the first)", int(dup.sum()))
            df = df[~dup].reset_index(drop=True)
        return df

    # adversarial examples ------------------------------------------------------------
    def adversarial_dir(self, model: str, unit: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / "adversarial" / model / unit

    def save_adversarial(self, model: str, unit: str, index: torch.Tensor, x_adv: torch.Tensor) -> None:
        """Save adversarial examples (float32, exactly as scored) with their dataset indices."""
        from safetensors.torch import save

        if index.numel() == 0:
            return
        if self.root is None:
            self._memory.append(
                {"adv": True, "model": model, "unit": unit, "index": index.cpu(), "x": x_adv.detach().cpu()}
            )
            return
        d = self.adversarial_dir(model, unit)
        first, last = int(index.min()), int(index.max())
        path = d / f"{first:08d}-{last:08d}-{len(index)}.safetensors"
        blob = save(
            {"index": index.detach().cpu().long().contiguous(), "x_adv": x_adv.detach().cpu().float().contiguous()}
        )
        atomic_write(path, blob, root=self.root)

    def load_adversarial(self, model: str, unit: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All saved adversarial examples of one model and unit: ``(index, x_adv)``."""
        from safetensors.torch import load_file

        idx, xs = [], []
        for ch in self._memory:
            if ch.get("adv") and ch["model"] == model and ch["unit"] == unit:
                idx.append(ch["index"])
                xs.append(ch["x"])
        roots = ([self.root] if self.root is not None else []) + self.extra
        for r in roots:
            d = r / "adversarial" / model / unit
            for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
                t = load_file(str(f))
                idx.append(t["index"])
                xs.append(t["x_adv"])
        if not idx:
            return None
        index = torch.cat(idx)
        x = torch.cat(xs)
        order = torch.argsort(index, stable=True)
        index, x = index[order], x[order]
        keep = torch.ones(len(index), dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return index[keep], x[keep]


def _empty_table() -> pd.DataFrame:
    cat = pd.CategoricalDtype(pd.Index([], dtype=object))
    return pd.DataFrame(
        {
            "model": pd.Series([], dtype=cat),
            "unit": pd.Series([], dtype=cat),
            **{
                c: np.zeros(0, dtype=t)
                for c, t in (
                    ("index", np.int64),
                    ("label", np.int64),
                    ("pred", np.int64),
                    ("correct", bool),
                    ("attacked", bool),
                    ("invalid", np.int64),
                    ("linf", np.float64),
                    ("l2", np.float64),
                    ("l1", np.float64),
                )
            },
        }
    )


def clean_chunk(
    model: str, index: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, *, work: int = 0, seconds: float = 0.0
) -> dict[str, Any]:
    return {
        "model": model,
        "unit": CLEAN,
        "index": _tolist(index),
        "label": _tolist(label),
        "pred": _tolist(pred),
        "correct": _tolist(pred == label),
        "work": int(work),
        "seconds": round(float(seconds), 6),
    }


def attack_chunk(
    model: str,
    unit: Any,
    index: torch.Tensor,
    label: torch.Tensor,
    pred: torch.Tensor,
    attacked: torch.Tensor,
    invalid: torch.Tensor,
    norms: dict[str, torch.Tensor],
    work: int,
    seconds: float,
) -> dict[str, Any]:
    nan = torch.full_like(norms["Linf"], float("nan"))
    return {
        "model": model,
        "unit": unit.key,
        "meta": unit.to_dict(),
        "index": _tolist(index),
        "label": _tolist(label),
        "pred": _tolist(pred),
        "correct": _tolist(pred == label),
        "attacked": _tolist(attacked),
        "invalid": _tolist(invalid),
        "linf": _floats(torch.where(attacked, norms["Linf"], nan)),
        "l2": _floats(torch.where(attacked, norms["L2"], nan)),
        "l1": _floats(torch.where(attacked, norms["L1"], nan)),
        "work": int(work),
        "seconds": round(float(seconds), 6),
    }


def merge_records(dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Gather the records of several runs or shards into one table (first record wins)."""
    if not dirs:
        return RecordStore(None).table()
    store = RecordStore(dirs[0], extra=list(dirs[1:]))
    return store.table()


__all__ = ["CLEAN", "COLUMNS", "RecordStore", "attack_chunk", "clean_chunk", "merge_records", "model_fingerprint"]
