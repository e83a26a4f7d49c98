"""Data: dataset records, deterministic subsets, fast batching, and the loaders."""

from .core import DataInfo, DataOptions, DatasetBundle, TensorSplit, apply_limits, batches, num_examples, subset

__all__ = ["DataInfo", "DataOptions", "DatasetBundle", "TensorSplit", "apply_limits", "batches", "num_examples", "subset"]
