"""Hook specifications. A plugin implements any of them with ``@rtk.hookimpl`` and
yields (or returns a list of) the matching records from :mod:`rtk.records`."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from .records import (
    KINDS,
    AttackSpec,
    CertifierSpec,
    CommandSpec,
    DatasetSpec,
    ModelSpec,
    PrunerSpec,
    SimilaritySpec,
    StageSpec,
    TrainerSpec,
)

hookspec = pluggy.HookspecMarker("rtk")
hookimpl = pluggy.HookimplMarker("rtk")


@hookspec
def rtk_datasets() -> Iterable[DatasetSpec]:
    """Datasets: yield DatasetSpec records."""


@hookspec
def rtk_models() -> Iterable[ModelSpec]:
    """Architectures: yield ModelSpec records."""


@hookspec
def rtk_trainers() -> Iterable[TrainerSpec]:
    """Training objectives: yield TrainerSpec records."""


@hookspec
def rtk_attacks() -> Iterable[AttackSpec]:
    """Adversarial attacks: yield AttackSpec records."""


@hookspec
def rtk_pruners() -> Iterable[PrunerSpec]:
    """Pruning rules: yield PrunerSpec records."""


@hookspec
def rtk_similarity_metrics() -> Iterable[SimilaritySpec]:
    """Representation similarity metrics: yield SimilaritySpec records."""


@hookspec
def rtk_certifiers() -> Iterable[CertifierSpec]:
    """Certifiers of robustness: yield CertifierSpec records."""


@hookspec
def rtk_stages() -> Iterable[StageSpec]:
    """Kinds of experiment stage: yield StageSpec records."""


@hookspec
def rtk_commands() -> Iterable[CommandSpec]:
    """Extra CLI subcommands: yield CommandSpec records."""


#: hook name -> record kind (from the records: each record class names its hook)
HOOK_KINDS = {spec.HOOK: kind for kind, spec in KINDS.items()}
