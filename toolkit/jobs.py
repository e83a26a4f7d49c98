"""The typed requests of the engine's pruning and similarity jobs.

Each job's settings are declared here once, with one default and one description each: the
``prune`` and ``similarity`` stages' options embed them (by subclassing), the CLI generates
its flags from them (``rtk prune run``, ``rtk similarity``), and the engine's own records
(:class:`rtk.pruning.Schedule`, :class:`rtk.pruning.ScoreTraining`,
:class:`rtk.similarity.SimilarityJob`) take their defaults from them. The module needs
pydantic only, so plugins subclass the requests (``rtk.PruneRequest``,
``rtk.SimilarityRequest``) without importing torch. (The attack-suite request of the evaluate
and zoo stages is :class:`rtk.evaluation.AttackSuiteOptions`.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .options import Options


class PruneRequest(Options):
    """A pruning job: the schedule of its three phases (pre-train, score training, fine-tune)
    and the layers it prunes. :meth:`schedule` gives the engine's :class:`rtk.pruning.Schedule`."""

    pretrain_epochs: int = Field(0, ge=0, description="pre-train the dense model first (0: it is already trained)")
    score_epochs: int = Field(20, ge=0, description="epochs of score training (HYDRA)")
    finetune_epochs: int = Field(10, ge=0, description="epochs of fine-tuning after pruning")
    batch_size: int = Field(128, ge=1, description="examples per batch in every phase")
    lr: float = Field(0.1, gt=0, description="learning rate of pre-training")
    score_lr: float = Field(0.1, gt=0, description="learning rate of score training")
    finetune_lr: float = Field(0.01, gt=0, description="learning rate of fine-tuning")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="the optimizer of every phase")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of every phase")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay of pre-training and fine-tuning")
    score_weight_decay: float = Field(1e-4, ge=0, description="weight decay of score training")
    loop: dict[str, Any] = Field(
        default_factory=dict, description="further training-loop options for every phase (schedule, grad_clip, ...)"
    )
    layers: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="name patterns of the Conv/Linear layers to prune (globs, or 're:REGEX')",
    )
    exclude: list[str] = Field(default_factory=list, description="name patterns of layers kept dense (as layers)")
    keep_first: bool = Field(True, description="keep the first layer dense")
    keep_last: bool = Field(True, description="keep the classifier dense")

    def schedule(self) -> Any:
        """The engine's :class:`rtk.pruning.Schedule` (with its :class:`~rtk.pruning.ScoreTraining`)."""
        from .pruning import Schedule, ScoreTraining

        def every_phase() -> dict[str, Any]:  # the settings the three phases share
            return {
                "batch_size": self.batch_size,
                "optimizer": self.optimizer,
                "momentum": self.momentum,
                "loop_options": dict(self.loop),
            }

        scores = ScoreTraining(
            epochs=self.score_epochs, lr=self.score_lr, weight_decay=self.score_weight_decay, **every_phase()
        )
        return Schedule(
            pretrain_epochs=self.pretrain_epochs,
            finetune_epochs=self.finetune_epochs,
            lr=self.lr,
            finetune_lr=self.finetune_lr,
            weight_decay=self.weight_decay,
            scores=scores,
            **every_phase(),
        )


#: The analyses of a similarity job, in the order they run (``cross-class`` only when asked for).
ANALYSES = ("heatmap", "block-structure", "diagonal", "overfitting", "specialization")


class SimilarityRequest(Options):
    """How a similarity job compares representations: the analyses, the examples features are
    read on, their pooling, and the block-structure settings."""

    analyses: list[
        Literal["heatmap", "block-structure", "diagonal", "overfitting", "specialization", "cross-class"]
    ] = Field(
        default_factory=lambda: list(ANALYSES),
        description="analyses to run (each where its inputs are given); 'cross-class' (paper 1's specialization: "
        "CKA between the feature sets of two classes) only when listed",
    )
    split: Literal["test", "train"] = Field("test", description="the split features are read on")
    limit: int | None = Field(1000, ge=4, description="use a fixed subset of this many examples")
    batch_size: int = Field(256, ge=4, description="examples per batch when reading features")
    pooling: str = Field("flatten", description="'flatten', 'avg' (global average over positions) or 'avgN'")
    block_threshold: float = Field(0.8, description="similarity that counts as high for the block-structure score")
    block_min_size: int = Field(3, ge=2, description="fewest layers in a block")
    passes: int = Field(
        1,
        ge=1,
        le=100,
        description="minibatch metrics: passes over the examples, each a seeded shuffle into minibatches; the "
        "HSIC estimates of all passes are averaged (paper 1's code: 3); 1 reads them once, in order",
    )

    @field_validator("pooling")
    @classmethod
    def _pooling_ok(cls, v: str) -> str:
        from .errors import ConfigError
        from .similarity import check_pooling

        try:
            return check_pooling(v)
        except ConfigError as exc:  # pydantic reports ValueErrors with the key path
            raise ValueError(str(exc).split("pooling: ", 1)[-1]) from None


def default(request: type[Options], name: str) -> Any:
    """The default of field ``name`` of ``request`` (for the engine's records that mirror it)."""
    field = request.model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
