"""The evaluation engine: clean and robust accuracy of one model under an attack suite.

``evaluate(model, split, units, ...)`` streams the examples in batches (only one batch of
inputs is in memory at a time), runs every attack unit on the examples the model classifies
correctly, and writes one record per example and unit as it goes (:mod:`.records`). What a
store already holds is not recomputed, so an interrupted evaluation resumes, and shards of
the examples evaluated elsewhere are gathered. Sanity checks (:mod:`.checks`) run around
the evaluation; their outcomes are part of the result.

Which examples each attack sees:

- examples the model already misclassifies are never attacked (they count as broken for
  every attack; their adversarial input is the clean input);
- with ``early_exit``, an attack also skips examples an earlier attack of the suite already
  broke within its budget. The worst case is the same; the stand-alone accuracy of the
  later attacks is then not reported (see :mod:`.summary`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.core import TensorSplit
from ..errors import DataError, RtkError
from ..options import NORMS
from ..runtime import progress
from . import checks as C
from .adapters import ModelView, Normalization, model_view, seeded
from .records import (
    CLEAN,
    NONFINITE,
    OUT_OF_RANGE,
    OVER_BUDGET,
    RecordStore,
    attack_chunk,
    clean_chunk,
    model_fingerprint,
)
from .summary import Outcomes, accuracy_table, headline_threat, outcomes, per_example_table, worst_case_table
from .units import AttackUnit, EpsList, attack_eps, attack_norm, delta_norms, fmt_eps, within
from .units import threats as find_threats

log = logging.getLogger(__name__)

SaveMode = Literal["none", "checks", "all"]


@dataclass
class EvaluationResult:
    """Everything one model's evaluation produced."""

    name: str
    fingerprint: str
    units: list[AttackUnit]
    threats: list[tuple[str, float | None]]
    headline: tuple[str, float | None]
    outcomes: Outcomes
    records: pd.DataFrame
    checks: list[C.CheckResult] = field(default_factory=list)
    work: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tol: float = 1e-5
    resumed: int = 0
    #: per unit key (and "clean"): work, seconds, chunks, examples, attacked, summed over the records
    unit_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float(self.outcomes.clean_correct.mean())

    @property
    def headline_accuracy(self) -> float:
        norm, eps = self.headline
        return float(self.outcomes.robust_at(norm, eps, self.tol).mean())

    def worst_case_accuracy(self, norm: str, eps: float | None) -> float:
        return float(self.outcomes.robust_at(norm, eps, self.tol).mean())

    @property
    def accuracy(self) -> pd.DataFrame:
        return accuracy_table(self.outcomes, self.threats, self.tol)

    @property
    def worst_case(self) -> pd.DataFrame:
        return worst_case_table(self.outcomes, self.threats, self.tol)

    @property
    def per_example(self) -> pd.DataFrame:
        return per_example_table(self.outcomes)

    @property
    def checks_table(self) -> pd.DataFrame:
        cols = ["check", "group", "status", "value", "threshold", "n", "detail", "advice"]
        rows = [{"check": c.name, **{k: v for k, v in c.to_dict().items() if k in cols}} for c in self.checks]
        return pd.DataFrame(rows, columns=cols)

    @property
    def failed_checks(self) -> list[C.CheckResult]:
        return [c for c in self.checks if c.passed is False]

    @property
    def checks_overhead(self) -> float:
        main = self.work.get("evaluation", 0)
        return self.work.get("checks", 0) / main if main else float("nan")

    def summary(self) -> str:
        """A short markdown paragraph: headline, clean accuracy, checks."""
        norm, eps = self.headline
        where = "any budget" if norm == "none" else f"{norm} eps={fmt_eps(eps)}"
        text = (
            f"`{self.name}`: clean accuracy {self.clean_accuracy:.4f}; worst case over the suite "
            f"({len(self.units)} attack run(s)) at {where}: **{self.headline_accuracy:.4f}** "
            f"on {len(self.outcomes.indices)} examples."
        )
        if self.checks:
            failed = self.failed_checks
            passed = sum(c.passed is True for c in self.checks)
            skipped = sum(c.passed is None for c in self.checks)
            text += f" Sanity checks: {passed} passed, {len(failed)} failed, {skipped} skipped"
            text += ": " + "; ".join(f"**{c.name}** ({c.detail})" for c in failed) + "." if failed else "."
        return text


