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

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .adapters import (
        AttackFn,
        ModelOutputError,
        ModelView,
        ensemble,
        model_view,
        seeded,
        select_output,
        with_restarts,
    )
    from .basic import robust_accuracy
    from .checks import CHECKS, CheckResult, SanityCheckError, SanityCheckWarning
    from .engine import EvaluationResult, eval_indices, evaluate, load_batch, shard_indices
    from .records import RecordStore, merge_records, model_fingerprint
    from .request import OUTPUT_PATTERN, AttackSuiteOptions, CheckSettings, Norm, Normalization
    from .summary import headline_threat, plot_curves, threat_label
    from .unforeseen import UnforeseenResult, gabor_attack, jpeg_attack, snow_attack
    from .units import (
        NORMS,
        AttackUnit,
        attack_eps,
        attack_norm,
        delta_norms,
        eps_by_norm,
        fmt_eps,
        function_units,
        make_units,
        threats,
    )
