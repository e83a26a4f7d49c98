"""The analyses of Cianfarani et al. (2022) on top of any similarity metric.

- :func:`heatmap`: layer x layer similarity within one model or between two models.
- :func:`block_structure`: how much of a within-model heatmap forms contiguous blocks of
  high similarity that stand out from the other layers (definition below), and the blocks.
- :func:`diagonal`: similarity of corresponding layers of two models.
- :func:`overfitting_by_layer`: corresponding layers of a sequence of checkpoints of one
  run (for example ``robust@best`` and ``robust@last``) against the first.
- :func:`specialization`: class-conditional analysis per layer (definition below).
- :func:`plot_heatmap`, :func:`plot_lines`: PNG figures (matplotlib, Agg backend).

**Block-structure score.** For a symmetric ``L x L`` similarity matrix ``S`` (distances are
first turned into similarities), a threshold ``t`` and a minimum size ``m``:

1. Split the layers ``0..L-1`` into contiguous segments maximising
   ``sum over segments B of sum over pairs i < j in B of (S_ij - t)`` (exact dynamic
   programme; ties go to the longer last segment, so the result is deterministic).
2. A *block* is a segment of at least ``m`` layers whose mean within-segment similarity
   (over pairs ``i != j``) ``in_B`` is at least ``t``. Its contrast is ``in_B - out_B``, where
   ``out_B`` is the mean similarity between its layers and all layers outside it
   (``out_B = in_B`` when the block covers every layer: uniform similarity is no structure).
3. ``score = sum over blocks of |B| (|B| - 1) / (L (L - 1)) * max(0, in_B - out_B)``:
   the share of the heatmap's off-diagonal area covered by blocks, weighted by how much
   each block stands out. 0 without blocks; at most 1.

**Specialization.** For one layer with centred features ``x_i`` and unit vectors
``u_i = x_i / ||x_i||``, the class-similarity matrix is
``C[a, b] = mean of u_i . u_j over examples i of class a and j of class b, i != j``
(the mean cosine similarity between the representations of two classes). Then
``within = mean_a C[a, a]``, ``between = mean_{a != b} C[a, b]`` and
``specialization = within - between``: how much more alike same-class examples are than
examples of different classes at that layer (0: the layer does not tell classes apart).
``class_alignment`` is the metric between the layer and the one-hot labels (how much of
the layer's example-by-example similarity structure is class identity).

**Cross-class specialization (paper 1's reading).** :func:`cross_class_specialization`
follows Cianfarani et al.'s description: a layer is specialized when its representations of
different classes are *dissimilar under the similarity metric itself*. For classes a != b it
takes the first ``m`` test examples of each (``m`` = the smallest class count, or
``per_class``), pairs them by order, and computes the metric (CKA) between the two feature
matrices ``X_a`` and ``X_b``; ``cross_class_similarity`` is the mean over class pairs and
``cross_class_specialization = 1 - cross_class_similarity``. The paper's public code
(``inspire-group/robust_representation_similarity``) holds only the CKA machinery, not this
analysis, so the definition here is taken from the paper's text. It differs from rtk's own
``specialization`` above in three ways: it compares the *geometry* of two classes' example sets
(CKA is invariant to rotations and isotropic scaling, so two classes whose representations are
rotated copies of each other count as identical), not the cosine similarity of individual
examples; it needs no centring over the whole batch; and its value depends on ``m`` and on the
arbitrary pairing by order, while rtk's uses every pair of examples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .kernels import SimilarityError, Tensor
from .metrics import as_similarity, pair_values, similarity_matrix

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- heatmaps
@dataclass(frozen=True)
class Heatmap:
    """A layer x layer matrix of a metric: ``values[i, j]`` compares ``rows[i]`` (of
    ``model_a``) with ``cols[j]`` (of ``model_b``)."""

    values: np.ndarray
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    model_a: str
    model_b: str
    metric: str
    higher_is_similar: bool = True
    max_value: float | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per pair of layers."""
        recs = []
        for i, r in enumerate(self.rows):
            for j, c in enumerate(self.cols):
                recs.append(
                    {
                        "model_a": self.model_a,
                        "layer_a": r,
                        "depth_a": i,
                        "model_b": self.model_b,
                        "layer_b": c,
                        "depth_b": j,
                        "metric": self.metric,
                        "value": float(self.values[i, j]),
                    }
                )
        return pd.DataFrame(recs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values.tolist(),
            "rows": list(self.rows),
            "cols": list(self.cols),
            "model_a": self.model_a,
            "model_b": self.model_b,
            "metric": self.metric,
        }


