"""Where dataset files live, how they are found, and the errors when they are not.

Every file-based loader follows one rule: look in the folder the user named (``root``),
or, when none was named, in the dataset's default folders; accept both the flat layout
(files directly in the folder) and torchvision's layout (for example
``root/FashionMNIST/raw/``); and when nothing is found, raise a :class:`DataError` that
lists the exact files expected, the folders searched, and how to get the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)

#: Environment variable naming the folder under which datasets are downloaded and looked for.
DATA_ENV = "RTK_DATA"


def data_home() -> Path:
    """The folder holding rtk's datasets: ``$RTK_DATA`` or ``~/.cache/rtk/datasets``."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rtk" / "datasets"


def default_root(name: str) -> Path:
    """Where dataset ``name`` is downloaded when no root is given: ``data_home() / name``."""
    return data_home() / name


def candidate_dirs(roots: Sequence[Path], subdirs: Sequence[str] = ()) -> list[Path]:
    """Each root, then each root joined with each sub-folder of a known layout."""
    out: list[Path] = []
    for root in roots:
        for d in (root, *(root / s for s in subdirs)):
            if d not in out:
                out.append(d)
    return out


def resolve_file(folder: Path, name: str, *, gz_ok: bool = False) -> Path | None:
    """``folder/name`` (or ``folder/name.gz`` when ``gz_ok``) if it is a file, else None."""
    names = (f"{name}.gz", name) if gz_ok else (name,)
    for n in names:
        p = folder / n
        if p.is_file():
            return p
    return None


def find_folder(
    dirs: Sequence[Path], names: Sequence[str], *, gz_ok: bool = False
) -> tuple[Path, dict[str, Path]] | None:
    """The first folder of ``dirs`` holding every file in ``names``, with the resolved paths."""
    for d in dirs:
        found = {n: resolve_file(d, n, gz_ok=gz_ok) for n in names}
        if all(found.values()):
            return d, {n: p for n, p in found.items() if p is not None}
    return None


def missing_files_error(
    dataset: str,
    names: Sequence[str],
    dirs: Sequence[Path],
    how: Sequence[str],
    *,
    gz_ok: bool = False,
    partial: dict[Path, list[str]] | None = None,
) -> DataError:
    """A DataError saying which files are expected where, and how to get them."""
    shown = [f"{n}[.gz]" if gz_ok else n for n in names]
    lines = [f"dataset {dataset!r}: files not found. Expected {', '.join(shown)} in one of:"]
    lines += [f"  - {d}" for d in dirs]
    for d, missing in (partial or {}).items():
        lines.append(f"  ({d} exists but lacks {', '.join(missing)})")
    lines.append("To get them:")
    lines += [f"  - {h}" for h in how]
    return DataError("\n".join(lines))


def partial_folders(dirs: Sequence[Path], names: Sequence[str], *, gz_ok: bool = False) -> dict[Path, list[str]]:
    """Folders that hold some but not all of ``names`` (to say what exactly is missing)."""
    out: dict[Path, list[str]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        missing = [n for n in names if resolve_file(d, n, gz_ok=gz_ok) is None]
        if 0 < len(missing) < len(names):
            out[d] = missing
    return out


@dataclass(frozen=True)
class FileSource:
    """The files of one dataset: where they are looked for, and how to get them.

    ``download_key`` names the recipe of :func:`rtk.data.download.download` used by
    :meth:`ensure` when ``download`` is true and the files are missing.
    """

    dataset: str
    roots: tuple[Path, ...]
    names: tuple[str, ...]
    how: tuple[str, ...]
    download_root: Path
    subdirs: tuple[str, ...] = ()
    gz_ok: bool = False
    download_key: str | None = None

    def dirs(self) -> list[Path]:
        return candidate_dirs(self.roots, self.subdirs)

    def find(self) -> dict[str, Path] | None:
        hit = find_folder(self.dirs(), self.names, gz_ok=self.gz_ok)
        return None if hit is None else hit[1]

    def error(self) -> DataError:
        dirs = self.dirs()
        return missing_files_error(
            self.dataset,
            self.names,
            dirs,
            self.how,
            gz_ok=self.gz_ok,
            partial=partial_folders(dirs, self.names, gz_ok=self.gz_ok),
        )

    def problems(self, download: bool = False) -> list[str]:
        """Empty when the files are there (or will be downloaded), else the error message."""
        if (download and self.download_key) or self.find() is not None:
            return []
        return [str(self.error())]

    def ensure(self, download: bool = False) -> dict[str, Path]:
        """The resolved paths of every file, downloading first when asked and needed."""
        found = self.find()
        if found is None and download and self.download_key:
            from .download import download as fetch

            fetch(self.download_key, self.download_root)
            found = self.find()
        if found is None:
            raise self.error()
        log.debug("dataset %s: using %s", self.dataset, sorted(str(p) for p in found.values()))
        return found