# ---------------------------------------------------------------------------- helpers
def load_batch(split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples ``idx`` of a split, as ``(x, y)`` tensors."""
    if isinstance(split, TensorSplit):
        return split.x[idx], split.y[idx]
    items = [split[int(i)] for i in idx]
    x = torch.stack([torch.as_tensor(a) for a, _ in items])
    y = torch.as_tensor([int(b) for _, b in items], dtype=torch.long)
    return x, y


def eval_indices(n: int, limit: int | None = None, seed: int = 0) -> torch.Tensor:
    """The dataset indices an evaluation covers: all, or the same fixed random draw of
    ``limit`` examples as :func:`rtk.data.subset` (sorted)."""
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    if limit is not None and limit > n:
        log.warning("limit = %d is larger than the %d examples of the split: all %d are used", limit, n, n)
    if limit is None or limit >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values


def shard_indices(indices: Sequence[int] | torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """The examples of shard ``rank`` of ``world``: whole batches ``rank, rank + world, ...``
    of ``indices`` cut into ``batch_size`` batches.

    Every batch is then the same as in a single-process evaluation with that batch size, so
    attacks with random starts draw the same noise and the gathered records equal a
    single-process run exactly. (Any split by index can be gathered; with other splits,
    random starts differ per example and results agree only statistically.)
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    order = torch.as_tensor(indices, dtype=torch.long).flatten()
    batches_ = list(order.split(batch_size))
    mine = batches_[rank::world]
    return torch.cat(mine) if mine else order[:0]


def _check_indices(order: torch.Tensor, n: int) -> None:
    if order.numel() == 0:
        raise DataError("nothing to evaluate: the list of example indices is empty")
    if int(order.min()) < 0 or int(order.max()) >= n:
        raise DataError(f"example indices must lie in [0, {n}), got [{int(order.min())}, {int(order.max())}]")
    if order.unique().numel() != order.numel():
        raise DataError("example indices contain duplicates")


def _invalid_flags(x_adv: torch.Tensor, norms: dict[str, torch.Tensor], unit: AttackUnit, tol: float) -> torch.Tensor:
    flat = x_adv.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)  # NaN propagates through amin/amax, so lo and hi see every non-finite value
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    flags = (~finite).long() * NONFINITE
    flags |= (~((lo >= -1e-6) & (hi <= 1 + 1e-6)) & finite).long() * OUT_OF_RANGE
    if unit.budgeted:
        flags |= (~within(norms[unit.norm], unit.eps, tol)).long() * OVER_BUDGET
    return flags


class _Evidence:
    """Which examples earlier attacks broke, and how far, by dataset index (early exit)."""

    def __init__(self, n: int, units: Sequence[AttackUnit]) -> None:
        self.broken = {u.key: torch.zeros(n, dtype=torch.bool) for u in units}
        self.norm = {u.key: {k: torch.full((n,), float("inf")) for k in NORMS} for u in units}

    def load(self, o_records: pd.DataFrame, units: Sequence[AttackUnit], clean_correct: torch.Tensor) -> None:
        for u in units:
            r = o_records[o_records.unit == u.key]
            if r.empty:
                continue
            idx = torch.tensor(r["index"].to_numpy())
            br = (
                torch.tensor(r["attacked"].to_numpy(dtype=bool))
                & torch.tensor(r["invalid"].to_numpy() == 0)
                & ~torch.tensor(r["correct"].to_numpy(dtype=bool))
                & clean_correct[idx]
            )
            self.broken[u.key][idx] = br
            for k, c in ((n, n.lower()) for n in NORMS):
                self.norm[u.key][k][idx] = torch.tensor(np.nan_to_num(r[c].to_numpy(), nan=np.inf), dtype=torch.float32)

    def update(self, unit: AttackUnit, idx: torch.Tensor, broken: torch.Tensor, norms: dict[str, torch.Tensor]) -> None:
        self.broken[unit.key][idx] = broken.cpu()
        for k in NORMS:
            self.norm[unit.key][k][idx] = norms[k].float().cpu()

    def already_broken(
        self, unit: AttackUnit, earlier: Sequence[AttackUnit], idx: torch.Tensor, tol: float
    ) -> torch.Tensor:
        out = torch.zeros(len(idx), dtype=torch.bool)
        for v in earlier:
            b = self.broken[v.key][idx]
            if unit.budgeted:
                b = b & within(self.norm[v.key][unit.norm][idx], unit.eps, tol)
            out |= b
        return out


