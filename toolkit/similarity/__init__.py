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

__all__ = [
    "SimilarityError",
    "linear_cka",
    "rbf_cka",
    "kernel_cka",
    "minibatch_cka",
    "svcca",
    "pwcca",
    "procrustes_distance",
    "linear_cka_matrix",
    "MinibatchCKA",
    "LinearCKAStream",
    "MomentStream",
    "FeatureBuffer",
    "SimilarityMetric",
    "LinearCKA",
    "RBFCKA",
    "MinibatchCKAMetric",
    "SVCCA",
    "PWCCA",
    "ProcrustesDistance",
    "similarity_matrix",
    "pair_values",
    "as_similarity",
    "DEFAULT_TYPES",
    "FeatureHooks",
    "ModelInput",
    "select_layers",
    "check_pooling",
    "unwrap",
    "iter_features",
    "collect_features",
    "Heatmap",
    "heatmap",
    "Block",
    "BlockStructure",
    "block_structure",
    "common_layers",
    "diagonal",
    "overfitting_by_layer",
    "class_similarity",
    "specialization",
    "cross_class_specialization",
    "plot_heatmap",
    "plot_lines",
    "SimilarityJob",
    "run_similarity",
]
