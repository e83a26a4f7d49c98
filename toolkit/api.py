"""One call per task on what a user already has: an ``nn.Module`` and data.

``rtk.evaluate``, ``rtk.train``, ``rtk.prune``, ``rtk.verify`` and ``rtk.compare`` each build a
one-stage experiment around the given model(s) and data and run it through the runner, so the
work is done by the very stage ``rtk run`` uses (evaluation engine with per-example worst case
and sanity checks, the training loop, the pruning pipeline, the certifiers, the similarity
stage), options are validated the same way, and ``out=DIR`` leaves an ordinary run directory
with ``report.md``. Without ``out`` the run directory is temporary and removed afterwards; the
result keeps every table as a pandas DataFrame.

Data may be a ``(x, y)`` pair of tensors (images in [0, 1], shape ``[N, C, H, W]``), a
``torch.utils.data.Dataset`` of ``(x, y)`` items, a ``DataLoader`` (its dataset is used), a
registered dataset name, or a dataset table ``{"name": "digits", "noise": 0.05}``.
Components (attacks, trainers, pruners, certifiers, metrics) are given by name, as a table
``{"name": "pgd", "steps": 20}``, or as a record (``rtk.AttackSpec`` ...), which need not be
registered by a plugin.

The plain similarity kernels work on feature tensors ``[N, D]``: :func:`cka`, :func:`svcca`,
:func:`pwcca`, :func:`procrustes`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data.core import DataInfo, DatasetBundle, TensorSplit
from .data.sources import as_split, as_tensor, infer_info
from .errors import ConfigError, DataError, RtkError
from .options import NORMS, NoOptions, Options
from .records import ComponentSpec, DatasetSpec, ModelSpec, Registration
from .registry import Registry, default_registry

log = logging.getLogger(__name__)

#: Names under which the objects of one call are registered for its run.
_DATASET = "in-memory"
_ARCH = "in-memory"


class ApiError(ConfigError):
    """A bad argument to one of the one-call functions; says what was given and what is allowed."""

    def __init__(self, problems: str | list[str], *, call: str = "") -> None:
        super().__init__(problems)
        self.call = call
        head = f"rtk.{call}: " if call else ""
        self.args = (head + ("; ".join(self.problems)),)

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------- results
@dataclass
class Result:
    """What a one-call function returns.

    ``tables`` maps table names to DataFrames (each also reachable as an attribute, e.g.
    ``result.worst_case``); ``notes`` says what rtk did to the inputs that the caller should
    know (a model put in eval mode, a loader's dataset taken); ``path`` and ``report`` are the
    run directory and its ``report.md`` when ``out`` was given, else ``None``.
    """

    tables: dict[str, pd.DataFrame]
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    report: Path | None = None

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("tables") or {}
        if name in tables:
            return tables[name]
        raise AttributeError(
            f"{type(self).__name__} has no attribute or table {name!r}; tables: {', '.join(tables) or '(none)'}"
        )

    def __repr__(self) -> str:
        head = f"{type(self).__name__}(tables: {', '.join(self.tables)}"
        return head + (f"; run directory {self.path})" if self.path else ")")


@dataclass(repr=False)
class EvaluateResult(Result):
    """``accuracy`` (per attack and eps), ``worst_case`` (the headline), ``checks``."""

    @property
    def checks(self) -> pd.DataFrame:
        return self.tables.get("checks", pd.DataFrame())


@dataclass(repr=False)
class TrainResult(Result):
    """``model`` (the trained module), ``history`` (one row per epoch)."""

    model: nn.Module | None = None


@dataclass(repr=False)
class PruneResult(Result):
    """``models`` (name -> compressed module), ``compression`` (one row per method and target)."""

    models: dict[str, nn.Module] = field(default_factory=dict)


# ---------------------------------------------------------------------------- data
@dataclass
class _Data:
    """Data as the runner needs it: a registered dataset table, or an in-memory bundle."""

    table: dict[str, Any] | None = None
    train: Dataset | None = None
    test: Dataset | None = None
    batch_size: int | None = None
    notes: list[str] = field(default_factory=list)


def _split(data: Any, where: str, notes: list[str]) -> tuple[Dataset, int | None]:
    if isinstance(data, DataLoader):
        notes.append(
            f"{where}: took the DataLoader's dataset ({type(data.dataset).__name__}); rtk batches it itself "
            f"(batch size {data.batch_size}), so the loader's sampler and collate function are not used"
        )
        return _split(data.dataset, where, notes)[0], data.batch_size
    if isinstance(data, (Dataset, tuple, list)):
        try:
            return as_split(data, where), None
        except DataError as exc:
            raise ApiError(str(exc)) from None
    raise ApiError(
        f"{where}: got {type(data).__name__}; allowed: an (x, y) pair of tensors, a Dataset, a DataLoader, "
        f"a registered dataset name or a table {{'name': ..., options}}"
    )


def _data(data: Any, test_data: Any = None, *, registry: Registry) -> _Data:
    notes: list[str] = []
    if isinstance(data, (str, Mapping)):
        table = {"name": data} if isinstance(data, str) else dict(data)
        if "name" not in table:
            raise ApiError(f"data: a dataset table needs a 'name'; got keys {sorted(table)}")
        if table["name"] not in registry.names("dataset") and ":" not in str(table["name"]):
            from .errors import UnknownComponentError

            raise ApiError(f"data: {UnknownComponentError('dataset', str(table['name']), registry.names('dataset'))}")
        if test_data is not None:
            raise ApiError("test_data: not allowed with a registered dataset, whose own test split is used")
        return _Data(table=table, notes=notes)
    train, bs = _split(data, "data", notes)
    test = train
    if test_data is not None:
        test, _ = _split(test_data, "test_data", notes)
    return _Data(train=train, test=test, batch_size=bs, notes=notes)


def _first_item(split: Dataset) -> torch.Tensor:
    if isinstance(split, TensorSplit):
        return split.x[:1]
    return split[0][0].unsqueeze(0)


# ---------------------------------------------------------------------------- models
def _check_model(model: Any, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ApiError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    return model


def _probe(model: nn.Module, x: torch.Tensor, output: str, normalize: Any, where: str) -> int:
    """The number of logits the model returns on one example (and a clear error if it fails)."""
    from .evaluation.adapters import model_view

    view = model_view(copy.deepcopy(model).cpu().eval(), output, _normalization(normalize))
    try:
        with torch.no_grad():
            out = view(x.float().cpu())
    except RtkError:
        raise
    except Exception as exc:
        raise ApiError(
            f"{where}: the model failed on an input of shape {list(x.shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    if out.ndim != 2:
        raise ApiError(f"{where}: the model must return logits of shape [N, classes], got {list(out.shape)}")
    return int(out.shape[1])


def _normalization(normalize: Any) -> Any:
    if normalize is None:
        return None
    from .evaluation.adapters import Normalization
    from .options import validate_options

    if isinstance(normalize, Mapping):
        table = dict(normalize)
    elif isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        mean, std = normalize
        table = {"mean": _floats(mean), "std": _floats(std)}
    else:
        raise ApiError(f"normalize: expected (mean, std) or {{'mean': [...], 'std': [...]}}, got {normalize!r}")
    try:
        return validate_options(Normalization, table, "normalize")
    except RtkError as exc:
        raise ApiError(str(exc)) from None


def _floats(v: Any) -> list[float]:
    if isinstance(v, torch.Tensor):
        return [float(t) for t in v.flatten()]
    if isinstance(v, (int, float)):
        return [float(v)]
    return [float(t) for t in v]


class _ObjectOptions(Options):
    slot: str = "model"


def _model_spec(models: dict[str, nn.Module], wrap: Any = None) -> ModelSpec:
    """A model record whose build returns a copy of the given module (the caller's is never changed)."""

    def build(info: DataInfo, opts: _ObjectOptions) -> nn.Module:
        module = copy.deepcopy(models[opts.slot])
        return wrap(module) if wrap is not None else module

    return ModelSpec(name=_ARCH, summary="a module handed to a one-call function", options=_ObjectOptions, build=build)


def _dataset_spec(bundle: DatasetBundle) -> DatasetSpec:
    return DatasetSpec(
        name=_DATASET, summary="data handed to a one-call function", options=NoOptions, load=lambda o: bundle
    )


def _mode_note(model: nn.Module, where: str, verb: str) -> list[str]:
    if model.training:
        return [
            f"{where} was in train mode; rtk {verb} a copy in eval mode (BatchNorm running statistics, no "
            f"dropout), as the stage does for every model. Your module was not changed"
        ]
    return []


# ---------------------------------------------------------------------------- components
def _component(value: Any, kind: str, extra: list[Registration], registry: Registry, where: str) -> Any:
    """A component as the stage options take it (a name or a table); a record not in the
    registry is added to this call's registry."""
    if isinstance(value, ComponentSpec):
        if value.KIND != kind:
            raise ApiError(f"{where}: expected a {kind} record, got a {value.KIND} record ({value.name!r})")
        if (kind, value.name) in registry:
            if registry.get(kind, value.name) is not value:
                raise ApiError(f"{where}: a different {kind} named {value.name!r} is already registered; rename yours")
        elif not any(r.spec is value for r in extra):
            extra.append(Registration(value, "rtk.api (given in the call)"))
        return value.name
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        table = dict(value)
        if "name" not in table:
            raise ApiError(f"{where}: a {kind} table needs a 'name'; got keys {sorted(table)}")
        if isinstance(table["name"], ComponentSpec):
            table["name"] = _component(table["name"], kind, extra, registry, where)
        return table
    raise ApiError(
        f"{where}: expected a {kind} name, a table {{'name': ..., options}} or a {kind} record, got {value!r}"
    )


def _components(value: Any, kind: str, extra: list[Registration], registry: Registry, where: str) -> list[Any]:
    items = [value] if isinstance(value, (str, Mapping, ComponentSpec)) else list(value)
    if not items:
        raise ApiError(f"{where}: give at least one {kind}")
    return [_component(v, kind, extra, registry, f"{where}[{i}]") for i, v in enumerate(items)]


def _with_eps(ref: Any, eps: Any) -> Any:
    if eps is None:
        return ref
    table = {"name": ref} if isinstance(ref, str) else dict(ref)
    table.setdefault("eps", eps)
    return table


# ---------------------------------------------------------------------------- the run
@dataclass
class _Call:
    """One call's experiment: its registry additions, data, models and stage."""

    verb: str
    data: _Data
    models: dict[str, nn.Module]
    stage: dict[str, Any]
    extra: list[Registration]
    registry: Registry
    notes: list[str]
    seed: int = 0
    device: Any = None
    out: str | os.PathLike | None = None
    output: str = "logits"
    normalize: Any = None
    adapt: bool = True  # wrap the module for output/normalize (stages without those options)

    @property
    def wrap(self) -> Any:
        return _adapter(self.output, self.normalize) if self.adapt else None

    def run(self) -> tuple[Any, Registry, Path]:
        from .execution import execute
        from .planning import experiment_from_dict, plan

        extra = list(self.extra)
        if self.data.table is not None:
            dataset = dict(self.data.table)
        else:
            assert self.data.train is not None and self.data.test is not None
            classes = 0
            for name, m in self.models.items():
                classes = max(classes, _probe(m, _first_item(self.data.test), self.output, self.normalize, name))
            info = infer_info(_DATASET, self.data.train, self.data.test, min_classes=classes)
            bundle = DatasetBundle(info, self.data.train, self.data.test)
            extra.append(Registration(_dataset_spec(bundle), "rtk.api"))
            dataset = {"name": _DATASET}
        extra.append(Registration(_model_spec(self.models, self.wrap), "rtk.api"))
        registry = Registry([*self.registry.registrations(), *extra])
        description = "Run by `rtk." + self.verb + "(...)` from Python."
        notes = [*self.data.notes, *self.notes]
        if notes:
            description += "\n\n" + "\n".join(f"- {n}" for n in notes)
        exp = {
            "name": self.verb,
            "description": description,
            "seed": self.seed,
            "device": _device(self.device),
            "dataset": dataset,
            "models": {name: {"arch": _ARCH, "slot": name} for name in self.models},
            "stages": [{"kind": self.stage_kind, "id": self.verb, **self.stage}],
        }
        experiment = experiment_from_dict(exp, source=f"<rtk.{self.verb}>", base_dir=Path.cwd(), registry=registry)
        planned = plan(experiment, registry)
        if self.out is not None:
            return execute(planned, out=self.out), registry, Path(self.out)
        tmp = Path(tempfile.mkdtemp(prefix=f"rtk-{self.verb}-"))
        return execute(planned, out=tmp / "run"), registry, tmp / "run"

    @property
    def stage_kind(self) -> str:
        return {"evaluate": "evaluate", "train": "train", "prune": "prune", "verify": "certify"}.get(
            self.verb, "similarity"
        )


def _device(device: Any) -> str:
    if device is None:
        return "auto"
    text = str(device)
    return text


def _finish(call: _Call, cls: type[Result], take_models: Iterable[str] | None = None, **extra: Any) -> Any:
    """Run the call; read back tables (and models) before a temporary run directory goes."""
    from .errors import StageError

    def plain(problems: list[str]) -> list[str]:  # key paths of the call, not of the one-stage experiment
        return [p.replace("stages[0].", "").replace("stages[0]", "options") for p in problems]

    try:
        result, registry, path = call.run()
    except StageError as exc:
        if isinstance(exc.cause, ConfigError):
            raise ApiError(plain(exc.cause.problems), call=call.verb) from exc.cause
        if isinstance(exc.cause, RtkError):
            raise exc.cause from exc
        raise
    except ConfigError as exc:
        raise ApiError(plain(exc.problems), call=call.verb) from None
    try:
        stage = next(iter(result.stages.values()))
        models: dict[str, nn.Module] = {}
        if take_models is not None:
            models = _read_models(path, registry, take_models, call.wrap is not None)
        kept = call.out is not None
        res = cls(
            tables=dict(stage.tables),
            summary=stage.summary,
            metrics=dict(stage.metrics),
            notes=[*call.data.notes, *call.notes],
            path=result.path if kept else None,
            report=result.report if kept else None,
            **extra,
        )
        for note in res.notes:
            log.info("rtk.%s: %s", call.verb, note)
        return res, models
    finally:
        if call.out is None:
            shutil.rmtree(path.parent, ignore_errors=True)


def _read_models(path: Path, registry: Registry, names: Iterable[str], wrapped: bool) -> dict[str, nn.Module]:
    from .models.checkpoint import load_checkpoint
    from .rundir import RunDir, saved_checkpoints

    rundir = RunDir(path)
    state = rundir.read_json("state.json", {}) or {}
    wanted = list(names)
    out: dict[str, nn.Module] = {}
    for name, info in state.get("models", {}).items():
        if wanted and name not in wanted:
            continue
        current = saved_checkpoints(rundir, name, info).get("current")  # paths are relative to the run directory
        if current is None:
            continue
        module, _, _ = load_checkpoint(current, registry)
        out[name] = _unwrap(module) if wrapped else module
    return out


def _adapter(output: str, normalize: Any) -> Any:
    """A wrapper making a model take [0, 1] inputs and return logits, for the stages that have
    no ``output``/``normalize`` options: ``Normalize`` in front (bound propagation traces it),
    and an output selection when the model returns a tuple or a dict."""
    if output == "logits" and normalize is None:
        return None
    from .evaluation.adapters import ModelView
    from .models.layers import Normalize

    norm = _normalization(normalize)

    def wrap(module: nn.Module) -> nn.Module:
        inner = module if output == "logits" else ModelView(module, output)
        if norm is None:
            return inner
        return nn.Sequential(OrderedDict(norm=Normalize(norm.mean, norm.std), model=inner))

    return wrap


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside :func:`_adapter`'s wrapper."""
    from .evaluation.adapters import ModelView

    inner = getattr(module, "model", None)
    if isinstance(module, nn.Sequential) and hasattr(module, "norm") and isinstance(inner, nn.Module):
        module = inner
    return module.model if isinstance(module, ModelView) else module


def _start(verb: str, data: Any, test_data: Any = None) -> tuple[Registry, _Data]:
    registry = default_registry()
    return registry, _data(data, test_data, registry=registry)


# ---------------------------------------------------------------------------- the verbs
def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Any = ("pgd", "square"),
    eps: float | str | Sequence[float | str] | None = 8 / 255,
    norm: str = "Linf",
    checks: bool = True,
    limit: int | None = None,
    device: Any = None,
    *,
    split: str = "test",
    normalize: Any = None,
    output: str = "logits",
    batch_size: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> EvaluateResult:
    """Clean and robust accuracy of ``model`` on ``data`` under ``attacks`` at ``eps``.

    The evaluate stage's engine: every attack at every eps, the per-example worst case over
    the suite (``result.worst_case``), per-attack accuracy (``result.accuracy``) and the
    sanity checks (``result.checks``). ``eps`` is one radius or a list (an accuracy-vs-eps
    curve) in the ``norm`` given; ``None`` keeps each attack's own eps. Further keyword
    arguments are options of the evaluate stage (``early_exit``, ``headline_eps``, ...).
    """
    _check_model(model, "model")
    registry, d = _start("evaluate", data)
    extra: list[Registration] = []
    stage: dict[str, Any] = {
        "models": ["model"],
        "attacks": _components(attacks, "attack", extra, registry, "attacks"),
        "checks": checks,
        "split": split,
        "output": output,
        **options,
    }
    if norm not in NORMS:
        raise ApiError(f"norm: {norm!r} is not allowed; allowed: {', '.join(NORMS)}")
    if eps is not None:
        stage["eps"] = {norm: list(eps) if isinstance(eps, (list, tuple)) else [eps]}
    if limit is not None:
        stage["limit"] = limit
    if batch_size or d.batch_size:
        stage["batch_size"] = batch_size or d.batch_size
    if normalize is not None:
        stage["normalize"] = _normalization(normalize).model_dump()
    notes = _mode_note(model, "model", "evaluated")
    call = _Call(
        "evaluate",
        d,
        {"model": model},
        stage,
        extra,
        registry,
        notes,
        seed,
        device,
        out,
        output,
        normalize,
        adapt=False,
    )
    res, _ = _finish(call, EvaluateResult)
    return res


def train(
    model: nn.Module,
    data: Any,
    trainer: Any = "pgd-at",
    epochs: int = 10,
    eps: float | str | None = None,
    *,
    test_data: Any = None,
    normalize: Any = None,
    output: str = "logits",
    device: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    **loop_options: Any,
) -> TrainResult:
    """Train a copy of ``model`` on ``data`` with ``trainer`` (the training loop of the train stage).

    ``eps`` is the trainer's radius (``trainer="pgd-at", eps=8/255``); further keyword arguments
    are options of the loop (``lr``, ``batch_size``, ``schedule``, ``eval_every``, ...). Returns
    ``result.model`` (the trained copy; your module is not changed) and ``result.history``.
    """
    _check_model(model, "model")
    registry, d = _start("train", data, test_data)
    extra: list[Registration] = []
    ref = _with_eps(_component(trainer, "trainer", extra, registry, "trainer"), eps)
    stage = {"model": "model", "trainer": ref, "epochs": epochs, **loop_options}
    if d.batch_size and "batch_size" not in loop_options:
        stage["batch_size"] = d.batch_size
    call = _Call("train", d, {"model": model}, stage, extra, registry, [], seed, device, out, output, normalize)
    res, models = _finish(call, TrainResult, take_models=["model"])
    res.model = models.get("model")
    return res


def prune(
    model: nn.Module,
    data: Any,
    pruner: Any = "hydra",
    compression: float | Sequence[float] = 10,
    trainer: Any = "pgd-at",
    eps: float | str | None = None,
    *,
    test_data: Any = None,
    normalize: Any = None,
    output: str = "logits",
    device: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> PruneResult:
    """Compress a copy of ``model`` with the pruning pipeline of the prune stage.

    ``pruner`` is one pruner or a list; ``compression`` one target or a list (10 = 10x fewer
    weights); ``trainer`` (with ``eps``) is the objective of score training and fine-tuning.
    Further keyword arguments are options of the prune stage (``score_epochs``,
    ``finetune_epochs``, ``attacks``, ``certifiers``, ...). Returns ``result.models`` (name ->
    compressed module) and ``result.compression``.
    """
    _check_model(model, "model")
    registry, d = _start("prune", data, test_data)
    extra: list[Registration] = []
    stage: dict[str, Any] = {
        "model": "model",
        "pruners": _components(pruner, "pruner", extra, registry, "pruner"),
        "compression": list(compression) if isinstance(compression, (list, tuple)) else [compression],
        "trainer": _with_eps(_component(trainer, "trainer", extra, registry, "trainer"), eps),
        **options,
    }
    for key in ("attacks", "certifiers"):
        if key in stage:
            stage[key] = _components(stage[key], key[:-1], extra, registry, key)
    call = _Call("prune", d, {"model": model}, stage, extra, registry, [], seed, device, out, output, normalize)
    res, models = _finish(call, PruneResult, take_models=())
    res.models = {k: v for k, v in models.items() if k != "model"}
    return res


def verify(
    model: nn.Module,
    data: Any,
    certifiers: Any = ("ibp", "crown"),
    eps: float | str | Sequence[float | str] = 2 / 255,
    limit: int | None = 200,
    device: Any = None,
    *,
    normalize: Any = None,
    output: str = "logits",
    batch_size: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> Result:
    """Verified accuracy of ``model`` on ``data`` (the certify stage; ``rtk certify`` on the CLI).

    ``certifiers`` by name or table (``{"name": "smoothing", "sigma": 0.25}``); ``eps`` one radius
    or a list. Returns ``result.verified`` (one row per certifier and eps), and for smoothing
    ``result.radius_curve`` and ``result.radii``.
    """
    _check_model(model, "model")
    registry, d = _start("verify", data)
    extra: list[Registration] = []
    stage: dict[str, Any] = {
        "models": ["model"],
        "certifiers": _components(certifiers, "certifier", extra, registry, "certifiers"),
        "eps": list(eps) if isinstance(eps, (list, tuple)) else [eps],
        "limit": limit,
    }
    if batch_size or d.batch_size:
        stage["batch_size"] = batch_size or d.batch_size
    notes = _mode_note(model, "model", "certified")
    call = _Call("verify", d, {"model": model}, stage, extra, registry, notes, seed, device, out, output, normalize)
    res, _ = _finish(call, Result)
    return res


def compare(
    model_a: nn.Module,
    data: Any,
    model_b: nn.Module | None = None,
    layers: Any = "default",
    metric: Any = "linear-cka",
    inputs: Any = "benign",
    *,
    limit: int | None = 1000,
    analyses: Sequence[str] | None = None,
    normalize: Any = None,
    output: str = "logits",
    device: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> Result:
    """Compare representations layer by layer (the similarity stage).

    With one model: its layer x layer heatmap, block structure and specialization. With
    ``model_b``: the cross heatmap between the two and its diagonal. ``layers`` are name
    patterns (fnmatch or ``"re:..."``; ``"default"``: every Conv, BN, ReLU, pooling and Linear
    layer), one list for both models or ``{"a": [...], "b": [...]}``. ``inputs`` is
    ``"benign"``, ``"adversarial"`` (PGD at its defaults) or an attack (name, table or record)
    whose adversarial examples feed both models. Tables: ``result.heatmaps`` and the analyses'.
    With ``normalize`` or ``output`` the models are wrapped, and their layer names gain the
    prefix ``model.`` (default patterns still match).
    """
    _check_model(model_a, "model_a")
    models = {"a": model_a}
    if model_b is not None:
        models["b"] = _check_model(model_b, "model_b")
    registry, d = _start("compare", data)
    extra: list[Registration] = []
    stage: dict[str, Any] = {"metric": _component(metric, "similarity", extra, registry, "metric"), **options}
    if model_b is None:
        stage["models"] = ["a"]
    else:
        stage["pairs"] = [["a", "b"]]
    stage["layers"] = (
        [layers] if isinstance(layers, str) else (dict(layers) if isinstance(layers, Mapping) else list(layers))
    )
    if limit is not None:
        stage["limit"] = limit
    if analyses is not None:
        stage["analyses"] = list(analyses)
    if inputs == "adversarial":
        stage["adversarial"] = {"*": "pgd"}
    elif inputs != "benign":
        stage["adversarial"] = {"*": _component(inputs, "attack", extra, registry, "inputs")}
    notes = [n for k, m in models.items() for n in _mode_note(m, f"model_{k}", "took features of")]
    call = _Call("compare", d, models, stage, extra, registry, notes, seed, device, out, output, normalize)
    res, _ = _finish(call, Result)
    return res


# ---------------------------------------------------------------------------- kernels
def _features(x: Any, what: str) -> torch.Tensor:
    try:
        t = as_tensor(x, what)
    except DataError as exc:
        raise ApiError(str(exc)) from None
    if t.ndim < 2:
        raise ApiError(f"{what}: expected features of shape [N, D] (or [N, ...], flattened), got {list(t.shape)}")
    return t.detach().reshape(t.shape[0], -1)


def cka(x: Any, y: Any, kernel: str = "linear", debiased: bool = False, *, sigma: float = 0.8) -> float:
    """Centered kernel alignment between features ``x`` [N, D1] and ``y`` [N, D2].

    ``kernel`` is ``"linear"`` or ``"rbf"`` (bandwidth ``sigma`` times the median distance);
    ``debiased`` uses the unbiased HSIC estimator.
    """
    from .similarity.kernels import linear_cka, rbf_cka

    fx, fy = _features(x, "x"), _features(y, "y")
    if kernel == "linear":
        return linear_cka(fx, fy, debiased=debiased)
    if kernel == "rbf":
        return rbf_cka(fx, fy, sigma=sigma, debiased=debiased)
    raise ApiError(f"kernel: {kernel!r} is not allowed; allowed: linear, rbf")


def svcca(x: Any, y: Any, *, variance: float | None = 0.99, dims: int | None = None) -> float:
    """SVCCA (Raghu et al. 2017): CCA on the top singular directions keeping ``variance`` (or ``dims``)."""
    from .similarity.kernels import svcca as _svcca

    return _svcca(_features(x, "x"), _features(y, "y"), variance=variance, dims=dims)


def pwcca(x: Any, y: Any) -> float:
    """Projection-weighted CCA (Morcos et al. 2018)."""
    from .similarity.kernels import pwcca as _pwcca

    return _pwcca(_features(x, "x"), _features(y, "y"))


def procrustes(x: Any, y: Any) -> float:
    """Orthogonal Procrustes distance between the normalized, centered features."""
    from .similarity.kernels import procrustes_distance

    return procrustes_distance(_features(x, "x"), _features(y, "y"))


__all__ = [
    "ApiError",
    "Result",
    "EvaluateResult",
    "TrainResult",
    "PruneResult",
    "evaluate",
    "train",
    "prune",
    "verify",
    "compare",
    "cka",
    "svcca",
    "pwcca",
    "procrustes",
]
