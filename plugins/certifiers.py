"""Built-in certifiers (IBP, CROWN, CROWN-IBP, randomized smoothing) and the ``certify`` stage.

The certifiers are rtk's own sound bound propagation and Monte Carlo smoothing
(:mod:`rtk.certify`); this module only declares their options and the stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

import rtk

if TYPE_CHECKING:
    import pandas as pd

components = rtk.Components()


# ---------------------------------------------------------------------------- certifiers
class IBPOptions(rtk.Options):
    eps: rtk.Eps = Field(2 / 255, ge=0, le=1, description="L-inf radius (a stage's eps list overrides it)")
    batch_size: int = Field(256, ge=1, description="examples bounded at once")
    dtype: Literal["float32", "float64"] = Field("float32", description="arithmetic of the bound computation")


class CrownIBPOptions(IBPOptions):
    batch_size: int = Field(64, ge=1, description="examples bounded at once (memory grows linearly with it)")
    intersect_ibp: bool = Field(True, description="keep the tighter of the CROWN and IBP margin bounds")


class CrownOptions(CrownIBPOptions):
    spec_chunk: int = Field(
        256,
        ge=1,
        description="intermediate neurons bounded per backward pass; memory is about "
        "batch_size x 2 spec_chunk x (largest layer) numbers",
    )
    intersect_ibp: bool = Field(
        True,
        description="intersect every CROWN bound with the interval bound (tighter, "
        "and never looser than IBP); false gives textbook CROWN",
    )


class SmoothingOptions(rtk.Options):
    sigma: float = Field(0.25, gt=0, description="standard deviation of the Gaussian noise, in [0, 1] pixel units")
    n0: int = Field(100, ge=1, description="noise samples that select the top class")
    n: int = Field(1000, ge=1, description="noise samples that estimate its probability")
    alpha: float = Field(0.001, gt=0, lt=1, description="failure probability of the certificate")
    batch_size: int = Field(1000, ge=1, description="noisy copies per forward pass")
    seed: int = Field(0, description="seed of the noise")


def _bound_builder(method: str):
    def build(o):
        from rtk.certify import BoundCertifier

        return BoundCertifier(
            method,
            o.eps,
            batch_size=o.batch_size,
            dtype=o.dtype,
            spec_chunk=getattr(o, "spec_chunk", 256),
            intersect_ibp=getattr(o, "intersect_ibp", True),
        )

    return build


def _smoothing(o: SmoothingOptions):
    from rtk.certify import SmoothingCertifier

    return SmoothingCertifier(o.sigma, o.n0, o.n, o.alpha, batch_size=o.batch_size, seed=o.seed)


#: The built-in certifiers: name, options, build, summary.
_CERTIFIERS = (
    ("ibp", IBPOptions, _bound_builder("ibp"), "interval bound propagation, L-inf (Gowal et al. 2018)"),
    ("crown", CrownOptions, _bound_builder("crown"), "CROWN backward linear relaxation, L-inf (Zhang et al. 2018)"),
    (
        "crown-ibp",
        CrownIBPOptions,
        _bound_builder("crown-ibp"),
        "IBP intermediate bounds + CROWN margin bound, L-inf (Zhang et al. 2020)",
    ),
    ("smoothing", SmoothingOptions, _smoothing, "randomized smoothing, certified L2 radius (Cohen et al. 2019)"),
)

components.table(rtk.CertifierSpec, _CERTIFIERS)


# ---------------------------------------------------------------------------- the stage
class CertifyStageOptions(rtk.Options):
    models: list[str] = Field(min_length=1, description="models to certify (model or model@tag)")
    certifiers: list[rtk.CertifierRef] = Field(
        default_factory=lambda: [rtk.CertifierRef(name="ibp"), rtk.CertifierRef(name="crown")],
        description="certifiers, by name or as tables with options",
    )
    eps: list[rtk.Eps] = Field(
        default_factory=lambda: [2 / 255],
        min_length=1,
        description="radii: L-inf for bound certifiers, L2 for smoothing",
    )
    limit: int | None = Field(200, ge=1, description="certify a fixed subset of this many test examples")
    batch_size: int = Field(256, ge=1, description="examples handed to a certifier at once")
    radius_step: float = Field(0.05, gt=0, description="step of the radius grid of smoothing curves")


def _check(opts: CertifyStageOptions, planning: rtk.Planning):
    problems = []
    for i, m in enumerate(opts.models):
        problems += planning.check_model(m, f"models[{i}]")
    if any(e < 0 for e in opts.eps):
        problems.append(f"{planning.where}.eps: radii must be non-negative, got {list(opts.eps)}")
    return problems


@components.register(rtk.StageSpec, "certify", CertifyStageOptions, check=_check)
def _run(ctx: rtk.StageContext, opts: CertifyStageOptions) -> rtk.StageResult:
    """verified accuracy per model x certifier x eps, smoothing radius curves"""
    import pandas as pd

    from rtk.certify import certify_split, radius_curve, summarize
    from rtk.data import subset

    split = subset(ctx.data.test, opts.limit, ctx.experiment.seed)
    verified, curves, radii = [], [], []
    for name in opts.models:
        model = ctx.model(name).eval()
        for ref in opts.certifiers:
            cert = ref.spec.build(ref.opts)
            ctx.log.info("certifying %s with %s", name, ref.describe())
            rows = certify_split(cert, model, split, eps=opts.eps, batch_size=opts.batch_size, device=ctx.device)
            summary = summarize(rows)
            summary.insert(0, "model", name)
            summary.insert(1, "certifier", ref.describe())
            summary.insert(2, "norm", cert.norm)
            verified.append(summary)
            if cert.eps_independent and len(rows):
                per = rows.drop_duplicates("index")
                top = float(per["radius"].max())
                steps = int(top / opts.radius_step) + 2
                curve = radius_curve(rows, [round(i * opts.radius_step, 10) for i in range(steps)])
                curve.insert(0, "model", name)
                curve.insert(1, "certifier", ref.describe())
                curves.append(curve)
                r = per[["index", "label", "prediction", "radius", "abstain", "correct"]].copy()
                r.insert(0, "model", name)
                r.insert(1, "certifier", ref.describe())
                radii.append(r)
    tables = {"verified": pd.concat(verified, ignore_index=True)}
    figures = {}
    if curves:
        tables["radius_curve"] = pd.concat(curves, ignore_index=True)
        tables["radii"] = pd.concat(radii, ignore_index=True)
        figures["radius_curve"] = _plot_curves(ctx.figure_path("radius_curve"), tables["radii"])
    bound_rows = tables["verified"][tables["verified"]["norm"] != "L2"]
    if len(opts.eps) > 1 and len(bound_rows):
        figures["verified_vs_eps"] = _plot_eps(ctx.figure_path("verified_vs_eps"), bound_rows)
    best = tables["verified"].sort_values("verified_accuracy", ascending=False).iloc[0]
    summary = (
        f"Certified {len(opts.models)} model(s) with {len(opts.certifiers)} certifier(s) on {len(split)} test "
        f"examples. Best verified accuracy: {best['verified_accuracy']:.3f} ({best['model']}, "
        f"{best['certifier']}, {best['norm']} eps {best['eps']:.4g})."
    )
    metrics = {
        f"{r.model}/{r.certifier}/eps={r.eps:.4g}": float(r.verified_accuracy) for r in tables["verified"].itertuples()
    }
    return rtk.StageResult(tables=tables, figures=figures, summary=summary, metrics=metrics)


@contextlib.contextmanager
def _figure(path, xlabel: str, ylabel: str) -> Iterator[Any]:
    """Axes to draw labelled lines on; on exit they get their labels, a [0, 1] y range, a grid and a
    legend, and the figure is saved to ``path`` (Agg backend) and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _plot_curves(path, radii: pd.DataFrame):
    """The exact certified-accuracy curve of each model x certifier: the share of examples
    certified correct with a radius of at least r."""
    with _figure(path, "L2 radius", "certified accuracy") as ax:
        for (model, cert), g in radii.groupby(["model", "certifier"], sort=False):
            r = sorted(g.loc[g["correct"] & ~g["abstain"], "radius"].tolist())
            n = max(len(g), 1)
            ax.step([0.0, *r], [(len(r) - i) / n for i in range(len(r) + 1)], where="post", label=f"{model} / {cert}")
    return path


def _plot_eps(path, df: pd.DataFrame):
    with _figure(path, "L-inf eps", "verified accuracy") as ax:
        for (model, cert), g in df.groupby(["model", "certifier"], sort=False):
            ax.plot(g["eps"], g["verified_accuracy"], marker="o", label=f"{model} / {cert}")
    return path


rtk_certifiers = components.hookimpl(rtk.CertifierSpec)
rtk_stages = components.hookimpl(rtk.StageSpec)
