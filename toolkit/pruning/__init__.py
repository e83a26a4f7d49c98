"""Pruning: masked layers, LWM / random / HYDRA (unstructured), channel pruning through
torch-pruning (structured), the pre-train -> prune -> fine-tune pipeline, and saving pruned
models without pickle.

The pruner protocol is :class:`rtk.pruning.base.Pruner`; plugins register pruners with
``rtk.PrunerSpec(name=..., build=lambda opts: pruner, structured=...)``.
torch-pruning is imported only when structured pruning or MAC counting is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import LazyFace

LazyFace.declared(__name__)

#: the face's exports: the names its TYPE_CHECKING block imports (read by rtk.lazy, not run);
#: importing the face imports none of them (each submodule on the first use of one of its names),
#: so reading option models from it needs no torch
if TYPE_CHECKING:
    from .base import (
        LOOP_DEFAULTS,
        PruneJob,
        PruneOutcome,
        Pruner,
        PruningError,
        ScoreTraining,
        check_ratio,
        compression_label,
        keep_count,
        make_loop_config,
        ratio_from_compression,
    )
    from .masks import (
        apply_mask,
        dense_export,
        finalize_scores,
        is_masked,
        is_prunable,
        is_scored,
        masked_layers,
        masks_of,
        remove_mask,
        scaled_score_init,
        to_scored,
        topk_mask,
    )
    from .measure import (
        SizeReport,
        activation_bytes,
        inference_times,
        layer_sparsity,
        layer_weight_counts,
        macs,
        model_bytes,
        remaining_params,
        size_report,
    )
    from .pipeline import (
        CompressionResult,
        Evaluator,
        Method,
        Schedule,
        Target,
        compress,
        example_batch,
        plot_accuracy_vs_compression,
        pruned_name,
    )
    from .select import LayerSelection, SelectedLayers, execution_order, prunable_layers, select_layers
    from .serialize import apply_masks_entry, apply_shapes, exported_recipe, masks_entry, pruned_recipe, shape_changes
    from .structured import IMPORTANCES, ChannelPruner, accumulate_gradients, count_macs_and_params, make_importance
    from .unstructured import HydraPruner, MagnitudePruner, RandomPruner, masks_from_scores