def heatmap(
    metric: Any,
    feats_a: Mapping[str, Tensor],
    feats_b: Mapping[str, Tensor] | None = None,
    *,
    model_a: str = "a",
    model_b: str | None = None,
    metric_name: str = "",
) -> Heatmap:
    """Layer x layer similarity: within ``feats_a`` or between ``feats_a`` and ``feats_b``
    (``{layer: [n, d]}`` on the same examples)."""
    names_a = list(feats_a)
    xs = [feats_a[k] for k in names_a]
    if feats_b is None:
        vals = similarity_matrix(metric, xs, names_a=names_a)
        names_b, mb = names_a, model_a
    else:
        names_b = list(feats_b)
        vals = similarity_matrix(
            metric,
            xs,
            [feats_b[k] for k in names_b],
            names_a=[f"{model_a}:{k}" for k in names_a],
            names_b=[f"{model_b}:{k}" for k in names_b],
        )
        mb = model_b or "b"
    return Heatmap(
        vals.numpy(),
        tuple(names_a),
        tuple(names_b),
        model_a,
        mb,
        metric_name or repr(metric),
        bool(getattr(metric, "higher_is_similar", True)),
        getattr(metric, "max_value", None),
    )


# ----------------------------------------------------------------------------- block structure
@dataclass(frozen=True)
class Block:
    start: int
    stop: int
    layers: tuple[str, ...]
    mean_in: float
    mean_out: float

    @property
    def contrast(self) -> float:
        return self.mean_in - self.mean_out

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "stop": self.stop,
            "first": self.layers[0],
            "last": self.layers[-1],
            "size": len(self.layers),
            "mean_in": self.mean_in,
            "mean_out": self.mean_out,
            "contrast": self.contrast,
        }


@dataclass(frozen=True)
class BlockStructure:
    score: float
    blocks: tuple[Block, ...]
    threshold: float
    min_size: int
    segments: tuple[tuple[int, int], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "min_size": self.min_size,
            "blocks": [b.to_dict() for b in self.blocks],
        }


def block_structure(
    sim: np.ndarray | Heatmap, names: Sequence[str] | None = None, *, threshold: float = 0.8, min_size: int = 3
) -> BlockStructure:
    """The block-structure score of a symmetric similarity matrix (see the module doc)."""
    if isinstance(sim, Heatmap):
        names = names or sim.rows
        s = np.asarray(sim.values, dtype=np.float64)
        if not sim.higher_is_similar:  # a distance: 1 - d / max_value (or the largest value seen)
            s = 1.0 - s / max(float(sim.max_value or s.max()), 1e-12)
    else:
        s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise SimilarityError(f"block structure needs a square within-model matrix, got shape {list(s.shape)}")
    n = s.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    s = 0.5 * (s + s.T)
    if n < 2:
        return BlockStructure(0.0, (), threshold, min_size, ((0, n),))
    a = s - threshold
    np.fill_diagonal(a, 0.0)
    pre = np.zeros((n + 1, n + 1))
    pre[1:, 1:] = a.cumsum(0).cumsum(1)

    def seg(i: int, j: int) -> float:  # sum over pairs p < q in [i, j)
        return 0.5 * (pre[j, j] - pre[i, j] - pre[j, i] + pre[i, i])

    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    arg = np.zeros(n + 1, dtype=int)
    for j in range(1, n + 1):
        for i in range(j):
            v = best[i] + seg(i, j)
            if v > best[j] + 1e-12:
                best[j], arg[j] = v, i
    segments = []
    j = n
    while j > 0:
        segments.append((int(arg[j]), j))
        j = int(arg[j])
    segments.reverse()
    blocks = []
    score = 0.0
    for i, j in segments:
        size = j - i
        if size < max(min_size, 2):
            continue
        inner = s[i:j, i:j]
        mean_in = float((inner.sum() - np.trace(inner)) / (size * (size - 1)))
        if mean_in < threshold:
            continue
        outside = np.r_[0:i, j:n]
        mean_out = float(s[i:j][:, outside].mean()) if outside.size else mean_in
        blocks.append(Block(i, j, tuple(names[i:j]), mean_in, mean_out))
        score += size * (size - 1) / (n * (n - 1)) * max(0.0, mean_in - mean_out)
    return BlockStructure(float(score), tuple(blocks), threshold, min_size, tuple(segments))


# ----------------------------------------------------------------------------- diagonals
def common_layers(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str]]:
    """Corresponding layers: by name when the models share names (same architecture),
    else by position when both have the same number of layers."""
    bset = set(b)
    shared = [(k, k) for k in a if k in bset]
    if shared:
        return shared
    if len(a) == len(b):
        return list(zip(a, b))
    raise SimilarityError(
        f"cannot pair layers: the models share no layer name and have {len(a)} vs {len(b)} layers; "
        "select corresponding layers with the same names or the same count"
    )


