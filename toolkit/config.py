"""Experiment files: TOML -> validated :class:`Experiment`.

An experiment names a dataset, one or more models, and an ordered list of stages::

    name = "quickstart"
    seed = 0
    device = "auto"

    [dataset]
    name = "digits"            # a registered dataset; every other key is its option
    limit_test = 300

    [models.standard]
    arch = "cnn-small"         # a registered model; every other key is its option
    # checkpoint = "path/to/model"   (optional: NAME.safetensors + NAME.json)

    [[stages]]
    kind = "train"             # a registered stage; every other key is its option
    model = "standard"
    trainer = "standard"       # a component: a name, or a table {name = ..., options...}

Structure is checked here; component names and options are checked by
:func:`rtk.plan` against the registry, and :func:`rtk.experiment_from_dict` /
:func:`rtk.load_experiment` (:mod:`rtk.planning`) report the problems of both at once. This
module never imports the planner. Every problem names the file and key path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .options import format_validation_error
from .trust import name_problem

#: Experiment files larger than this are refused (a TOML experiment is a few kB).
MAX_EXPERIMENT_BYTES = 4 * 2**20
#: The largest seed (stages add their index to it; torch takes 64-bit seeds).
MAX_SEED = 2**62


class ModelDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str
    checkpoint: str | None = None
    init: str | None = None  # a plain state dict (.safetensors, or .pt read with weights_only=True)
    strict: bool = True  # init: every tensor must match
    options: dict[str, Any] = Field(default_factory=dict)


class DatasetDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class LoggerDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class StageDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    id: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        problem = name_problem(v)
        if problem:  # the id names the stage's folders (tables/<id>/, figures/<id>/)
            raise ValueError(problem)
        return v


class Experiment(BaseModel):
    """A whole experiment, structurally valid (component options are checked in planning)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "auto"
    amp: bool = False
    dataset: DatasetDecl
    models: dict[str, ModelDecl] = Field(default_factory=dict)
    stages: list[StageDecl] = Field(default_factory=list)
    loggers: list[LoggerDecl] = Field(default_factory=list)
    # a study point's swept keys (key path -> value), for trackers; a file may add its own
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # the key-path overrides applied to the file (``--set``, a study point's values)
    overrides: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    base_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        problem = name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("device")
    @classmethod
    def _device_ok(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("allowed: auto, cpu, cuda, cuda:N, mps")
        return v

    def resolve_path(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        return path


def _split(table: dict[str, Any], head: str) -> tuple[Any, dict[str, Any]]:
    rest = {k: v for k, v in table.items() if k != head}
    return table.get(head), rest


def read_structure(
    data: dict[str, Any], *, source: str | None = None, base_dir: str | os.PathLike | None = None
) -> tuple[Experiment | None, list[str]]:
    """The structure of an experiment given as a dict (as parsed from TOML): the validated
    :class:`Experiment` and no problems, or the problems (each naming its key path) and what
    of the experiment is usable (dataset, models, stages; ``None`` when nothing is), so the
    planner can report the problems of those parts too (:func:`rtk.experiment_from_dict`)."""
    if not isinstance(data, dict):
        raise ConfigError("an experiment must be a table of keys", source=source)
    problems: list[str] = []
    top = {k: v for k, v in data.items() if k not in ("dataset", "models", "stages", "loggers")}
    allowed_top = {"name", "description", "seed", "device", "amp", "tags"}
    for key in top:
        if key == "sweep":
            problems.append(
                "sweep: this file declares a study (a [sweep] table); run it with `rtk run` or "
                "rtk.study.run_study(rtk.study.load_study(path)), or pick one point with overrides"
            )
        elif key not in allowed_top:
            from .errors import suggest

            problems.append(
                f"{key}: unknown key{suggest(key, allowed_top | {'dataset', 'models', 'stages', 'loggers'})}; "
                f"allowed top-level keys: {', '.join(sorted(allowed_top | {'dataset', 'models', 'stages', 'loggers'}))}"
            )
    built: dict[str, Any] = {k: v for k, v in top.items() if k in allowed_top}
    built["loggers"] = logger_decls(data.get("loggers", []), problems)

    ds = data.get("dataset")
    if ds is None:
        problems.append('dataset: required table is missing (for example: [dataset] name = "digits")')
    elif isinstance(ds, str):
        built["dataset"] = {"name": ds}
        if ":" in ds:  # "python:data.py:load" -> name "python" + source option
            name, source_id = ds.split(":", 1)
            built["dataset"] = {"name": name, "options": {"source": source_id}}
    elif isinstance(ds, dict):
        name, rest = _split(ds, "name")
        if name is None:
            problems.append("dataset.name: required key is missing")
        if isinstance(name, str) and ":" in name:
            name, source_id = name.split(":", 1)
            rest = {"source": source_id, **rest}
        built["dataset"] = {"name": name or "", "options": rest}
    else:
        problems.append(f"dataset: expected a table or a name, got {type(ds).__name__}")

    models = data.get("models", {})
    if not isinstance(models, dict):
        problems.append("models: expected a table of named models ([models.NAME] arch = ...)")
        models = {}
    built["models"] = {}
    for mname, decl in models.items():
        if name_problem(mname):
            problems.append(f"models.{mname!r}: {name_problem(mname)}")
        if not isinstance(decl, dict):
            problems.append(f"models.{mname}: expected a table with at least 'arch'")
            continue
        arch, rest = _split(decl, "arch")
        ckpt = rest.pop("checkpoint", None)
        init = {k: rest.pop(k) for k in ("init", "strict") if k in rest}
        if arch is None:
            problems.append(f"models.{mname}.arch: required key is missing")
            continue
        if isinstance(arch, str) and ":" in arch:  # "robustbench:cifar10/Linf/Name" -> arch + source option
            arch, source_id = arch.split(":", 1)
            rest = {"source": source_id, **rest}
        built["models"][mname] = {"arch": arch, "checkpoint": ckpt, **init, "options": rest}

    stages = data.get("stages", [])
    if not isinstance(stages, list):
        problems.append("stages: expected an array of tables ([[stages]] kind = ...)")
        stages = []
    built["stages"] = []
    seen_ids: set[str] = set()
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            problems.append(f"stages[{i}]: expected a table with at least 'kind'")
            continue
        kind, rest = _split(st, "kind")
        sid = rest.pop("id", None)
        if kind is None:
            problems.append(f"stages[{i}].kind: required key is missing")
            continue
        if sid is not None and not isinstance(sid, str):
            problems.append(f"stages[{i}].id: expected a string, got {type(sid).__name__} {sid!r}")
            sid = None
        if not isinstance(kind, str):
            problems.append(f"stages[{i}].kind: expected the name of a stage kind, got {type(kind).__name__}")
            continue
        sid = sid if sid is not None else f"{i + 1:02d}-{kind}"
        if sid in seen_ids:
            problems.append(f"stages[{i}].id: duplicate stage id {sid!r}")
        seen_ids.add(sid)
        built["stages"].append({"kind": kind, "id": sid, "options": rest})

    built["source"] = source
    built["base_dir"] = str(base_dir) if base_dir is not None else None
    try:
        exp = Experiment.model_validate(built)
    except ValidationError as err:
        problems.extend(format_validation_error(err, "", Experiment))
        exp = None
    if problems and exp is None:  # salvage what can be planned, to report every problem at once
        salvage = {k: v for k, v in built.items() if k in ("dataset", "models", "stages", "source", "base_dir")}
        try:
            exp = Experiment.model_validate(salvage)
        except ValidationError:
            exp = None
    return exp, [p.lstrip(".") for p in problems]


def logger_decls(value: Any, problems: list[str], where: str = "loggers") -> list[dict[str, Any]]:
    """``loggers = ["tensorboard"]`` or ``[[loggers]] name = "mlflow"`` (other keys are the
    logger's options) -> declarations; problems are appended naming the key path."""
    if not isinstance(value, list):
        problems.append(f'{where}: expected a list of logger names or tables (loggers = ["tensorboard"])')
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append({"name": item, "options": {}})
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append({"name": item["name"], "options": {k: v for k, v in item.items() if k != "name"}})
        else:
            problems.append(f"{where}[{i}]: expected a logger name or a table with 'name', got {item!r}")
    return out


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML file, or a ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"file not found: {p}", source=str(p))
    if not p.is_file():
        raise ConfigError(f"not a file: {p}", source=str(p))
    try:
        if p.stat().st_size > MAX_EXPERIMENT_BYTES:
            raise ConfigError(f"the file is larger than {MAX_EXPERIMENT_BYTES} bytes; not an experiment", source=str(p))
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=str(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}); an experiment is a TOML text file in UTF-8", source=str(p)
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(p)) from None
    except RecursionError:
        raise ConfigError("not a usable TOML file: nested too deeply", source=str(p)) from None


def with_overrides(exp: Experiment, updates: dict[str, Any], *, where: str = "command line") -> Experiment:
    """``exp`` with top-level keys replaced (``--seed``, ``--device``); bad values are a
    :class:`ConfigError` naming the key as given on ``where``."""
    try:
        return Experiment.model_validate({**exp.model_dump(), **updates})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, Experiment)) from None
