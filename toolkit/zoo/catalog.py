"""What the RobustBench zoo holds: entry ids, architectures, files, reported accuracies.

An entry is named ``<dataset>/<threat>/<name>``, for example ``cifar10/Linf/Ding2020MMA``.
Everything here comes from the installed robustbench package: the model constructors
in ``robustbench.model_zoo.model_dicts`` and the model-zoo tables of its README (the
package's long description, with the reported clean and robust accuracy). The
leaderboard JSON files are not shipped in the wheel, so nothing more is known offline.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import io
import re
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .compat import ZooError, import_robustbench

#: Canonical dataset names and the data their models expect: (classes, channels, height, width).
DATASETS: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (10, 3, 32, 32),
    "cifar100": (100, 3, 32, 32),
    "imagenet": (1000, 3, 224, 224),
}
#: Canonical threat models (``corruptions_3d`` entries live under ``corruptions``).
THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")

_DATASET_ALIASES = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "imagenet": "imagenet",
}
_THREAT_ALIASES = {t.lower(): t for t in THREATS} | {"l-inf": "Linf", "linfinity": "Linf", "l_inf": "Linf"}

#: Where robustbench's weights come from, for messages (Google Drive file ids).
GDRIVE_URL = "https://drive.google.com/uc?id={}"
LEADERBOARD_NOTE = (
    "the RobustBench leaderboard JSON files (reported accuracies per model) are not shipped in the "
    "robustbench wheel; rtk shows the model-zoo tables of robustbench's README instead"
)


def canonical_dataset(name: str) -> str:
    key = name.strip().lower()
    if key not in _DATASET_ALIASES:
        raise ZooError(f"unknown RobustBench dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return _DATASET_ALIASES[key]


def canonical_threat(name: str) -> str:
    key = name.strip().lower()
    if key not in _THREAT_ALIASES:
        raise ZooError(f"unknown RobustBench threat model {name!r}; allowed: {', '.join(THREATS)}")
    return _THREAT_ALIASES[key]


@dataclass(frozen=True)
class ZooId:
    """A zoo entry: ``dataset/threat/name``."""

    dataset: str
    threat: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ZooId:
        parts = [p for p in str(text).strip().split("/")]
        if len(parts) != 3 or not all(parts):
            raise ZooError(
                f"expected a RobustBench model id of the form '<dataset>/<threat>/<name>' "
                f"(for example 'cifar10/Linf/Carmon2019Unlabeled'), got {text!r}"
            )
        return cls(canonical_dataset(parts[0]), canonical_threat(parts[1]), parts[2])

    @property
    def folder(self) -> str:
        """The threat folder robustbench stores weights in (``corruptions_3d`` -> ``corruptions``)."""
        return self.threat.replace("_3d", "")

    def __str__(self) -> str:
        return f"{self.dataset}/{self.threat}/{self.name}"


@dataclass(frozen=True)
class Reported:
    """One row of robustbench's README model-zoo tables."""

    rank: int | None
    clean_acc: float | None
    robust_acc: float | None
    eps: str | None
    architecture: str | None
    paper: str | None
    link: str | None
    venue: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ZooEntry:
    """What robustbench ships about one zoo entry."""

    id: ZooId
    constructor: str | None
    params: int | None
    gdrive_ids: tuple[str, ...]
    timm_name: str | None
    reported: Reported | None
    supported: bool
    why_not: str | None = None

    @property
    def architecture(self) -> str:
        if self.reported and self.reported.architecture:
            return self.reported.architecture
        return self.constructor or "?"

    @property
    def ensemble(self) -> int:
        return len(self.gdrive_ids) if len(self.gdrive_ids) > 1 else 1

    def files(self) -> list[str]:
        """Weight files relative to the model directory (robustbench's layout)."""
        base = f"{self.id.dataset}/{self.id.folder}/{self.id.name}.pt"
        if self.ensemble > 1:
            return [f"{base}_m{i}.pt" for i in range(self.ensemble)]
        return [base]

    def sources(self) -> list[str]:
        return [GDRIVE_URL.format(g) for g in self.gdrive_ids]

    def to_dict(self) -> dict[str, Any]:
        rep = self.reported.to_dict() if self.reported else {}
        return {
            "id": str(self.id),
            "dataset": self.id.dataset,
            "threat": self.id.threat,
            "name": self.id.name,
            "architecture": self.architecture,
            "constructor": self.constructor,
            "params": self.params,
            "ensemble": self.ensemble,
            "files": self.files(),
            "gdrive_ids": list(self.gdrive_ids),
            "timm_name": self.timm_name,
            "supported": self.supported,
            "why_not": self.why_not,
            "reported_clean_acc": rep.get("clean_acc"),
            "reported_robust_acc": rep.get("robust_acc"),
            "reported_eps": rep.get("eps"),
            "paper": rep.get("paper"),
            "link": rep.get("link"),
            "venue": rep.get("venue"),
        }


