"""Verified robustness: sound bound propagation (IBP, CROWN, CROWN-IBP), randomized
smoothing, and certified training objectives.

The certifier protocol (what a :class:`rtk.CertifierSpec`'s ``build(options)`` returns)::

    certifier.name: str
    certifier.norm: "Linf" | "L2"
    certifier.eps_independent: bool      # True: one call certifies a radius for every eps
    certifier.certify(model, x, y, *, eps=None) -> list[CertificationResult]

Verified robust accuracy of a model over a split::

    from rtk.certify import BoundCertifier, verified_accuracy
    acc = verified_accuracy(BoundCertifier("crown", eps=0.1), model, data.test, limit=200)

Bounds directly: :func:`output_bounds`, :func:`margin_lower_bounds`, :func:`spec_bounds`.
See docs/certification.md.
"""

from .attack import logit_extremes, margin_pgd
from .bounds import (
    METHODS,
    SpecBounds,
    concretize,
    linf_box,
    margin_lower_bounds,
    margin_spec,
    output_bounds,
    spec_bounds,
)
from .core import (
    BoundCertifier,
    CertificationResult,
    Certifier,
    certify_split,
    eval_mode,
    radius_curve,
    summarize,
    verified_accuracy,
)
from .graph import BoundGraph, bound_graph, check_graph
from .ops import SUPPORTED, UnsupportedLayerError
from .smoothing import SmoothingCertifier, clopper_pearson_lower, clopper_pearson_lower_bisect
from .training import CertifiedObjective, GaussianNoiseObjective, Ramp

__all__ = [
    "METHODS",
    "SUPPORTED",
    "BoundCertifier",
    "BoundGraph",
    "CertificationResult",
    "CertifiedObjective",
    "Certifier",
    "GaussianNoiseObjective",
    "Ramp",
    "SmoothingCertifier",
    "SpecBounds",
    "UnsupportedLayerError",
    "bound_graph",
    "certify_split",
    "check_graph",
    "clopper_pearson_lower",
    "clopper_pearson_lower_bisect",
    "concretize",
    "eval_mode",
    "linf_box",
    "logit_extremes",
    "margin_lower_bounds",
    "margin_pgd",
    "margin_spec",
    "output_bounds",
    "radius_curve",
    "spec_bounds",
    "summarize",
    "verified_accuracy",
]
