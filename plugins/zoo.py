"""The RobustBench zoo: the ``robustbench`` model and the ``zoo`` stage (optional extra ``rtk[zoo]``).

In an experiment file::

    [models.carmon]
    arch = "robustbench:cifar10/Linf/Carmon2019Unlabeled"   # -> arch "robustbench", source = "..."
    model_dir = "models"                                     # or $RTK_MODEL_DIR

    [[stages]]
    kind = "zoo"
    models = ["mine"]                         # your models (and any declared zoo models)
    zoo = ["cifar10/Linf/Ding2020MMA"]        # zoo entries loaded by the stage itself
    attacks = [{ name = "pgd", eps = "8/255", steps = 10 }]   # default: autoattack
    limit = 500
"""

from __future__ import annotations

from pydantic import Field, field_validator

import rtk
from rtk.evaluation import AttackSuiteOptions

components = rtk.Components()

SOURCE_HELP = (
    "the zoo entry '<dataset>/<threat>/<name>', e.g. 'cifar10/Linf/Carmon2019Unlabeled'; written "
    'arch = "robustbench:<entry>" in experiment files'
)
MODEL_DIR_HELP = (
    "folder holding the weights as <dataset>/<threat>/<name>.pt (relative to the current directory; "
    "default $RTK_MODEL_DIR, else ./models)"
)
UNSAFE_HELP = (
    "allow a checkpoint that torch.load(weights_only=True) refuses (it stores Python objects); this can "
    "run arbitrary code: only for files you trust"
)
SHA_HELP = "expected sha256 of the weight file (a list for ensembles); default: pinned, else recorded on first load"
DOWNLOAD_HELP = "when the file is missing, fetch it with robustbench's downloader (needs network; checked before use)"


def _check_source(value: str) -> str:
    from rtk.zoo import ZooError, ZooId, entry

    try:
        zid = ZooId.parse(value)
        e = entry(zid, describe=False)
    except ZooError as exc:
        raise ValueError(str(exc)) from None
    if not e.supported:
        raise ValueError(f"{zid}: {e.why_not}")
    return str(zid)


def _check_sha(value):
    from rtk.zoo import normalize_sha256

    if value is None:
        return None
    if isinstance(value, str):
        return normalize_sha256(value)
    return [normalize_sha256(v) for v in value]


class RobustBenchOptions(rtk.Options):
    # "rebuild": the value a field takes when the model is rebuilt from an rtk checkpoint (its
    # weights come from the checkpoint; the zoo file, its folder and unpickling play no part)
    source: str = Field(description=SOURCE_HELP)
    model_dir: str | None = Field(None, description=MODEL_DIR_HELP, json_schema_extra={"rebuild": None})
    allow_unsafe_pickle: bool = Field(False, description=UNSAFE_HELP, json_schema_extra={"rebuild": False})
    sha256: str | list[str] | None = Field(None, description=SHA_HELP, json_schema_extra={"rebuild": None})
    download: bool = Field(False, description=DOWNLOAD_HELP, json_schema_extra={"rebuild": False})
    pretrained: bool = Field(
        True,
        description="load the weights; false builds the architecture with random weights",
        json_schema_extra={"rebuild": False},
    )

    @field_validator("source")
    @classmethod
    def _source_ok(cls, value: str) -> str:
        return _check_source(value)

    @field_validator("sha256")
    @classmethod
    def _sha_ok(cls, value):
        return _check_sha(value)


@components.register(rtk.ModelSpec, "robustbench", RobustBenchOptions)
def _build_robustbench(info, o: RobustBenchOptions):
    """a RobustBench zoo model from a local model directory (arch = "robustbench:<dataset>/<threat>/<name>"; needs
    rtk[zoo])"""
    from rtk.zoo import load_zoo_model

    return load_zoo_model(
        o.source,
        model_dir=o.model_dir,
        info=info,
        allow_unsafe_pickle=o.allow_unsafe_pickle,
        sha256=o.sha256,
        download=o.download,
        pretrained=o.pretrained,
    )


