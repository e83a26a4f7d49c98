"""The RobustBench model zoo as comparison baselines (optional extra: ``pip install 'rtk[zoo]'``).

- :func:`import_robustbench`: imports robustbench 1.1.1 as released (aliases
  ``pyautoattack`` as ``autoattack``; no site-packages patching).
- :func:`entries`, :func:`entry`, :class:`ZooId`: what the zoo holds, with the reported
  accuracies robustbench ships in its README.
- :func:`load_zoo_model`: a zoo model from a local model directory, loaded safely
  (``weights_only=True``, sha256 pinned / recorded on first load and checked afterwards,
  corrupt files moved aside).
- :func:`save_zoo_checkpoint`: write weights in the layout robustbench reads.
- :mod:`rtk.zoo.compare`: zoo models and your models on one data subset, one attack
  suite, one table; CKA between their layers.

Importing this package does not import robustbench; every function that needs it raises
:class:`ZooUnavailableError` naming ``pip install 'rtk[zoo]'`` when it is absent.
"""

from .catalog import (
    DATASETS,
    LEADERBOARD_NOTE,
    THREATS,
    Reported,
    ZooEntry,
    ZooId,
    canonical_dataset,
    canonical_threat,
    entries,
    entry,
    expected_paths,
    parse_readme_tables,
    reported_metrics,
)
from .compare import Comparison, Contender, compare_layers_table, compare_robustness, zoo_contender
from .compat import (
    INSTALL_HINT,
    ZooError,
    ZooUnavailableError,
    import_robustbench,
    robustbench_available,
    robustbench_version,
)
from .loader import (
    DEFAULT_MODEL_DIR,
    ENV_MODEL_DIR,
    WeightFile,
    build_architecture,
    check_data_info,
    file_status,
    load_zoo_model,
    resolve_model_dir,
)
from .pinned import PINNED_SHA256
from .weights import (
    CorruptWeightsError,
    HashMismatchError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    normalize_sha256,
    save_zoo_checkpoint,
    sha256_file,
    sidecar_path,
)

__all__ = [
    "DATASETS",
    "LEADERBOARD_NOTE",
    "THREATS",
    "Reported",
    "ZooEntry",
    "ZooId",
    "canonical_dataset",
    "canonical_threat",
    "entries",
    "entry",
    "expected_paths",
    "parse_readme_tables",
    "reported_metrics",
    "INSTALL_HINT",
    "ZooError",
    "ZooUnavailableError",
    "import_robustbench",
    "robustbench_available",
    "robustbench_version",
    "DEFAULT_MODEL_DIR",
    "ENV_MODEL_DIR",
    "WeightFile",
    "build_architecture",
    "check_data_info",
    "file_status",
    "load_zoo_model",
    "resolve_model_dir",
    "PINNED_SHA256",
    "CorruptWeightsError",
    "HashMismatchError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "save_zoo_checkpoint",
    "sha256_file",
    "normalize_sha256",
    "Comparison",
    "Contender",
    "compare_layers_table",
    "compare_robustness",
    "zoo_contender",
    "sidecar_path",
]