# ---------------------------------------------------------------------------- robustbench access
def _enums():
    import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return BenchmarkDataset, ThreatModel


def model_table(dataset: str, threat: str) -> dict[str, dict[str, Any]]:
    """robustbench's dict ``name -> {"model": constructor, "gdrive_id": ...}``."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    BenchmarkDataset, ThreatModel = _enums()
    by_ds = model_dicts.get(BenchmarkDataset(dataset), {})
    return dict(by_ds.get(ThreatModel(threat), {}))


def available_threats(dataset: str) -> list[str]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    BenchmarkDataset, _ = _enums()
    return [t.value for t in model_dicts.get(BenchmarkDataset(dataset), {})]


def _timm_name(zid: ZooId) -> str | None:
    """robustbench serves some entries through timm (weights from a model hub)."""
    import timm

    name = f"{zid.name.lower().replace('-', '_')}_{zid.dataset}_{zid.folder.lower()}"
    return name if timm.is_model(name) else None


#: Entries whose weights robustbench loads with bespoke code that rtk does not reproduce.
_BESPOKE_PREFIXES = ("Bai2023Improving", "Bai2024MixedNUTS")


def _support(zid: ZooId, gdrive: Any, timm_name: str | None) -> tuple[bool, str | None]:
    if timm_name is not None or gdrive is None:
        return False, (
            "robustbench serves this entry through timm from a model hub; rtk loads only "
            "checkpoint files from the model directory"
        )
    if zid.name.startswith(_BESPOKE_PREFIXES):
        return False, "this composite model needs robustbench's bespoke loading code, which rtk does not run"
    return True, None


def _describe_constructor(ctor: Any) -> tuple[str | None, int | None]:
    """Build the architecture on the meta device (no memory, no weights): class name and size."""
    import torch

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.device("meta"):
            warnings.simplefilter("ignore")
            module = ctor()
        return type(module).__name__, sum(p.numel() for p in module.parameters())
    except Exception:  # noqa: BLE001 - some constructors need CUDA or real tensors
        names = getattr(getattr(ctor, "__code__", None), "co_names", ())
        return (names[0] if names else None), None


def entry(zid: ZooId | str, *, describe: bool = True) -> ZooEntry:
    """The entry ``zid``; raises :class:`ZooError` naming close matches when unknown."""
    zid = ZooId.parse(zid) if isinstance(zid, str) else zid
    table = model_table(zid.dataset, zid.threat)
    if not table:
        raise ZooError(
            f"RobustBench has no {zid.threat} models for {zid.dataset}; "
            f"threat models there: {', '.join(available_threats(zid.dataset))}"
        )
    if zid.name not in table:
        close = difflib.get_close_matches(zid.name, list(table), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ZooError(
            f"unknown RobustBench model {str(zid)!r}{hint} (list them with `rtk zoo list --dataset "
            f"{zid.dataset} --threat {zid.threat}`)"
        )
    raw = table[zid.name]
    gdrive = raw.get("gdrive_id")
    gids: tuple[str, ...] = tuple(gdrive) if isinstance(gdrive, (list, tuple)) else ((gdrive,) if gdrive else ())
    timm_name = _timm_name(zid)
    supported, why = _support(zid, gdrive, timm_name)
    ctor_name, params = _describe_constructor(raw["model"]) if describe else (None, None)
    return ZooEntry(zid, ctor_name, params, gids, timm_name, reported_metrics().get(str(zid)), supported, why)


def entries(dataset: str | None = None, threat: str | None = None, *, describe: bool = True) -> list[ZooEntry]:
    """Every zoo entry, optionally for one dataset and/or threat model, in robustbench's order."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    want_ds = canonical_dataset(dataset) if dataset else None
    want_th = canonical_threat(threat) if threat else None
    out = []
    for ds_enum, by_threat in model_dicts.items():
        if want_ds and ds_enum.value != want_ds:
            continue
        for th_enum, table in by_threat.items():
            if want_th and th_enum.value != want_th:
                continue
            for name in table:
                out.append(entry(ZooId(ds_enum.value, th_enum.value, name), describe=describe))
    return out