# ---------------------------------------------------------------------------- the zoo stage
class CKAOptions(rtk.Options):
    enabled: bool = Field(True, description="compute CKA between each zoo model and each of your models")
    limit: int = Field(256, ge=8, description="test examples whose features are compared")
    batch_size: int = Field(64, ge=2)
    layers: list[str] = Field(
        default_factory=list,
        description="layer name patterns for both models (fnmatch globs, or "
        "regular expressions written 're:...'); default: every "
        "conv/BN/ReLU/pooling/linear layer",
    )
    max_layers: int = Field(24, ge=1, description="at most this many layers per model (evenly spaced)")


class ZooStageOptions(AttackSuiteOptions):
    models: list[str] = Field(
        default_factory=list, description="experiment models to compare (yours, or declared zoo models)"
    )
    zoo: list[str] = Field(
        default_factory=list, description="zoo entries '<dataset>/<threat>/<name>' loaded by the stage"
    )
    model_dir: str | None = Field(None, description=MODEL_DIR_HELP)
    allow_unsafe_pickle: bool = Field(False, description=UNSAFE_HELP)
    download: bool = Field(False, description=DOWNLOAD_HELP)
    batch_size: int = Field(128, ge=1, description="examples per batch")
    cka: CKAOptions = Field(default_factory=CKAOptions)


def _check_stage(opts: ZooStageOptions, planning: rtk.Planning) -> list[str]:
    from rtk.evaluation import headline_threat, make_units, threats

    problems = []
    for i, m in enumerate(opts.models):
        problems += planning.check_model(m, f"models[{i}]")
    if not opts.models and not opts.zoo:
        problems.append(f"{planning.where}: nothing to compare; give models = [...] and/or zoo = [...]")
    for i, z in enumerate(opts.zoo):
        try:
            _check_source(z)
        except ValueError as exc:
            problems.append(f"{planning.where}.zoo[{i}]: {exc}")
    names = list(opts.models) + [z.rsplit("/", 1)[-1] for z in opts.zoo]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"{planning.where}: a model appears twice in the comparison: {', '.join(dupes)}")
    problems += _missing_weights(opts, planning)
    if not all(r.resolved for r in opts.attacks):
        return problems  # unresolved attack names were reported already
    refs = [(r.spec, r.opts, r.describe()) for r in opts.attacks]
    try:
        units = make_units(refs, opts.eps)
        headline_threat(units, threats(units, opts.eps), opts.headline_eps)
    except rtk.RtkError as exc:
        problems += [f"{planning.where}.{p}" for p in getattr(exc, "problems", [str(exc)])]
    return problems


def _missing_weights(opts: ZooStageOptions, planning: rtk.Planning) -> list[str]:
    """Weight files that are not there (and will not be downloaded), found before any work."""
    from rtk.zoo import ZooError, expected_paths, resolve_model_dir

    wanted = []  # (key path, entry, model_dir, download)
    for i, z in enumerate(opts.zoo):
        wanted.append((f"{planning.where}.zoo[{i}]", z, opts.model_dir, opts.download))
    declared = planning.experiment.models
    for name in opts.models:
        ref = rtk.ModelRef.parse(name)
        decl = declared.get(ref.name)
        if decl is not None and decl.arch == "robustbench" and not decl.checkpoint and ref.tag is None:
            o = decl.options
            if o.get("pretrained", True):
                wanted.append((f"models.{name}", o.get("source", ""), o.get("model_dir"), o.get("download", False)))
    problems = []
    for where, source, model_dir, download in wanted:
        if download:
            continue
        try:
            paths = expected_paths(source, resolve_model_dir(model_dir))
        except ZooError:
            continue  # reported by the source check
        missing = [p for p in paths if not p.is_file()]
        if missing:
            problems.append(
                f"{where}: weights of the zoo model {source} not found: expected {missing[0].resolve()}; "
                f"place the file there (`rtk zoo list --json` gives its Google Drive id), point model_dir "
                f"(--model-dir, $RTK_MODEL_DIR) at your copy, or set download = true (--download)"
            )
    return problems


