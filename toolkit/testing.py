"""Contract checks for components of every kind: what ``rtk plugins --check`` runs, and what a
plugin author calls from their own test suite.

Each check builds the component from its record with its default options (or the options
given) and exercises it on tiny synthetic inputs, in a second or so on a CPU:

- every kind: the record is well formed; its options model subclasses :class:`rtk.Options`,
  rejects an unknown key and validates from its defaults;
- ``dataset``: ``check`` (when given) says whether the data is present; if it is, ``load``
  returns a :class:`rtk.data.DatasetBundle` whose examples match its ``info`` (float images
  in [0, 1] of shape ``[channels, height, width]``, integer labels below ``num_classes``);
- ``model``: ``build(info, options)`` returns a module mapping a [0, 1] batch to finite
  logits ``[batch, num_classes]``;
- ``trainer``: the objective returns an :class:`rtk.training.ObjectiveOutput` with a finite
  scalar loss that backpropagates into the model, leaves the model's train/eval mode as it
  found it, and ``eps_at(progress)`` (when present) is a number;
- ``attack``: ``attack(x, y)`` returns a tensor of ``x``'s shape in [0, 1], within ``eps`` of
  ``x`` in the record's ``norm``; it changes neither ``x``, the model's parameters nor its mode;
- ``pruner``: ``validate`` accepts a small MLP and ``prune`` removes weights from the layers
  named in ``job.layers``;
- ``similarity``: ``metric(x, y)`` is a finite number, the same on a second call;
- ``certifier``: ``certify`` returns one :class:`rtk.certify.CertificationResult` per example
  with a ``radius`` >= 0 that is 0 unless ``verified``;
- ``stage``: ``run`` (and ``check``) are callables; a stage is exercised by an experiment;
- ``command``: ``build()`` returns a ``click.Command`` whose ``--help`` exits with status 0.

From a plugin's own tests (pytest)::

    import rtk.testing

    def test_my_plugin_meets_rtk_contracts():
        rtk.testing.assert_contracts("my-plugin")  # plugin, distribution or component names

or one test per component::

    @pytest.mark.parametrize("reg", rtk.testing.registrations("my-plugin"), ids=lambda r: r.spec.name)
    def test_contract(reg):
        rtk.testing.assert_contract(reg)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch
from torch import nn

from .errors import ConfigError
from .options import NORMS, validate_options
from .records import KINDS, Registration
from .registry import Registry, default_registry, record_problem

log = logging.getLogger(__name__)


class ContractError(AssertionError):
    """A component broke its contract (an AssertionError, so pytest reports it as a failure)."""


@dataclass
class ContractResult:
    """The outcome of the contract check of one component."""

    kind: str
    name: str
    plugin: str
    distribution: str | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} ({self.plugin})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "passed": self.passed,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------- selection
def registrations(*names: str, registry: Registry | None = None) -> list[Registration]:
    """The registrations a list of names selects: each name is a plugin (``rtk.attacks``,
    ``example``), a distribution (``rtk-example``) or a component (``pgd`` or ``attack:pgd``).
    No names: every registered component. An unknown name is a :class:`ConfigError`."""
    reg = registry if registry is not None else default_registry()
    every = reg.registrations()
    if not names:
        return every
    chosen: list[Registration] = []
    unknown: list[str] = []
    for name in names:
        kind, _, comp = name.rpartition(":") if ":" in name else ("", "", name)
        hits = [
            r
            for r in every
            if r.plugin == name
            or (r.distribution and _norm(r.distribution) == _norm(name))
            or (r.spec.name == comp and (not kind or r.spec.KIND == kind))
        ]
        if not hits:
            unknown.append(name)
        chosen += [r for r in hits if r not in chosen]
    if unknown:
        plugins = sorted({r.plugin for r in every})
        raise ConfigError(
            f"--check: {', '.join(repr(u) for u in unknown)} is neither a plugin, a distribution nor a "
            f"component; plugins: {', '.join(plugins)} (components: see `rtk plugins`)"
        )
    return chosen


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# ---------------------------------------------------------------------------- running
def check(reg: Registration, options: dict[str, Any] | None = None) -> ContractResult:
    """Check one component's contract; never raises for the component's own faults."""
    result = ContractResult(reg.spec.KIND, reg.spec.name, reg.plugin, reg.distribution)
    spec = reg.spec
    bad = record_problem(spec, KINDS.get(spec.KIND, type(spec)))
    if bad:
        result.problems.append(f"malformed record: {bad}")
        return result
    if not spec.summary.strip():
        result.problems.append("the record has no summary (shown by `rtk plugins`)")
    # a source (arch = "python:net.py:Net") passes further keys on to the user's callable; its
    # plan-time check binds them to the callable's signature, so a typo is still an error there
    passes_keys_on = bool(getattr(spec, "source", None)) and getattr(spec, "check", None) is not None
    if spec.options.model_config.get("extra") != "forbid" and not passes_keys_on:
        result.problems.append("options must forbid unknown keys (subclass rtk.Options)")
    try:
        if not passes_keys_on:
            spec.options.model_validate({"definitely_not_an_option": 1})
            result.problems.append("options accepted the unknown key 'definitely_not_an_option'")
    except pydantic.ValidationError:
        pass
    required = [n for n, f in spec.options.model_fields.items() if f.is_required()]
    if required and not options:
        result.notes.append(f"not exercised: options {', '.join(required)} are required (pass options to check it)")
        return result
    try:
        opts = validate_options(spec.options, options or {}, where=f"{spec.KIND} {spec.name}")
    except ConfigError as exc:
        result.problems.append(f"default options do not validate: {exc}")
        return result
    checker = _CHECKS.get(spec.KIND)
    if checker is None:
        result.notes.append(f"no behavioural contract for kind {spec.KIND!r}")
        return result
    torch_state = torch.random.get_rng_state()
    try:
        checker(spec, opts, result)
    except _NotExercised as exc:
        result.notes.append(f"not exercised: {exc}")
    except Exception as exc:  # noqa: BLE001 - the component's fault, reported as a problem
        result.problems.append(f"raised {type(exc).__name__}: {exc}")
    finally:
        torch.random.set_rng_state(torch_state)
    return result


def check_all(
    names: Sequence[str] = (), *, registry: Registry | None = None, options: dict[str, dict[str, Any]] | None = None
) -> list[ContractResult]:
    """Check every component the names select (see :func:`registrations`). ``options`` maps
    a component name to the options to check it with."""
    options = options or {}
    return [check(r, options.get(r.spec.name)) for r in registrations(*names, registry=registry)]


def assert_contract(reg: Registration, options: dict[str, Any] | None = None) -> ContractResult:
    """Check one component; raise :class:`ContractError` listing its problems."""
    result = check(reg, options)
    if not result.passed:
        raise ContractError(f"{result} breaks its contract:\n" + "\n".join(f"  - {p}" for p in result.problems))
    return result


def assert_contracts(*names: str, registry: Registry | None = None, **kw: Any) -> list[ContractResult]:
    """Check every selected component; raise :class:`ContractError` listing every problem."""
    results = check_all(names, registry=registry, **kw)
    failed = [r for r in results if not r.passed]
    if failed:
        raise ContractError(
            "\n".join(f"{r} breaks its contract:\n" + "\n".join(f"  - {p}" for p in r.problems) for r in failed)
        )
    return results


# ---------------------------------------------------------------------------- per kind
class _NotExercised(Exception):
    """The component cannot be exercised here (its data is absent, ...): a note, not a fault."""


def _expect(cond: bool, result: ContractResult, problem: str) -> bool:
    if not cond:
        result.problems.append(problem)
    return cond


def _info() -> Any:
    from .data import DataInfo

    return DataInfo("contract", 10, 1, 8, 8, (0.5,), (0.25,))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10


def _check_dataset(spec: Any, opts: Any, result: ContractResult) -> None:
    from .data import DatasetBundle

    if spec.check is not None:
        missing = list(spec.check(opts) or ())
        if missing:
            raise _NotExercised(f"its data is not available here ({'; '.join(missing)})")
    bundle = spec.load(opts)
    if not _expect(
        isinstance(bundle, DatasetBundle), result, f"load returned {type(bundle).__name__}, not a DatasetBundle"
    ):
        return
    info = bundle.info
    for split_name in ("train", "test"):
        split = getattr(bundle, split_name)
        if not _expect(len(split) > 0, result, f"the {split_name} split is empty"):
            continue
        x, y = split[0][0], split[0][1]
        shape = (info.channels, info.height, info.width)
        _expect(
            isinstance(x, torch.Tensor) and tuple(x.shape) == shape and x.is_floating_point(),
            result,
            f"{split_name}[0] image: expected a float tensor of shape {list(shape)}, got "
            f"{getattr(x, 'shape', type(x).__name__)}",
        )
        if isinstance(x, torch.Tensor):
            _expect(0 <= float(x.min()) and float(x.max()) <= 1, result, f"{split_name}[0] image is not in [0, 1]")
        _expect(
            0 <= int(y) < info.num_classes, result, f"{split_name}[0] label {int(y)} not in [0, {info.num_classes})"
        )


def _check_model(spec: Any, opts: Any, result: ContractResult) -> None:
    from .data import DataInfo

    info = DataInfo("contract", 10, 3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = spec.build(info, opts)
    if not _expect(isinstance(model, nn.Module), result, f"build returned {type(model).__name__}, not an nn.Module"):
        return
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    _expect(
        isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 10),
        result,
        f"logits of a [2, 3, 32, 32] batch for 10 classes: expected shape [2, 10], got "
        f"{getattr(out, 'shape', type(out).__name__)}",
    )
    if isinstance(out, torch.Tensor):
        _expect(bool(torch.isfinite(out).all()), result, "the logits are not finite")


def _check_trainer(spec: Any, opts: Any, result: ContractResult) -> None:
    from .training import ObjectiveOutput

    objective = spec.build(opts)
    if not _expect(callable(objective), result, "build did not return a callable objective"):
        return
    model = _tiny_model().train()
    x, y = _batch()
    out = objective(model, x, y, progress=0.5)
    if not _expect(isinstance(out, ObjectiveOutput), result, f"returned {type(out).__name__}, not ObjectiveOutput"):
        return
    loss = out.loss
    if not _expect(isinstance(loss, torch.Tensor) and loss.dim() == 0, result, "loss is not a scalar tensor"):
        return
    _expect(bool(torch.isfinite(loss.detach())), result, f"loss is not finite: {float(loss.detach())}")
    _expect(model.training, result, "the objective left the model in eval mode (restore the mode it found)")
    if _expect(loss.requires_grad, result, "loss does not require grad: it cannot train the model"):
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        _expect(bool(grads), result, "the loss's gradient reaches none of the model's parameters")
    for name in ("logits", "adv_logits"):
        v = getattr(out, name)
        _expect(
            v is None or (isinstance(v, torch.Tensor) and tuple(v.shape) == (len(x), 10)),
            result,
            f"{name} must be None or [batch, classes]",
        )
    eps_at = getattr(objective, "eps_at", None)
    if eps_at is not None:
        for p in (0.0, 0.5, 1.0):
            v = eps_at(p)
            _expect(isinstance(v, (int, float)) and math.isfinite(v), result, f"eps_at({p}) is not a number: {v!r}")


def _dist(delta: torch.Tensor, norm: str) -> float:
    flat = delta.flatten(1)
    if norm == "Linf":
        return float(flat.abs().max())
    if norm == "L2":
        return float(flat.norm(dim=1).max())
    if norm == "L1":
        return float(flat.abs().sum(1).max())
    return float("nan")


def _check_attack(spec: Any, opts: Any, result: ContractResult) -> None:
    model = _tiny_model().eval()
    before = copy.deepcopy(model.state_dict())
    x, y = _batch()
    x0 = x.clone()
    attack = spec.build(model, opts)
    if not _expect(callable(attack), result, "build did not return a callable attack(x, y)"):
        return
    xa = attack(x, y)
    if not _expect(
        isinstance(xa, torch.Tensor) and xa.shape == x.shape,
        result,
        f"attack(x, y) must return a tensor of x's shape {list(x.shape)}, got {getattr(xa, 'shape', type(xa).__name__)}",
    ):
        return
    _expect(torch.equal(x, x0), result, "the attack changed its input x in place")
    _expect(float(xa.min()) >= -1e-6 and float(xa.max()) <= 1 + 1e-6, result, "x_adv is not in [0, 1]")
    eps = getattr(opts, "eps", None)
    if spec.norm in NORMS and isinstance(eps, (int, float)):
        d = _dist(xa.detach() - x0, spec.norm)
        _expect(d <= eps * (1 + 1e-4) + 1e-6, result, f"x_adv is {d:.4g} from x in {spec.norm}, beyond eps = {eps:.4g}")
    _expect(not model.training, result, "the attack left the model in train mode (restore the mode it found)")
    after = model.state_dict()
    _expect(all(torch.equal(before[k], after[k]) for k in before), result, "the attack changed the model's weights")
    _expect(
        all(p.requires_grad for p in model.parameters()), result, "the attack left parameters with requires_grad False"
    )


def _check_pruner(spec: Any, opts: Any, result: ContractResult) -> None:
    from .pruning import PruneJob

    pruner = spec.build(opts)
    for attr in ("validate", "prune"):
        if not _expect(callable(getattr(pruner, attr, None)), result, f"the pruner has no method {attr}()"):
            return
    model = _tiny_model()
    x, y = _batch(12)
    layers = ["1", "3"]
    pruner.validate(model, layers, x[:2])
    from .data import DatasetBundle

    split = torch.utils.data.TensorDataset(x, y)
    data = DatasetBundle(_info(), split, split)
    trainers = default_registry().get("trainer", "standard")
    job = PruneJob(layers=layers, example_inputs=x[:2], data=data, objective=trainers.build(trainers.options()))
    n_before = sum(int((m.weight != 0).sum()) for m in (model[1], model[3]))
    out = pruner.prune(model, 0.5, job)
    pruned = getattr(out, "model", None)
    if not _expect(isinstance(pruned, nn.Module), result, "prune must return a PruneOutcome whose model is a module"):
        return
    weights = [dict(pruned.named_modules()).get(n) for n in layers]
    n_after = sum(int((getattr(m, "weight", torch.ones(1)) != 0).sum()) for m in weights if m is not None)
    shapes_after = sum(int(getattr(m, "weight", torch.ones(1)).numel()) for m in weights if m is not None)
    _expect(
        n_after < n_before or shapes_after < n_before, result, "prune(model, 0.5, job) removed no weight of job.layers"
    )


def _check_similarity(spec: Any, opts: Any, result: ContractResult) -> None:
    metric = spec.build(opts)
    if not _expect(callable(metric), result, "build did not return a callable metric(x, y)"):
        return
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 12, generator=g), torch.randn(40, 7, generator=g)
    v = metric(a, b)
    try:
        fv = float(v)
    except (TypeError, ValueError):
        result.problems.append(f"metric(x, y) returned {v!r}, not a number")
        return
    _expect(math.isfinite(fv), result, f"metric(x, y) is not finite: {fv}")
    _expect(float(metric(a, b)) == fv, result, "metric(x, y) differs between two calls on the same inputs")


def _check_certifier(spec: Any, opts: Any, result: ContractResult) -> None:
    from .certify import CertificationResult

    cert = spec.build(opts)
    if not _expect(callable(getattr(cert, "certify", None)), result, "the certifier has no method certify()"):
        return
    model = _tiny_model().eval()
    x, y = _batch(4)
    out = cert.certify(model, x, y, eps=0.01)
    if not _expect(isinstance(out, list) and len(out) == len(x), result, "certify must return one result per example"):
        return
    for r in out:
        if not _expect(isinstance(r, CertificationResult), result, f"got {type(r).__name__}, not CertificationResult"):
            return
        _expect(r.radius >= 0, result, f"radius {r.radius} < 0")
        if r.radius_certificate:  # a certified radius of the prediction, 0 when abstaining
            _expect(r.prediction != -1 or r.radius == 0, result, "radius > 0 for an abstention")
        else:
            _expect(r.verified or r.radius == 0, result, "radius > 0 for an example that is not verified")


def _check_stage(spec: Any, opts: Any, result: ContractResult) -> None:
    _expect(callable(spec.run), result, "run is not callable")
    result.notes.append("run is exercised by an experiment (rtk run --dry-run checks its options)")


def _check_command(spec: Any, opts: Any, result: ContractResult) -> None:
    import click
    from click.testing import CliRunner

    cmd = spec.build()
    if not _expect(isinstance(cmd, click.Command), result, f"build returned {type(cmd).__name__}, not a click.Command"):
        return
    res = CliRunner().invoke(cmd, ["--help"])
    _expect(res.exit_code == 0, result, f"`{spec.name} --help` exited with {res.exit_code}: {res.output[-300:]}")


def _check_logger(spec: Any, opts: Any, result: ContractResult) -> None:
    """Build the logger for a run in a scratch directory (trackers' offline switches set), check
    that its ``rtk_*`` methods are lifecycle hooks, and feed it one run: start, two epochs, a
    completed stage with a table, the finish."""
    import importlib.util
    import tempfile
    from pathlib import Path

    import pandas as pd

    from .lifecycle import LIFECYCLE_HOOKS, EpochMetrics, RunInfo, RunOutcome, StageInfo, call_hook
    from .lifecycle import unknown_hook_methods as unknown

    missing = [m for m in getattr(spec, "requires", ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise _NotExercised(f"needs {', '.join(missing)}, which is not installed ({spec.install or 'see its docs'})")
    with tempfile.TemporaryDirectory() as tmp, _environ(WANDB_MODE="offline", MLFLOW_TRACKING_URI=None):
        root = Path(tmp) / "run"
        (root / "tables").mkdir(parents=True)
        run = RunInfo(root, "contract", {"name": "contract", "seed": 0}, {"point": 1})
        obj = spec.build(opts, run)
        _expect(not unknown(obj), result, f"methods that are not lifecycle hooks: {', '.join(unknown(obj))}")
        if not _expect(any(callable(getattr(obj, h, None)) for h in LIFECYCLE_HOOKS), result, "implements no hook"):
            return
        stage = StageInfo("01-train", "train", 0)
        call_hook(obj, "rtk_run_start", run=run)
        call_hook(obj, "rtk_stage_start", run=run, stage=stage)
        for epoch in (1, 2):
            metrics = EpochMetrics(epoch, {"train_loss": 1.0 / epoch})
            call_hook(obj, "rtk_epoch_metrics", run=run, stage=stage, epoch=epoch, metrics=metrics)
        table = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5]})
        done = StageInfo("01-train", "train", 0, "completed", {"history": table}, metrics={"loss": 0.5}, seconds=0.1)
        call_hook(obj, "rtk_stage_finish", run=run, stage=done)
        report = root / "report.md"
        report.write_text("# Report: contract\n")
        outcome = RunOutcome("completed", report, {"01-train/history": table}, (done,))
        call_hook(obj, "rtk_run_finish", run=run, outcome=outcome)


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set (a value) or unset (None) environment variables for a block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: Mapping[str, str | None]) -> None:
    """Set each variable to its value, or unset it where the value is None."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_CHECKS: dict[str, Callable[[Any, Any, ContractResult], None]] = {
    "dataset": _check_dataset,
    "model": _check_model,
    "trainer": _check_trainer,
    "attack": _check_attack,
    "pruner": _check_pruner,
    "similarity": _check_similarity,
    "certifier": _check_certifier,
    "stage": _check_stage,
    "command": _check_command,
    "logger": _check_logger,
}


__all__ = [
    "ContractError",
    "ContractResult",
    "assert_contract",
    "assert_contracts",
    "check",
    "check_all",
    "registrations",
]
