"""The work of the ``similarity`` stage and of ``rtk similarity``, independent of the runner.

:func:`run_similarity` reads features of every model the job names (one pass through the
data for all of them together), computes the requested analyses and draws the figures.
With a metric that has an ``accumulator`` (minibatch CKA), heatmaps, diagonals and the
overfitting curves are streamed: only one batch of activations is held at a time (the
specialization analysis, when requested, keeps the features of the models it analyses).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import ConfigError
from ..jobs import ANALYSES, SimilarityRequest, default
from ..runtime import progress
from .analyses import (
    Heatmap,
    block_structure,
    common_layers,
    cross_class_specialization,
    diagonal,
    heatmap,
    overfitting_by_layer,
    plot_heatmap,
    plot_lines,
    specialization,
)
from .features import ModelInput, iter_features
from .kernels import SimilarityError, Tensor

log = logging.getLogger(__name__)


@dataclass
class SimilarityJob:
    """What to compare and how (the settings and their defaults are :class:`rtk.SimilarityRequest`'s).
    Model references are names or ``name@tag``."""

    metric: Any
    metric_name: str
    models: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    limit: int | None = default(SimilarityRequest, "limit")
    batch_size: int = default(SimilarityRequest, "batch_size")
    pooling: str = default(SimilarityRequest, "pooling")
    split: str = default(SimilarityRequest, "split")
    block_threshold: float = default(SimilarityRequest, "block_threshold")
    block_min_size: int = default(SimilarityRequest, "block_min_size")
    passes: int = default(SimilarityRequest, "passes")

    def refs(self) -> list[str]:
        out: list[str] = []
        for r in [*self.models, *(m for p in self.pairs for m in p), *self.checkpoints]:
            if r not in out:
                out.append(r)
        return out


@dataclass
class SimilarityOutput:
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path]
    summary: str
    metrics: dict[str, float]
    heatmaps: dict[str, Heatmap]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def run_similarity(
    job: SimilarityJob,
    *,
    load_model: Callable[[str], torch.nn.Module],
    layers_for: Callable[[str], Sequence[str] | None],
    attack_for: Callable[[str, torch.nn.Module], tuple[str, Callable] | None],
    data: Any,
    device: torch.device | str = "cpu",
    seed: int = 0,
    figure_path: Callable[[str], Path] | None = None,
) -> SimilarityOutput:
    """Run every requested analysis; returns tables, figures, a markdown summary and
    headline numbers."""
    started = time.perf_counter()
    split = data.test if job.split == "test" else data.train
    want = set(job.analyses)
    refs = job.refs()
    inputs: list[ModelInput] = []
    labels_in: dict[str, str] = {}
    for ref in refs:
        model = load_model(ref)
        atk = attack_for(ref, model)
        labels_in[ref] = "benign" if atk is None else f"adversarial: {atk[0]}"
        inputs.append(ModelInput(ref, model, layers_for(ref), None if atk is None else atk[1]))
    metric = job.metric
    streaming = hasattr(metric, "accumulator")
    if job.passes < 1:
        raise ConfigError(f"passes = {job.passes}: allowed 1 or more")
    if job.passes > 1 and not streaming:
        raise ConfigError(
            f"passes = {job.passes}: several passes apply only to a minibatch metric (minibatch-cka), whose value "
            f"depends on how the examples fall into minibatches; {job.metric_name} uses all examples at once, "
            "so set passes = 1"
        )
    within = [m for m in job.models] if want & {"heatmap", "block-structure"} else []
    pairs = list(job.pairs) if want & {"heatmap", "diagonal"} else []
    overfit = list(job.checkpoints) if "overfitting" in want and job.checkpoints else []
    spec_models = list(job.models) if want & {"specialization", "cross-class"} else []

    feats: dict[str, dict[str, Tensor]] = {}
    labels: Tensor | None = None
    heatmaps: dict[str, Heatmap] = {}
    overfit_mats: dict[str, Heatmap] = {}
    kw = dict(limit=job.limit, pooling=job.pooling, device=device, seed=seed)
    if streaming:
        bs = int(getattr(metric, "batch_size", job.batch_size))
        heatmaps, overfit_mats, feats, labels = _stream(
            job, metric, inputs, split, bs, within, pairs, overfit, spec_models, kw
        )
    else:
        keep = [mi for mi in inputs]
        from .features import collect_features

        got, labels = collect_features(keep, split, batch_size=job.batch_size, **kw)
        feats = {mi.name: f for mi, f in zip(keep, got)}
        for m in within:
            heatmaps[m] = heatmap(metric, feats[m], model_a=m, metric_name=job.metric_name)
        for a, b in pairs:
            if "heatmap" in want:
                heatmaps[f"{a} vs {b}"] = heatmap(
                    metric, feats[a], feats[b], model_a=a, model_b=b, metric_name=job.metric_name
                )

    tables: dict[str, pd.DataFrame] = {}
    figures: dict[str, Path] = {}
    metrics: dict[str, float] = {}
    lines: list[str] = []

    def fig(name: str) -> Path | None:
        return figure_path(name) if figure_path is not None else None

    # heatmaps ------------------------------------------------------------------
    frames = []
    for key, h in heatmaps.items():
        df = h.to_frame()
        df.insert(3, "inputs_a", labels_in[h.model_a])
        df["inputs_b"] = labels_in[h.model_b]
        frames.append(df)
        if "heatmap" in want:
            p = fig(f"heatmap_{_slug(key)}")
            if p is not None:
                figures[f"heatmap {key}"] = plot_heatmap(h, p, title=f"{job.metric_name}: {key}")
    if frames and "heatmap" in want:
        tables["heatmaps"] = pd.concat(frames, ignore_index=True)

    # block structure -----------------------------------------------------------
    if "block-structure" in want and job.models:
        rows, brows = [], []
        for m in job.models:
            bs_ = block_structure(heatmaps[m], threshold=job.block_threshold, min_size=job.block_min_size)
            rows.append(
                {
                    "model": m,
                    "inputs": labels_in[m],
                    "score": bs_.score,
                    "blocks": len(bs_.blocks),
                    "layers": len(heatmaps[m].rows),
                    "threshold": job.block_threshold,
                    "min_size": job.block_min_size,
                    "metric": job.metric_name,
                }
            )
            for b in bs_.blocks:
                brows.append({"model": m, **b.to_dict()})
            metrics[f"block_score/{m}"] = bs_.score
            found = (
                "; ".join(
                    f"{b.layers[0]}..{b.layers[-1]} ({len(b.layers)} layers, in {b.mean_in:.2f}, out {b.mean_out:.2f})"
                    for b in bs_.blocks
                )
                or "none"
            )
            lines.append(f"- `{m}` block-structure score **{bs_.score:.3f}**; blocks: {found}")
        tables["block_structure"] = pd.DataFrame(rows)
        tables["blocks"] = pd.DataFrame(
            brows, columns=["model", "start", "stop", "first", "last", "size", "mean_in", "mean_out", "contrast"]
        )

    # diagonals -----------------------------------------------------------------
    if "diagonal" in want and job.pairs:
        dfs = []
        for a, b in job.pairs:
            key = f"{a} vs {b}"
            h = heatmaps.get(key)
            if h is not None:
                df = diagonal(
                    metric,
                    {k: None for k in h.rows},
                    {k: None for k in h.cols},  # type: ignore[misc]
                    model_a=a,
                    model_b=b,
                    metric_name=job.metric_name,
                    matrix=h,
                )
            else:
                df = diagonal(metric, feats[a], feats[b], model_a=a, model_b=b, metric_name=job.metric_name)
            df["pair"] = key
            dfs.append(df)
            metrics[f"diagonal_mean/{key}"] = float(df["value"].mean())
            lines.append(
                f"- `{key}` corresponding layers: first {df['value'].iloc[0]:.3f}, "
                f"last {df['value'].iloc[-1]:.3f}, mean {df['value'].mean():.3f}"
            )
        tables["diagonal"] = pd.concat(dfs, ignore_index=True)
        p = fig("diagonal")
        if p is not None:
            figures["diagonal"] = plot_lines(
                tables["diagonal"],
                p,
                x="depth",
                y="value",
                hue="pair",
                xticks="layer",
                ylabel=job.metric_name,
                title="similarity of corresponding layers",
            )

    # overfitting ---------------------------------------------------------------
    if overfit:
        if overfit_mats:
            dfs = []
            for ck, h in overfit_mats.items():
                df = diagonal(
                    metric,
                    {k: None for k in h.rows},
                    {k: None for k in h.cols},  # type: ignore[misc]
                    model_a=overfit[0],
                    model_b=ck,
                    metric_name=job.metric_name,
                    matrix=h,
                )
                dfs.append(df.rename(columns={"model_a": "reference", "model_b": "checkpoint"}))
            odf = pd.concat(dfs, ignore_index=True)
        else:
            odf = overfitting_by_layer(metric, [(c, feats[c]) for c in overfit], metric_name=job.metric_name)
        tables["overfitting"] = odf
        for ck, part in odf.groupby("checkpoint", sort=False):
            n = len(part)
            early = float(part["value"].iloc[: max(1, n // 3)].mean())
            late = float(part["value"].iloc[-max(1, n // 3) :].mean())
            metrics[f"overfitting_early/{ck}"] = early
            metrics[f"overfitting_late/{ck}"] = late
            lines.append(f"- `{overfit[0]}` vs `{ck}`: first third of layers {early:.3f}, last third {late:.3f}")
        p = fig("overfitting")
        if p is not None:
            figures["overfitting"] = plot_lines(
                odf,
                p,
                x="depth",
                y="value",
                hue="checkpoint",
                xticks="layer",
                ylabel=job.metric_name,
                title=f"each checkpoint vs {overfit[0]}",
            )

    # specialization ------------------------------------------------------------
    def by_class(
        analyse: Callable[..., Any], column: str, names: tuple[str, str], ylabel: str, title: str
    ) -> list[pd.DataFrame]:
        """``analyse`` (specialization or its cross-class form) of every model: its two tables as ``names``,
        the last layer's ``column`` as a metric, and ``column`` plotted by depth; returns the models' first tables."""
        assert labels is not None
        ncls = int(getattr(getattr(data, "info", None), "num_classes", 0) or int(labels.max()) + 1)
        firsts: list[pd.DataFrame] = []
        seconds: list[pd.DataFrame] = []
        for m in spec_models:
            first, second = analyse(metric, feats[m], labels, model=m, num_classes=ncls, metric_name=job.metric_name)
            first.insert(1, "inputs", labels_in[m])
            firsts.append(first)
            seconds.append(second)
            metrics[f"{column}_last/{m}"] = float(first[column].iloc[-1])
        tables[names[0]] = pd.concat(firsts, ignore_index=True)
        tables[names[1]] = pd.concat(seconds, ignore_index=True)
        p = fig(names[0])
        if p is not None:
            figures[names[0]] = plot_lines(
                tables[names[0]], p, x="relative_depth", y=column, hue="model", ylabel=ylabel, title=title
            )
        return firsts

    if spec_models and "cross-class" in want:
        by_class(
            cross_class_specialization,
            "cross_class_specialization",
            ("cross_class", "cross_class_pairs"),
            "1 - mean CKA between classes",
            "cross-class specialization by layer (paper 1)",
        )
    if spec_models and "specialization" in want:
        sdfs = by_class(
            specialization,
            "specialization",
            ("specialization", "class_similarity"),
            "within - between class similarity",
            "specialization by layer",
        )
        for m, sdf in zip(spec_models, sdfs):
            lines.append(
                f"- `{m}` specialization: first layer {sdf['specialization'].iloc[0]:.3f}, "
                f"last layer {sdf['specialization'].iloc[-1]:.3f}"
            )

    n_ex = int(labels.shape[0]) if labels is not None else 0
    head = (
        f"Representation similarity with `{job.metric_name}` on {n_ex} {job.split} examples "
        f"({'streamed' if streaming else 'all features at once'}"
        f"{f', {job.passes} shuffled passes' if job.passes > 1 else ''}; pooling `{job.pooling}`; "
        f"{time.perf_counter() - started:.1f} s)."
    )
    return SimilarityOutput(tables, figures, "\n".join([head, ""] + lines), metrics, heatmaps)


def _stream(
    job: SimilarityJob,
    metric: Any,
    inputs: list[ModelInput],
    split: Any,
    batch_size: int,
    within: list[str],
    pairs: list[tuple[str, str]],
    overfit: list[str],
    spec_models: list[str],
    kw: Mapping[str, Any],
) -> tuple[dict[str, Heatmap], dict[str, Heatmap], dict[str, dict[str, Tensor]], Tensor]:
    """One pass through the data (``job.passes`` passes, each a seeded shuffle, when more than
    one) updating one accumulator per heatmap; every pass adds to the same accumulators, so the
    HSIC estimates are averaged over the minibatches of all passes, as in paper 1's code.

    Under torchrun (and when no analysis needs every feature), each process takes every
    ``world``-th minibatch and the accumulators' HSIC sums are all-reduced before computing,
    so the result equals one process's (up to float64 rounding)."""
    shard = _minibatch_shard(metric, split, batch_size, spec_models, kw)
    idx = {mi.name: i for i, mi in enumerate(inputs)}
    accs: dict[str, tuple[Any, str, str | None]] = {}
    names: dict[str, list[str]] = {}
    kept: dict[str, list[dict[str, Tensor]]] = {m: [] for m in spec_models}
    labels: list[Tensor] = []
    for pass_no, pass_split, pass_kw in _passes(split, job.passes, kw):
        if job.passes > 1:
            log.info("minibatch pass %d of %d (a seeded shuffle of the examples)", pass_no + 1, job.passes)
        for feats, y in iter_features(inputs, pass_split, batch_size=batch_size, shard=shard, **pass_kw):
            if not names:
                names = {mi.name: list(f) for mi, f in zip(inputs, feats)}
                accs = _accumulators(metric, names, within, pairs, overfit)
            if pass_no == 0:  # labels and the features the specialization analyses keep: every example once
                labels.append(y)
                for m in spec_models:
                    kept[m].append(feats[idx[m]])
            if y.shape[0] < 4:
                log.info("last batch of %d examples left out of the minibatch estimator (needs 4)", y.shape[0])
                continue
            _update(accs, feats, idx, names)
    if shard is not None:
        for acc, _, _ in accs.values():
            acc.sync()  # sum the HSIC accumulators of every process (same order of accs on every rank)
        from .. import distributed as rd

        labels = [y for part in rd.all_gather_object(labels) for y in part]  # counts only: order does not matter
    if not labels:
        raise SimilarityError("no examples to read features from (empty split or limit)")
    heatmaps: dict[str, Heatmap] = {}
    overfit_mats: dict[str, Heatmap] = {}
    hs = bool(getattr(metric, "higher_is_similar", True))
    mv = getattr(metric, "max_value", None)
    for key, (acc, a, b) in progress(list(accs.items()), desc="similarity"):
        vals = torch.as_tensor(acc.compute(), dtype=torch.float64).cpu().numpy()
        if key.startswith("overfit:"):
            pl = common_layers(names[a], names[b])  # type: ignore[index]
            overfit_mats[key[len("overfit:") :]] = Heatmap(
                vals, tuple(p for p, _ in pl), tuple(q for _, q in pl), a, b or a, job.metric_name, hs, mv
            )
        else:
            heatmaps[key] = Heatmap(
                vals, tuple(names[a]), tuple(names[b] if b else names[a]), a, b or a, job.metric_name, hs, mv
            )
    feats_out = {m: {k: torch.cat([p[k] for p in parts]) for k in parts[0]} for m, parts in kept.items() if parts}
    return heatmaps, overfit_mats, feats_out, torch.cat(labels)


def _accumulators(
    metric: Any,
    names: Mapping[str, list[str]],
    within: list[str],
    pairs: list[tuple[str, str]],
    overfit: list[str],
) -> dict[str, tuple[Any, str, str | None]]:
    """One accumulator per heatmap: ``key -> (accumulator, model a, model b or None)``."""
    accs: dict[str, tuple[Any, str, str | None]] = {}
    for m in within:
        accs[m] = (metric.accumulator(names[m], None), m, None)
    for a, b in pairs:
        accs[f"{a} vs {b}"] = (
            metric.accumulator([f"{a}:{k}" for k in names[a]], [f"{b}:{k}" for k in names[b]]),
            a,
            b,
        )
    for ck in overfit[1:]:
        ref = overfit[0]
        pl = common_layers(names[ref], names[ck])
        accs[f"overfit:{ck}"] = (
            metric.accumulator([f"{ref}:{p}" for p, _ in pl], [f"{ck}:{q}" for _, q in pl]),
            ref,
            ck,
        )
    return accs


def _update(
    accs: Mapping[str, tuple[Any, str, str | None]],
    feats: list[dict[str, Tensor]],
    idx: Mapping[str, int],
    names: Mapping[str, list[str]],
) -> None:
    """Add one minibatch's features to every accumulator."""
    for key, (acc, a, b) in accs.items():
        fa = feats[idx[a]]
        if key.startswith("overfit:"):
            pl = common_layers(names[a], names[b])  # type: ignore[index]
            acc.update([fa[p] for p, _ in pl], [feats[idx[b]][q] for _, q in pl])  # type: ignore[index]
        elif b is None:
            acc.update([fa[k] for k in names[a]])
        else:
            acc.update([fa[k] for k in names[a]], [feats[idx[b]][k] for k in names[b]])


def pass_orders(n: int, passes: int, seed: int) -> list[Tensor]:
    """The order of the ``n`` examples in each of ``passes`` passes: a shuffle per pass, drawn
    in turn from one generator seeded ``seed`` (the experiment's seed), so every process and
    every rerun deals the same minibatches."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g) for _ in range(passes)]


def _passes(split: Any, passes: int, kw: Mapping[str, Any]) -> Iterator[tuple[int, Any, dict[str, Any]]]:
    """``(pass number, split, feature options)`` of each pass. One pass reads the fixed subset in
    its own order (as before passes existed); several passes each read the same subset in the
    order of :func:`pass_orders` (paper 1's code shuffles the test set anew for each of its three
    passes, ``--dataset_passes 3``), and the HSIC estimates of every minibatch of every pass are
    averaged together."""
    if passes == 1:
        yield 0, split, dict(kw)
        return
    from ..data.core import TensorSplit, subset

    base = subset(split, kw.get("limit"), kw.get("seed", 0))
    rest = {**kw, "limit": None}  # the subset is taken once, so every pass reads the same examples
    for p, order in enumerate(pass_orders(len(base), passes, int(kw.get("seed", 0)))):
        part = base.subset(order) if isinstance(base, TensorSplit) else torch.utils.data.Subset(base, order.tolist())
        yield p, part, rest  # one reordered copy at a time


def _minibatch_shard(
    metric: Any, split: Any, batch_size: int, spec_models: list[str], kw: Mapping[str, Any]
) -> tuple[int, int] | None:
    """``(rank, world)`` when the minibatches can be dealt out over torchrun processes: a
    process group of 2+, accumulators that sync, no analysis that keeps every feature
    (specialization), and at least one batch per process. None otherwise (every process
    then reads every batch, as in one process)."""
    from .. import distributed as rd
    from ..data.core import subset

    if not rd.is_distributed() or spec_models or not hasattr(metric.accumulator(None, None), "sync"):
        return None
    n = len(subset(split, kw.get("limit"), kw.get("seed", 0)))
    usable = n // batch_size + (1 if n % batch_size >= 4 else 0)  # batches of < 4 examples are left out
    if usable < rd.world_size():  # every process must accumulate at least one batch
        return None
    return rd.rank(), rd.world_size()


__all__ = ["SimilarityJob", "SimilarityOutput", "pass_orders", "run_similarity"]
