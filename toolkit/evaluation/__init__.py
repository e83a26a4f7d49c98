"""Evaluation: attack suites, per-example worst case, resumable records, sanity checks.

- :func:`evaluate` (``rtk.evaluation.engine``): one model, one split, a suite of
  :class:`AttackUnit` (built with :func:`make_units` from attack records and options).
- :class:`RecordStore`: per-example records on disk; resume and merge (shards by index).
- :mod:`rtk.evaluation.checks`: the sanity checks and their settings.
- :func:`model_view`, :func:`seeded`, :func:`with_restarts`, :func:`ensemble`: helpers
  for attack plugins (logits-only model view, seeding without touching the global RNG).
- :func:`robust_accuracy`: the minimal dict-returning interface.
- :func:`jpeg_attack`, :func:`gabor_attack`, :func:`snow_attack` (``rtk.evaluation.unforeseen``):
  Kang et al.'s unforeseen attacks, each in its own threat model.
"""

from __future__ import annotations

from ..lazy import LazyFace

#: submodule -> the public names it defines; importing this face imports none of them (each on
#: first use), so reading option models from it needs no torch (see rtk.lazy)
_face = LazyFace(
    __name__,
    {
        "request": (
            "OUTPUT_PATTERN",
            "Normalization",
            "CheckSettings",
            "AttackSuiteOptions",
            "Norm",
        ),
        "adapters": (
            "AttackFn",
            "ModelOutputError",
            "ModelView",
            "ensemble",
            "model_view",
            "seeded",
            "select_output",
            "with_restarts",
        ),
        "basic": ("robust_accuracy",),
        "checks": (
            "CHECKS",
            "CheckResult",
            "SanityCheckError",
            "SanityCheckWarning",
        ),
        "engine": (
            "EvaluationResult",
            "eval_indices",
            "evaluate",
            "load_batch",
            "shard_indices",
        ),
        "records": (
            "RecordStore",
            "merge_records",
            "model_fingerprint",
        ),
        "summary": (
            "headline_threat",
            "plot_curves",
            "threat_label",
        ),
        "unforeseen": (
            "UnforeseenResult",
            "gabor_attack",
            "jpeg_attack",
            "snow_attack",
        ),
        "units": (
            "NORMS",
            "AttackUnit",
            "attack_eps",
            "attack_norm",
            "delta_norms",
            "eps_by_norm",
            "fmt_eps",
            "function_units",
            "make_units",
            "threats",
        ),
    },
)
__all__ = _face.names
__getattr__ = _face.attr  # PEP 562: each name's submodule imported on its first use
__dir__ = _face.dir
