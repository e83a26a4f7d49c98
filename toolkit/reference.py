"""Generate the reference of every experiment-file key from the registry.

``docs/reference/experiment-file.md`` is this output for the built-in plugins; a test
regenerates it and fails when it is stale, so the reference cannot rot.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import Experiment
from .options import Span

_KIND_TITLES = [
    ("dataset", "Datasets (`[dataset] name = ...`)"),
    ("model", "Models (`[models.NAME] arch = ...`)"),
    ("stage", "Stages (`[[stages]] kind = ...`)"),
    ("trainer", "Trainers (`trainer = ...` in train-like stages)"),
    ("attack", "Attacks (`attacks = [...]` in evaluation stages)"),
    ("pruner", "Pruners"),
    ("similarity", "Similarity metrics"),
    ("certifier", "Certifiers"),
    ("logger", "Loggers (`loggers = [...]` at the top level, or `rtk run --logger NAME`)"),
    ("command", "Extra CLI commands"),
]

_TOP = [
    ("name", "string", "experiment", "name of the run; the run directory is `runs/<name>-<timestamp>`"),
    ("description", "string", "", "free text shown at the top of the report"),
    ("seed", "integer", "0", "one seed for the whole run; stage i uses seed + i"),
    ("device", "string", "auto", "auto, cpu, cuda, cuda:N, mps"),
    ("amp", "boolean", "false", "mixed precision on CUDA"),
    ("tags", "table", "", "key -> string, number or boolean, passed to trackers (a study point adds its swept keys)"),
    (
        "sweep",
        "table",
        "",
        "makes the file a study: key path -> list of values (cross product); `[[sweep.zip]]` tables of "
        "equal-length lists vary together; see docs/studies.md",
    ),
    (
        "dataset",
        "table",
        "(required)",
        "`name` of a registered dataset or a source (`python:<file.py>:<callable>`, `module:...`, "
        "`torchvision:<ClassName>`); every other key is one of its options",
    ),
    (
        "models.NAME",
        "table",
        "",
        "`arch` of a registered model or a source (`python:<file.py>:<callable>`, `module:...`, "
        "`torchvision:<name>`, `timm:<name>`), optional `checkpoint` (path without suffix to "
        "NAME.safetensors + NAME.json), optional `init` (a plain state dict, .safetensors or .pt) "
        "with `strict` (default true); every other key is an option of the architecture. "
        '`arch = "robustbench:cifar10/Linf/NAME"` is short for `arch = "robustbench"`, '
        '`source = "cifar10/Linf/NAME"`',
    ),
    (
        "stages",
        "array of tables",
        "(required)",
        "`kind` of a registered stage, optional `id` (default `NN-kind`); every other key is an option of the stage",
    ),
    (
        "loggers",
        "array of names or tables",
        "[]",
        'trackers of the run: `loggers = ["tensorboard"]`, or `[[loggers]]` tables with `name` and the '
        "logger's options; see docs/tracking.md",
    ),
]


def _type_name(ann: Any) -> str:
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    text = text or str(ann).replace("typing.", "")
    for a, b in (
        ("rtk.refs.", ""),
        ("AttackRef", "attack"),
        ("TrainerRef", "trainer"),
        ("PrunerRef", "pruner"),
        ("SimilarityRef", "similarity metric"),
        ("CertifierRef", "certifier"),
        ("NoneType", "none"),
        ("Annotated[float, BeforeValidator(func=<function parse_fraction at", "fraction"),
    ):
        text = text.replace(a, b)
    if ann is Span:
        return 'epochs (a number) or a share of the run ("10%")'
    if "fraction" in text:
        text = 'float or fraction ("8/255")' + (" | none" if "None" in str(ann) else "")
    return text


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    if field.default is not PydanticUndefined:
        d = field.default
    elif field.default_factory is not None:
        try:
            d = field.default_factory()
        except TypeError:
            return ""
    else:
        return ""
    if isinstance(d, BaseModel):
        d = getattr(d, "name", d)
    if isinstance(d, list):
        d = [getattr(x, "name", x) for x in d]
    if isinstance(d, float):
        return f"{d:.6g}"
    return repr(d) if isinstance(d, str) else str(d)


def options_table(model: type[BaseModel]) -> str:
    fields = model.model_fields
    if not fields:
        return "No options.\n"
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in fields.items():
        desc = (f.description or "").replace("|", "\\|")
        typ = _type_name(f.annotation).replace("|", "\\|")
        default = _default(f).replace("|", "\\|")
        lines.append(f"| `{name}` | {typ} | {default} | {desc} |")
    return "\n".join(lines) + "\n"


def experiment_reference(registry: Any) -> str:
    out = [
        "# Experiment file reference",
        "",
        "Generated from the registry by `rtk reference` (built-in plugins; installed plugins add more). "
        "Every table rejects unknown keys; errors name the file and the key path.",
        "",
        "## Top level",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    assert set(Experiment.model_fields) | {"sweep"} >= {k.split(".")[0] for k, *_ in _TOP}
    for key, typ, default, meaning in _TOP:
        out.append(f"| `{key}` | {typ} | {default} | {meaning} |")
    out.append("")
    out.append(
        "A component inside stage options (a trainer, an attack, ...) is written as its name, or as a table "
        'with `name` and its options: `attacks = ["pgd", { name = "fgsm", eps = "4/255" }]`.'
    )
    out.append("")
    for kind, title in _KIND_TITLES:
        regs = registry.registrations(kind)
        if not regs:
            continue
        out += [f"## {title}", ""]
        for r in regs:
            source = getattr(r.spec, "source", None)
            title_ = f"{r.spec.name}:{source}" if source else r.spec.name
            out += [f"### `{title_}`", "", f"{r.spec.summary} (plugin `{r.plugin}`)", ""]
            if source:
                out += [f"A source: written `{r.spec.name}:{source}`; the part after `{r.spec.name}:` is `source`.", ""]
            if r.spec.options.model_config.get("extra") == "allow":
                out += [
                    "Keys beyond this table are passed on as keyword arguments and checked against its signature.",
                    "",
                ]
            if kind != "command":
                out += [options_table(r.spec.options)]
    return "\n".join(out).rstrip() + "\n"