def constructor(zid: ZooId) -> Any:
    """robustbench's constructor (a callable returning an ``nn.Module``) for ``zid``."""
    table = model_table(zid.dataset, zid.threat)
    if zid.name not in table:
        entry(zid, describe=False)  # raises the helpful error
    return table[zid.name]["model"]


# ---------------------------------------------------------------------------- README tables
_SECTION_DS = {"cifar-10": "cifar10", "cifar-100": "cifar100", "imagenet": "imagenet"}
_ROW = re.compile(r"^\|(.+)\|\s*$")
_TAG = re.compile(r"</?(?:sub|sup)>")
_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<url>[^)]*)\)")


def _cell(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", _TAG.sub("", text))
    return re.sub(r"\s+", " ", text.replace("**", "").replace("*", "")).strip()


def _percent(text: str) -> float | None:
    m = re.search(r"([0-9.]+)\s*%", text)
    return round(float(m.group(1)) / 100, 6) if m else None


def _section_threat(heading: str) -> tuple[str | None, str | None]:
    h = heading.lower()
    eps = None
    m = re.search(r"eps\s*=\s*([0-9./]+)", h)
    if m:
        eps = m.group(1)
    if h.startswith("linf"):
        return "Linf", eps
    if h.startswith("l2"):
        return "L2", eps
    if "corruption" in h:
        return "corruptions", None
    return None, None


def parse_readme_tables(text: str) -> dict[str, Reported]:
    """Parse the model-zoo tables of robustbench's README into ``{"ds/threat/name": Reported}``."""
    out: dict[str, Reported] = {}
    in_zoo = False
    dataset = threat = eps = None
    for line in text.splitlines():
        if line.startswith("## "):
            in_zoo = line.strip() == "## Model Zoo"
            dataset = threat = None
            continue
        if not in_zoo:
            continue
        if line.startswith("### "):
            dataset = _SECTION_DS.get(line[4:].strip().lower())
            threat = None
            continue
        if line.startswith("#### "):
            threat, eps = _section_threat(line[5:].strip())
            continue
        m = _ROW.match(line)
        if not (m and dataset and threat):
            continue
        cells = m.group(1).split("|")
        if len(cells) < 7 or "Model ID" in line or set(cells[0].strip()) <= set(":- "):
            continue
        name = _cell(cells[1])
        if not name:
            continue
        link = _LINK.search(cells[2])
        rank = _cell(cells[0])
        out[f"{dataset}/{threat}/{name}"] = Reported(
            rank=int(rank) if rank.isdigit() else None,
            clean_acc=_percent(cells[3]),
            robust_acc=_percent(cells[4]),
            eps=eps,
            architecture=_cell(cells[5]) or None,
            paper=_cell(link.group("text")) if link else _cell(cells[2]) or None,
            link=link.group("url") if link else None,
            venue=_cell(cells[6]) or None,
        )
    return out


@lru_cache(maxsize=1)
def reported_metrics() -> dict[str, Reported]:
    """The reported accuracies robustbench ships (in its README); empty when unavailable."""
    try:
        meta = importlib.metadata.metadata("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return {}
    text = meta.get_payload() if hasattr(meta, "get_payload") else None  # type: ignore[union-attr]
    text = text or (meta.get_all("Description") or [""])[0] or ""
    return parse_readme_tables(str(text))


def expected_paths(zid: ZooId | str, model_dir: str | Path) -> list[Path]:
    """Where the weights of ``zid`` must be: ``model_dir/<dataset>/<threat>/<name>.pt``."""
    zid = ZooId.parse(zid) if isinstance(zid, str) else zid
    e = entry(zid, describe=False)
    return [Path(model_dir) / f for f in e.files()]