def _contenders(ctx: rtk.StageContext, opts: ZooStageOptions):
    from rtk.zoo import Contender, ZooId, load_zoo_model, zoo_contender

    out = []
    for name in opts.models:
        module = ctx.model(name)
        recipe = ctx.entry(name).recipe
        if recipe.arch == "robustbench":
            out.append(Contender(name, module, "zoo", str(recipe.options.get("source"))))
        else:
            out.append(Contender(name, module, "rtk"))
    for z in opts.zoo:
        zid = ZooId.parse(z)
        module = load_zoo_model(
            zid,
            model_dir=opts.model_dir,
            info=ctx.info,
            allow_unsafe_pickle=opts.allow_unsafe_pickle,
            download=opts.download,
        )
        out.append(zoo_contender(zid.name, module.to(ctx.device)))
    return out


@components.register(rtk.StageSpec, "zoo", ZooStageOptions, check=_check_stage)
def _run_stage(ctx: rtk.StageContext, opts: ZooStageOptions) -> rtk.StageResult:
    """RobustBench zoo models beside yours: one subset, one attack suite, one table; CKA between their layers (needs
    rtk[zoo])"""
    from rtk.data import subset
    from rtk.evaluation import eval_indices, make_units
    from rtk.zoo import compare_layers_table, compare_robustness

    contenders = _contenders(ctx, opts)
    split = ctx.data.test
    indices = eval_indices(len(split), opts.limit, ctx.experiment.seed)
    units = make_units([(r.spec, r.opts, r.describe()) for r in opts.attacks], opts.eps)
    cmp = compare_robustness(
        contenders,
        split,
        units,
        indices=indices,
        batch_size=opts.batch_size,
        device=ctx.device,
        eps=opts.eps,
        headline_eps=opts.headline_eps,
        early_exit=opts.early_exit,
        checks=opts.check_settings if opts.checks else False,
        store_root=ctx.artifact_dir,
        seed=ctx.seed,
    )
    tables = {"comparison": cmp.comparison, "accuracy": cmp.accuracy}
    if cmp.checks is not None:
        tables["checks"] = cmp.checks
    figures = {}
    n_zoo = sum(c.source == "zoo" for c in contenders)
    summary = [
        f"Compared {len(contenders)} model(s) ({n_zoo} from the RobustBench zoo) on the same {len(indices)} test "
        f"examples under the same suite: {', '.join(ref.describe() for ref in opts.attacks)}."
    ]
    best = cmp.comparison.sort_values("worst_case", ascending=False).iloc[0]
    summary.append(f"Highest worst-case accuracy ({best['threat']}): `{best['model']}` ({best['worst_case']:.3f}).")
    if n_zoo:
        summary.append(
            "reported_clean / reported_robust are RobustBench's own numbers (AutoAttack on the full test set)."
        )
    summary += cmp.notes
    failed = [(r.name, c.name) for r in cmp.results for c in r.failed_checks]
    if failed:
        summary.append(
            "Failed sanity checks: " + "; ".join(f"`{m}`: {c}" for m, c in failed) + " (see the checks table)."
        )
    zoo_side = [c for c in contenders if c.source == "zoo"]
    mine = [c for c in contenders if c.source != "zoo"]
    if opts.cka.enabled and zoo_side and mine:
        cka_split = subset(split, opts.cka.limit, ctx.experiment.seed)
        cka_table, cka_figures, note = compare_layers_table(
            zoo_side,
            mine,
            cka_split,
            layers=opts.cka.layers,
            max_layers=opts.cka.max_layers,
            batch_size=opts.cka.batch_size,
            device=ctx.device,
            figure_path=ctx.figure_path,
        )
        tables["cka"] = cka_table
        figures.update(cka_figures)
        summary.append(note)
    metrics = {"checks_failed": len(failed)}
    for r in cmp.results:
        metrics[f"{r.name}.clean_accuracy"] = r.clean_accuracy
        metrics[f"{r.name}.worst_case_accuracy"] = r.headline_accuracy
    return rtk.StageResult(tables=tables, figures=figures, summary=" ".join(summary), metrics=metrics)


rtk_models = components.hookimpl(rtk.ModelSpec)
rtk_stages = components.hookimpl(rtk.StageSpec)