def diagonal(
    metric: Any,
    feats_a: Mapping[str, Tensor],
    feats_b: Mapping[str, Tensor],
    *,
    model_a: str = "a",
    model_b: str = "b",
    metric_name: str = "",
    matrix: Heatmap | None = None,
) -> pd.DataFrame:
    """Similarity of corresponding layers: one row per layer pair (from ``matrix`` when it
    is given, else computed pair by pair)."""
    pairs = common_layers(list(feats_a), list(feats_b))
    if matrix is not None:
        ri = {k: i for i, k in enumerate(matrix.rows)}
        ci = {k: i for i, k in enumerate(matrix.cols)}
        vals = [float(matrix.values[ri[p], ci[q]]) for p, q in pairs]
    else:
        vals = pair_values(
            metric,
            [feats_a[p] for p, _ in pairs],
            [feats_b[q] for _, q in pairs],
            [f"{model_a}:{p} vs {model_b}:{q}" for p, q in pairs],
        )
    return pd.DataFrame(
        [
            {
                "model_a": model_a,
                "model_b": model_b,
                "layer": p if p == q else f"{p}|{q}",
                "depth": i,
                "relative_depth": i / max(len(pairs) - 1, 1),
                "metric": metric_name or repr(metric),
                "value": v,
            }
            for i, ((p, q), v) in enumerate(zip(pairs, vals))
        ]
    )


def overfitting_by_layer(
    metric: Any, checkpoints: Sequence[tuple[str, Mapping[str, Tensor]]], *, metric_name: str = ""
) -> pd.DataFrame:
    """Every checkpoint after the first against the first, layer by layer (for example
    ``[("robust@best", fb), ("robust@last", fl)]``)."""
    if len(checkpoints) < 2:
        raise SimilarityError("overfitting by layer needs at least two checkpoints")
    ref_name, ref = checkpoints[0]
    frames = []
    for name, feats in checkpoints[1:]:
        df = diagonal(metric, ref, feats, model_a=ref_name, model_b=name, metric_name=metric_name)
        frames.append(df.rename(columns={"model_a": "reference", "model_b": "checkpoint"}))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- specialization
def class_similarity(x: Tensor, labels: Tensor, num_classes: int | None = None) -> np.ndarray:
    """``C[a, b]``: mean cosine similarity of centred representations between examples of
    class a and of class b (``i != j``); NaN rows for classes without examples."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    labels = labels.reshape(-1).long().cpu()
    if x.shape[0] != labels.shape[0]:
        raise SimilarityError(f"{x.shape[0]} feature rows but {labels.shape[0]} labels")
    c = int(num_classes or int(labels.max()) + 1)
    xc = x - x.mean(0, keepdim=True)
    norms = xc.norm(dim=1, keepdim=True)
    u = torch.where(norms > 0, xc / norms.clamp_min(1e-300), torch.zeros_like(xc)).cpu()
    sums = torch.zeros(c, u.shape[1], dtype=torch.float64).index_add_(0, labels, u)
    counts = torch.bincount(labels, minlength=c).to(torch.float64)
    unit = torch.zeros(c, dtype=torch.float64).index_add_(0, labels, (norms.cpu().reshape(-1) > 0).to(torch.float64))
    dots = sums @ sums.T  # sum over i in a, j in b of u_i . u_j
    pairs = torch.outer(counts, counts)
    dots.diagonal().sub_(unit)  # remove i == j terms (u_i . u_i = 1 for nonzero rows)
    pairs.diagonal().sub_(counts)
    out = torch.where(pairs > 0, dots / pairs.clamp_min(1), torch.full_like(dots, float("nan")))
    return out.numpy()


def specialization(
    metric: Any,
    feats: Mapping[str, Tensor],
    labels: Tensor,
    *,
    model: str = "model",
    num_classes: int | None = None,
    metric_name: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per layer: ``within``, ``between``, ``specialization`` and ``class_alignment`` (see the
    module doc); and the class-similarity matrices in long form."""
    labels = labels.reshape(-1).long().cpu()
    c = int(num_classes or int(labels.max()) + 1)
    onehot = torch.nn.functional.one_hot(labels, c).to(torch.float32)
    rows, pair_rows = [], []
    names = list(feats)
    for depth, name in enumerate(names):
        x = feats[name]
        cs = class_similarity(x, labels, c)
        mask = ~np.isnan(cs)
        diag = np.diag(cs)[~np.isnan(np.diag(cs))]
        off = cs[mask & ~np.eye(c, dtype=bool)]
        within = float(diag.mean()) if diag.size else float("nan")
        between = float(off.mean()) if off.size else float("nan")
        try:
            align = pair_values(metric, [x], [onehot.to(x.device)], [f"{model}:{name} vs labels"])[0]
            if not getattr(metric, "higher_is_similar", True):
                align = float(as_similarity(torch.tensor([align]), metric)[0])
        except SimilarityError as exc:
            log.warning("class alignment of %s:%s skipped: %s", model, name, exc)
            align = float("nan")
        rows.append(
            {
                "model": model,
                "layer": name,
                "depth": depth,
                "relative_depth": depth / max(len(names) - 1, 1),
                "within_class": within,
                "between_class": between,
                "specialization": within - between,
                "class_alignment": align,
                "metric": metric_name or repr(metric),
            }
        )
        for a in range(c):
            for b in range(c):
                pair_rows.append(
                    {"model": model, "layer": name, "class_a": a, "class_b": b, "similarity": float(cs[a, b])}
                )
    return pd.DataFrame(rows), pd.DataFrame(pair_rows)