# ---------------------------------------------------------------------------- the engine
def evaluate(
    model: nn.Module,
    split: Any,
    units: Sequence[AttackUnit],
    *,
    indices: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    store: RecordStore | None = None,
    name: str = "model",
    eps: EpsList = None,
    headline_eps: float | None = None,
    early_exit: bool = False,
    checks: bool | C.CheckSettings = True,
    strict: bool = False,
    save_adversarial: SaveMode = "checks",
    output: str = "logits",
    normalize: Normalization | dict | None = None,
    tol: float | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Evaluate ``model`` on the examples ``indices`` of ``split`` under the attack ``units``.

    Returns an :class:`EvaluationResult`. With ``strict``, a failed sanity check raises
    :class:`~rtk.evaluation.checks.SanityCheckError` (its ``result`` attribute holds the
    result); otherwise it warns with :class:`~rtk.evaluation.checks.SanityCheckWarning`.
    """
    units = list(units)
    settings = (C.CheckSettings() if checks is True else checks) if checks else None
    tol = tol if tol is not None else (settings.bounds_tol if settings else 1e-5)
    store = store if store is not None else RecordStore(None)
    n_split = len(split)
    order = torch.as_tensor(indices if indices is not None else range(n_split), dtype=torch.long).flatten()
    _check_indices(order, n_split)
    view = model_view(model, output, normalize)
    device = torch.device(device) if device is not None else view.device
    threats_ = find_threats(units, eps)
    headline = headline_threat(units, threats_, headline_eps)
    if headline[0] != "none" and headline not in threats_:
        threats_ = sorted([*threats_, headline], key=lambda t: (NORMS.index(t[0]), t[1]))

    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()} if settings else None
    was_training = model.training
    view.eval()
    # records in memory only live for this call: no need to hash the weights
    fp = model_fingerprint(model) if (store.root is not None or store.extra) else "in-memory"
    ctx = _CheckContext(settings, view, device, order, split) if settings else None

    t_main = time.perf_counter()
    try:
        resumed = _run(
            view,
            split,
            units,
            order,
            fp,
            store,
            batch_size,
            device,
            early_exit,
            tol,
            save_adversarial,
            ctx,
            name,
            n_split,
        )
    finally:
        store.close()  # everything written so far stays readable for a resumed run
    seconds = {"evaluation": time.perf_counter() - t_main}

    keys = {u.key for u in units} | {CLEAN}
    table = store.table(fp)
    keep = table.unit.isin(keys).to_numpy() & np.isin(table["index"].to_numpy(), order.numpy())
    if not keep.all():
        table = table[keep].reset_index(drop=True)
    out = outcomes(table, units, order.tolist())
    work = {"evaluation": int(sum(st["work"] for (m, k), st in store.stats.items() if m == fp and k in keys))}
    unit_stats = {k: dict(st) for (m, k), st in store.stats.items() if m == fp and k in keys}
    seconds["recorded"] = float(sum(st["seconds"] for st in unit_stats.values()))
    result = EvaluationResult(
        name,
        fp,
        units,
        threats_,
        headline,
        out,
        table,
        work=work,
        seconds=seconds,
        tol=tol,
        resumed=resumed,
        unit_stats=unit_stats,
    )
    if ctx is not None:
        t0 = time.perf_counter()
        result.checks = ctx.after(model, snapshot, result, store, seed)
        seconds["checks"] = time.perf_counter() - t0
        work["checks"] = ctx.work
    if was_training:
        log.info("model %s was in training mode; evaluated in eval mode and left in eval mode", name)
    for c in result.failed_checks:
        msg = f"evaluation of {name!r}: sanity check {c.name} failed: {c.detail}. {c.advice}"
        log.info(msg)
        if not strict:
            warnings.warn(msg, C.SanityCheckWarning, stacklevel=2)
    if strict and result.failed_checks:
        err = C.SanityCheckError(
            f"evaluation of {name!r}: {len(result.failed_checks)} sanity check(s) failed (strict): "
            + "; ".join(f"{c.name}: {c.detail}" for c in result.failed_checks)
        )
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def _run(
    view: ModelView,
    split: Any,
    units: list[AttackUnit],
    order: torch.Tensor,
    fp: str,
    store: RecordStore,
    batch_size: int,
    device: torch.device,
    early_exit: bool,
    tol: float,
    save_adversarial: SaveMode,
    ctx: _CheckContext | None,
    name: str,
    n_split: int,
) -> int:
    """The streaming loop. Returns how many (example, unit) results came from the store."""
    keys = {u.key for u in units} | {CLEAN}
    prior = store.table(fp)
    prior = prior[prior.unit.isin(keys)]
    done = {k: torch.zeros(n_split, dtype=torch.bool) for k in keys}
    clean_correct = torch.zeros(n_split, dtype=torch.bool)
    resumed = 0
    if len(prior):
        for k, g in prior.groupby("unit", observed=True):
            done[str(k)][torch.tensor(g["index"].to_numpy())] = True
        c = prior[prior.unit == CLEAN]
        clean_correct[torch.tensor(c["index"].to_numpy())] = torch.tensor(c["correct"].to_numpy(dtype=bool))
        resumed = int(sum(int(d[order].sum()) for d in done.values()))
    if resumed:
        log.info("%s: %d (example, attack) results already recorded; resuming", name, resumed)
    evidence = _Evidence(n_split, units) if early_exit else None
    if evidence is not None:
        evidence.load(prior, units, clean_correct)
    save_all = save_adversarial == "all"
    save_set = None  # with "checks": the examples of the check subset, re-scored after the evaluation
    if save_adversarial == "checks" and ctx is not None:
        save_set = torch.zeros(n_split, dtype=torch.bool)
        save_set[ctx.subset] = True
    fns: dict[str, Any] = {}
    n_batches = math.ceil(len(order) / batch_size)
    view.counting = True
    try:
        for start in progress(range(0, len(order), batch_size), total=n_batches, desc=f"evaluate {name}"):
            idx = order[start : start + batch_size]
            if resumed:
                need_clean = not bool(done[CLEAN][idx].all())
                pending = [u for u in units if not bool(done[u.key][idx].all())]
                if not need_clean and not pending:
                    continue
            else:  # nothing recorded before: everything is to do
                need_clean, pending = True, units
            x, y = load_batch(split, idx)
            x, y = x.to(device), y.to(device)
            if ctx is not None:
                ctx.observe_inputs(x)
            if need_clean:
                w0, t0 = view.work, time.perf_counter()
                with torch.no_grad():
                    pred = view(x).argmax(1)
                store.append(clean_chunk(fp, idx, y, pred, work=view.work - w0, seconds=time.perf_counter() - t0))
                clean_correct[idx] = (pred == y).cpu()
                done[CLEAN][idx] = True
            cc = clean_correct[idx]
            for k, u in enumerate(units):
                if u not in pending:
                    continue
                mask = cc.clone()
                if evidence is not None:
                    mask &= ~evidence.already_broken(u, units[:k], idx, tol)
                if u.key not in fns:
                    fns[u.key] = u.build(view)
                w0, t0 = view.work, time.perf_counter()
                x_adv = x.clone()
                sel = mask.nonzero().squeeze(1).to(device)
                if sel.numel():
                    xa = fns[u.key](x[sel], y[sel])
                    if not isinstance(xa, torch.Tensor) or xa.shape != x[sel].shape:
                        got = list(xa.shape) if isinstance(xa, torch.Tensor) else type(xa).__name__
                        raise RtkError(
                            f"attack {u.label!r} returned {got}, expected a tensor of shape {list(x[sel].shape)}"
                        )
                    x_adv[sel] = xa.detach().to(x_adv.dtype)
                    if ctx is not None:
                        ctx.observe_modes(view)
                with torch.no_grad():
                    adv_pred = view(x_adv).argmax(1)
                norms = delta_norms(x, x_adv)
                attacked = mask.to(device)
                flags = _invalid_flags(x_adv, norms, u, tol) * attacked.long()
                store.append(
                    attack_chunk(
                        fp, u, idx, y, adv_pred, attacked, flags, norms, view.work - w0, time.perf_counter() - t0
                    )
                )
                done[u.key][idx] = True
                if evidence is not None:
                    broken = attacked & (flags == 0) & (adv_pred != y) & cc.to(device)
                    evidence.update(u, idx, broken, norms)
                if save_all or save_set is not None:
                    keep = mask if save_all else (mask & save_set[idx])
                    ks = keep.nonzero().squeeze(1)
                    store.save_adversarial(fp, u.key, idx[ks], x_adv[ks.to(device)])
    finally:
        view.counting = False
    return resumed


# ---------------------------------------------------------------------------- the checks
class _CheckContext:
    """Runs the sanity checks after one evaluation and collects their results.

    Their cost is counted in work (examples x passes through the model view) and sized from
    the evaluation's own counted work, never from a clock, so one seed gives one result.
    """

    def __init__(
        self, settings: C.CheckSettings, view: ModelView, device: torch.device, order: torch.Tensor, split: Any
    ) -> None:
        self.s = settings
        self.view = view
        self.device = device
        self.subset = order[: settings.examples]  # the examples whose adversarial inputs are kept for re-scoring
        x, y = load_batch(split, self.subset)
        self.x, self.y = x.to(device), y.to(device)
        self.lo, self.hi, self.seen = float("inf"), float("-inf"), 0
        self.observe_inputs(self.x)
        self.training_after: set[str] = set()
        self.work = 0
        self.num_classes = 0

    # observation during the loop ----------------------------------------------------
    def observe_inputs(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.seen += len(x)

    def observe_modes(self, view: nn.Module) -> None:
        for n, m in view.named_modules():
            if m.training:
                self.training_after.add(n or "(root)")

    def _counted(self, name: str, fn: Callable[[], C.CheckResult]) -> C.CheckResult:
        w0, was = self.view.work, self.view.counting
        self.view.counting = True
        try:
            return C.guarded(name, fn)
        finally:
            self.work += self.view.work - w0
            self.view.counting = was

    # sizing ---------------------------------------------------------------------------
    def _plan(self, r: EvaluationResult) -> _CheckPlan:
        """How many examples the checks use, and the work they may spend (deterministic)."""
        s, o = self.s, r.outcomes
        norm, eps = r.headline
        budgeted = norm != "none" and eps is not None
        star = C.first_with_effort(r.units, norm, eps) if budgeted else None
        st = r.unit_stats.get(star.key, {}) if star is not None else {}
        star_per_ex = st.get("work", 0) / max(st.get("attacked", 1), 1)
        suite_bb = [
            u
            for u in o.units
            if u.unit.black_box and u.unit.budgeted and u.unit.norm == norm and abs(u.unit.eps - eps) < 1e-12
        ]
        # per example: logits 1, deterministic 2, batch independence 2, zero gradients 3, re-scoring 1 per
        # unit, noise draws, the unbounded PGD (3 per step + 1), doubling the effort, a black-box attack
        base = 8 + len(r.units) + s.noise_draws + 3 * s.unbounded_steps + 1
        if budgeted and not suite_bb:
            base += s.black_box_queries + 1
        per_ex = base + 2 * star_per_ex
        allowed = s.budget * r.work.get("evaluation", 0)
        n = int(min(s.examples, len(self.subset), max(s.min_examples, math.floor(allowed / per_ex))))
        return _CheckPlan(n, max(allowed, n * base), star, st, suite_bb)

    # the checks -----------------------------------------------------------------------
    def after(
        self, model: nn.Module, snapshot: dict[str, torch.Tensor], r: EvaluationResult, store: RecordStore, seed: int
    ) -> list[C.CheckResult]:
        plan = self._plan(r)
        v, s = self.view, self.s
        x, y = self.x[: plan.n], self.y[: plan.n]

        def logits() -> C.CheckResult:
            with torch.no_grad():
                out = v(x)
            self.num_classes = int(out.shape[1])
            return C.check_logits(out)

        o = r.outcomes
        pre = {
            "outputs_are_logits": self._counted("outputs_are_logits", logits),
            "deterministic": self._counted("deterministic", lambda: C.check_deterministic(v, x, s.rtol)),
            "batch_independent": self._counted("batch_independent", lambda: C.check_batch_independent(v, x, s.rtol)),
            "zero_gradients": self._counted("zero_gradients", lambda: C.check_zero_gradients(v, x, y, s.zero_grad_max)),
        }
        results = [
            C.check_eval_mode(self.view, sorted(self.training_after)),
            C.check_state_unchanged(model, snapshot),
            C.check_inputs(self.lo, self.hi, self.seen),
            pre["outputs_are_logits"],
            pre["deterministic"],
            pre["batch_independent"],
            self._bounds(o, r.tol),
            C.check_robust_le_clean(
                [
                    (u.unit.label + f" @ {fmt_eps(u.unit.eps)}", int(u.correct.sum()), int(o.clean_correct.sum()))
                    for u in o.units
                ],
                len(o.indices),
            ),
            self._counted("rescore_reproduces", lambda: self._rescore(o, r, store, plan.n)),
            pre["zero_gradients"],
        ]
        results += self._masking(r, seed, plan)
        return results

    def _bounds(self, o: Outcomes, tol: float) -> C.CheckResult:
        bad: dict[str, dict[str, Any]] = {}
        for u in o.units:
            inv = u.invalid[u.attacked]
            if not (inv != 0).any():
                continue
            reasons = set()
            if (inv & NONFINITE).any():
                reasons.add("not finite")
            if (inv & OUT_OF_RANGE).any():
                reasons.add("outside [0, 1]")
            excess = 0.0
            if (inv & OVER_BUDGET).any():
                reasons.add("over budget")
                d = u.norms[u.unit.norm][u.attacked][(inv & OVER_BUDGET) != 0]
                d = d[np.isfinite(d)]
                excess = float(d.max() - u.unit.eps) if len(d) else 0.0
            label = f"{u.unit.label} @ {fmt_eps(u.unit.eps)}"
            bad[label] = {"count": int((inv != 0).sum()), "reasons": reasons, "excess": excess}
        return C.check_bounds(bad, int(sum(u.attacked.sum() for u in o.units)))

    def _rescore(self, o: Outcomes, r: EvaluationResult, store: RecordStore, n: int) -> C.CheckResult:
        pos = {int(i): p for p, i in enumerate(o.indices)}
        total = flips = soft = 0
        for u in o.units:
            saved = store.load_adversarial(r.fingerprint, u.unit.key)
            if saved is None:
                continue
            index, x_adv = saved
            keep = [k for k, i in enumerate(index.tolist()) if i in pos][:n]
            if not keep:
                continue
            index, x_adv = index[keep], x_adv[keep].to(self.device)
            recorded = torch.as_tensor([int(u.pred[pos[int(i)]]) for i in index], device=self.device)
            with torch.no_grad():
                out = self.view(x_adv)
            new = out.argmax(1)
            diff = new != recorded
            margin = out.gather(1, new[:, None]).squeeze(1) - out.gather(1, recorded[:, None]).squeeze(1)
            hard = diff & (margin > self.s.rtol * float(out.abs().max().clamp_min(1.0)))
            total += len(index)
            flips += int(hard.sum())
            soft += int((diff & ~hard).sum())
        if total == 0:
            return C.CheckResult(
                "rescore_reproduces",
                None,
                detail='no adversarial examples were saved (save_adversarial = "none", or no attack ran)',
            )
        return C.CheckResult(
            "rescore_reproduces",
            flips == 0,
            float(flips),
            "0 predictions change",
            total,
            f"{flips} of {total} saved adversarial examples are classified differently when re-scored"
            + (f" ({soft} more flip at a near-tie, not counted)" if soft else ""),
        )

    def _masking(self, r: EvaluationResult, seed: int, plan: _CheckPlan) -> list[C.CheckResult]:
        o, s, v = r.outcomes, self.s, self.view
        norm, eps = r.headline
        names = ["more_steps", "unbounded_eps", "random_noise", "black_box"]
        cc = o.clean_correct[: len(self.subset)]
        S = np.nonzero(cc)[0]
        if len(S) == 0:
            return [C.CheckResult(k, None, detail="no correctly classified example in the check subset") for k in names]
        x, y = self.x, self.y
        tol = r.tol
        budgeted = norm != "none" and eps is not None
        u_star, st_star = plan.star, plan.star_stats
        Sn = S[: plan.n]
        Pn = torch.as_tensor(Sn, device=self.device)
        if self.num_classes == 0:
            with torch.no_grad():
                self.num_classes = int(v(x[:1]).shape[1])

        def more_steps() -> C.CheckResult:
            if not budgeted:
                return C.CheckResult("more_steps", None, detail="no attack with a budget in the suite")
            if u_star is None:
                return C.CheckResult(
                    "more_steps",
                    None,
                    detail=f"no attack at {norm} {fmt_eps(eps)} names an effort option (steps, queries) in its record",
                )
            uo = next(u for u in o.units if u.unit.key == u_star.key)
            P = Sn[uo.attacked[Sn]]
            if len(P) == 0:
                return C.CheckResult("more_steps", None, detail=f"{u_star.label} attacked no example of the subset")
            est = math.ceil(2 * st_star.get("work", 0) / max(st_star.get("attacked", 1), 1) * len(P))
            if self.work + est > plan.work:
                return C.CheckResult(
                    "more_steps",
                    None,
                    detail=(
                        f"skipped to stay within the checks' work budget: it would take about {est} example-passes, "
                        f"{max(int(plan.work) - self.work, 0)} of the {int(plan.work)} allowed ({s.budget:.0%} of the "
                        f"evaluation's {r.work.get('evaluation', 0)}) are left; raise check_settings.budget to run it"
                    ),
                )
            effort = u_star.effort
            assert effort is not None
            k = int(u_star.option(effort))
            twice = u_star.with_options(**{effort: 2 * k})
            Pt = torch.as_tensor(P, device=self.device)
            xa = twice.build(v)(x[Pt], y[Pt])
            broken2 = C.valid_broken(v, x[Pt], xa, y[Pt], norm, eps, tol).cpu().numpy()
            robust1 = int((~uo.broken[P]).sum())
            robust2 = int((~broken2).sum())
            return C.within_allowed(
                "more_steps",
                robust1 - robust2,
                len(P),
                s.tolerance,
                f"{u_star.label}: {effort} = {k} leaves {robust1}/{len(P)} robust, {effort} = {2 * k} "
                f"leaves {robust2}/{len(P)}",
                threshold="accuracy drop <= {lim}/{n}",
            )

        def unbounded() -> C.CheckResult:
            with seeded(seed, self.device):
                xa = C.unbounded_pgd(v, x[Pn], y[Pn], s.unbounded_steps)
            with torch.no_grad():
                correct = int((v(xa).argmax(1) == y[Pn]).sum())
            chance = 1.0 / max(self.num_classes, 1)
            acc = correct / len(Pn)
            lim = chance + s.chance_margin
            return C.CheckResult(
                "unbounded_eps",
                acc <= lim + 1e-12,
                acc,
                f"accuracy <= {lim:.3g} (chance + margin)",
                len(Pn),
                f"PGD over the whole [0, 1] box leaves {correct}/{len(Pn)} correct (chance {chance:.3g})",
            )

        def noise() -> C.CheckResult:
            if not budgeted:
                return C.CheckResult("random_noise", None, detail="no attack with a budget in the suite")
            nb = C.noise_broken(v, x[Pn], y[Pn], norm, eps, s.noise_draws, seed).cpu().numpy()
            ab = o.broken_at(norm, eps, tol)[Sn]
            beats = int((nb & ~ab).sum())
            return C.within_allowed(
                "random_noise",
                beats,
                len(Sn),
                s.tolerance,
                f"random noise ({s.noise_draws} draws at {norm} {fmt_eps(eps)}) breaks {beats} "
                f"example(s) the attacks did not",
            )

        def black_box() -> C.CheckResult:
            if not budgeted:
                return C.CheckResult("black_box", None, detail="no attack with a budget in the suite")
            white_box = [u for u in o.units if not u.unit.black_box]
            if not white_box:
                return C.CheckResult("black_box", None, detail="no white-box attack to compare with")
            white = o.broken_at(norm, eps, tol, exclude=tuple(u.unit.key for u in o.units if u.unit.black_box))
            if plan.suite_black_box:
                bb = np.zeros(len(o.indices), dtype=bool)
                for u in plan.suite_black_box:
                    bb |= u.evidence(norm, eps, tol)
                P = S
                extra = int((bb[P] & ~white[P]).sum())
                how = ", ".join(sorted({u.unit.label for u in plan.suite_black_box})) + " in the suite"
            else:
                ref = reference_black_box(norm, eps, s.black_box_queries, seed)
                if ref is None:
                    return C.CheckResult(
                        "black_box", None, detail=f"no registered black-box attack supports {norm} at this budget"
                    )
                P = Sn
                todo = P[~white[P]]
                extra = 0
                if len(todo):
                    Tt = torch.as_tensor(todo, device=self.device)
                    xa = ref.build(v)(x[Tt], y[Tt])
                    extra = int(C.valid_broken(v, x[Tt], xa, y[Tt], norm, eps, tol).sum())
                how = f"{ref.label} with {ref.effort} = {s.black_box_queries}"
            return C.within_allowed(
                "black_box",
                extra,
                len(P),
                s.tolerance,
                f"{how} breaks {extra} example(s) the white-box attacks did not",
            )

        done: dict[str, C.CheckResult] = {}
        for name_, fn in (
            ("random_noise", noise),
            ("unbounded_eps", unbounded),
            ("black_box", black_box),
            ("more_steps", more_steps),
        ):  # cheapest first; more_steps takes what is left of the budget
            done[name_] = self._counted(name_, fn)
        return [done[k] for k in names]


@dataclass(frozen=True)
class _CheckPlan:
    n: int  # examples the checks use
    work: float  # work they may spend (at least what n examples of the fixed checks take)
    star: AttackUnit | None  # the unit more_steps doubles
    star_stats: dict[str, float]
    suite_black_box: list[Any]  # UnitOutcome of the suite's black-box units at the headline threat


def reference_black_box(norm: str, eps: float, effort: int, seed: int) -> AttackUnit | None:
    """The black-box attack the ``black_box`` check runs when the suite has none: the first
    registered attack whose record says ``black_box`` and names an ``effort`` option, and
    whose options accept ``norm`` and ``eps`` (at ``effort`` and ``seed``)."""
    from ..options import validate_options
    from ..registry import default_registry

    for spec in default_registry().specs("attack"):
        name = getattr(spec, "effort", None)
        if not getattr(spec, "black_box", False) or name is None:
            continue
        fields = spec.options.model_fields
        data: dict[str, Any] = {"eps": eps, name: effort}
        if "norm" in fields:
            data["norm"] = norm
        if "seed" in fields:
            data["seed"] = seed
        try:
            opts = validate_options(spec.options, data, where=f"attack {spec.name}")
        except RtkError:
            continue
        unit = AttackUnit(spec.name, spec.name, attack_norm(spec, opts), attack_eps(opts, norm), spec, opts)
        if unit.norm == norm and unit.eps is not None and abs(unit.eps - eps) < 1e-12:
            return unit
    return None


__all__ = ["EvaluationResult", "eval_indices", "evaluate", "load_batch", "reference_black_box", "shard_indices"]
