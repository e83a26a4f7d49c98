"""Representation similarity: rtk's own kernels, streaming accumulators, feature hooks and
the robustness analyses of Cianfarani et al. (2022).

- :mod:`rtk.similarity.kernels`: pure functions (``linear_cka``, ``rbf_cka``,
  ``minibatch_cka``, ``svcca``, ``pwcca``, ``procrustes_distance``, ``linear_cka_matrix``).
- :mod:`rtk.similarity.streaming`: ``update()/compute()`` classes (``MinibatchCKA``,
  ``LinearCKAStream``, ``MomentStream``, ``FeatureBuffer``).
- :mod:`rtk.similarity.metrics`: the metric protocol (a plain ``metric(x, y) -> float`` is
  enough; ``matrix``, ``summarize``/``compare`` and ``accumulator`` are optional fast paths),
  the built-in metric objects and :func:`similarity_matrix`.
- :mod:`rtk.similarity.features`: layer selection by name pattern, forward hooks,
  streaming feature collection on benign or adversarial inputs.
- :mod:`rtk.similarity.analyses`: heatmaps, block-structure score, diagonals, overfitting
  by layer, specialization, figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .analyses import (
        Block,
        BlockStructure,
        Heatmap,
        block_structure,
        class_similarity,
        common_layers,
        cross_class_specialization,
        diagonal,
        heatmap,
        overfitting_by_layer,
        plot_heatmap,
        plot_lines,
        specialization,
    )
    from .features import (
        DEFAULT_TYPES,
        FeatureHooks,
        ModelInput,
        check_pooling,
        collect_features,
        iter_features,
        select_layers,
        unwrap,
    )
    from .kernels import (
        SimilarityError,
        kernel_cka,
        linear_cka,
        linear_cka_matrix,
        minibatch_cka,
        procrustes_distance,
        pwcca,
        rbf_cka,
        svcca,
    )
    from .metrics import (
        PWCCA,
        RBFCKA,
        SVCCA,
        LinearCKA,
        MinibatchCKAMetric,
        ProcrustesDistance,
        SimilarityMetric,
        as_similarity,
        pair_values,
        similarity_matrix,
    )
    from .stage import SimilarityJob, run_similarity
    from .streaming import FeatureBuffer, LinearCKAStream, MinibatchCKA, MomentStream