def cross_class_specialization(
    metric: Any,
    feats: Mapping[str, Tensor],
    labels: Tensor,
    *,
    model: str = "model",
    num_classes: int | None = None,
    per_class: int | None = None,
    metric_name: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per layer: ``cross_class_similarity`` (mean metric between the feature sets of two
    different classes) and ``cross_class_specialization`` (1 minus it), see the module doc; and
    the class-pair values in long form."""
    labels = labels.reshape(-1).long().cpu()
    c = int(num_classes or int(labels.max()) + 1)
    members = [torch.nonzero(labels == k).flatten() for k in range(c)]
    present = [k for k in range(c) if len(members[k]) > 0]
    if len(present) < 2:
        raise SimilarityError(f"{model}: cross-class specialization needs two classes, got {len(present)}")
    m = min(len(members[k]) for k in present)
    if per_class is not None:
        m = min(m, per_class)
    if m < 4:
        raise SimilarityError(
            f"{model}: cross-class specialization needs 4 examples of every class, the rarest has {m}"
        )
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    rows, pair_rows = [], []
    names = list(feats)
    for depth, name in enumerate(names):
        x = feats[name].reshape(feats[name].shape[0], -1)
        sets = {k: x[members[k][:m].to(x.device)] for k in present}
        vals = pair_values(
            metric,
            [sets[a] for a, _ in pairs],
            [sets[b] for _, b in pairs],
            [f"{model}:{name} {a}-{b}" for a, b in pairs],
        )
        if not getattr(metric, "higher_is_similar", True):
            vals = as_similarity(torch.tensor(vals, dtype=torch.float64), metric).tolist()
        mean = float(np.mean(vals))
        rows.append(
            {
                "model": model,
                "layer": name,
                "depth": depth,
                "relative_depth": depth / max(len(names) - 1, 1),
                "cross_class_similarity": mean,
                "cross_class_specialization": 1.0 - mean,
                "per_class": m,
                "metric": metric_name or repr(metric),
            }
        )
        for (a, b), v in zip(pairs, vals):
            pair_rows.append({"model": model, "layer": name, "class_a": a, "class_b": b, "similarity": float(v)})
    return pd.DataFrame(rows), pd.DataFrame(pair_rows)


# ----------------------------------------------------------------------------- figures
def plot_heatmap(
    h: Heatmap, path: str | Path, *, title: str = "", vmin: float | None = 0.0, vmax: float | None = 1.0
) -> Path:
    """A heatmap PNG with layer names on both axes (rows: model_a, bottom-up like the papers)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    la, lb = len(h.rows), len(h.cols)
    size = min(max(4.0, 0.28 * max(la, lb) + 2.5), 22.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    if not h.higher_is_similar:
        vmin, vmax = 0.0, float(np.nanmax(h.values)) or 1.0
    im = ax.imshow(h.values, origin="lower", cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
    fs = max(4, min(9, int(220 / max(la, lb, 1))))
    ax.set_yticks(range(la))
    ax.set_yticklabels(h.rows, fontsize=fs)
    ax.set_xticks(range(lb))
    ax.set_xticklabels(h.cols, fontsize=fs, rotation=90)
    ax.set_ylabel(f"{h.model_a} layer")
    ax.set_xlabel(f"{h.model_b} layer")
    ax.set_title(title or f"{h.metric}: {h.model_a} vs {h.model_b}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=h.metric)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lines(
    df: pd.DataFrame,
    path: str | Path,
    *,
    x: str,
    y: str,
    hue: str,
    title: str = "",
    ylabel: str | None = None,
    xticks: str | None = None,
) -> Path:
    """Line plot of ``y`` against ``x`` with one line per value of ``hue``; ``xticks`` names a
    column whose values label the x positions."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, part in df.groupby(hue, sort=False):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", ms=3, label=str(key))
    if xticks is not None:
        first = df.drop_duplicates(x).sort_values(x)
        if len(first) <= 60:
            ax.set_xticks(first[x])
            ax.set_xticklabels(first[xticks], rotation=90, fontsize=7)
    ax.set_xlabel(x if xticks is None else "layer")
    ax.set_ylabel(ylabel or y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
