"""Model and dataset *sources*: what the user already has, without writing a plugin.

Models (``[models.NAME] arch = "<source>:<what>"``; other keys are keyword options):

- ``python:<file.py>:<callable>``: a callable in a file, relative to the experiment file
- ``module:<package.module>:<callable>``: a callable of an importable module
- ``torchvision:<name>``: a torchvision classification builder, no weights, first convolution
  adapted to the data's channels
- ``timm:<name>``: a timm model (optional extra ``rtk[timm]``)

Datasets (``[dataset] name = "<source>:<what>"`` or ``name = "tensors"``):

- ``python:<file.py>:<callable>`` / ``module:<package.module>:<callable>`` returning a Dataset,
  a ``(train, test)`` pair, or a ``{train, test}`` table
- ``tensors``: ``.npz`` / ``.safetensors`` files holding ``x`` and ``y``
- ``torchvision:<ClassName>``: any torchvision dataset class, through the ``download`` switch
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from pydantic import ConfigDict, Field

import rtk
from rtk.data import DataOptions

components = rtk.Components()

OPTIONS_HELP = "every other key is passed to the callable as a keyword argument"


#: The ``source`` forms of the user-code sources.
_CODE_FORMS = {"python": "<file.py>:<callable>", "module": "<package.module>:<callable>"}


def _source_field(key: str, kind: str) -> Any:
    """The ``source`` option of the user-code source ``kind``, written ``key = "<kind>:..."``."""
    form = _CODE_FORMS[kind]
    where = ", the file relative to the experiment file" if kind == "python" else ""
    return Field(description=f"'{form}'{where}; written {key} = \"{kind}:{form}\"; {OPTIONS_HELP}")


class _Kwargs(rtk.Options):
    """Options that pass every key they do not declare on, as keyword arguments (``kwargs``)."""

    model_config = ConfigDict(extra="allow")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _FileSource(rtk.Options):
    """A user-code source whose file is named relative to the experiment file."""

    source: str

    def relative_to(self, base: Path) -> Self:
        from rtk.models import rebase_source

        return self.model_copy(update={"source": rebase_source(self.source, base)})


class _CodeOptions(_Kwargs):
    """Options of a user-code source: ``source`` plus the callable's own keyword options."""

    source: str = Field(description="'<file.py>:<callable>' or '<package.module>:<callable>'")


class PythonModelOptions(_FileSource, _CodeOptions):
    source: str = _source_field("arch", "python")


class ModuleModelOptions(_CodeOptions):
    source: str = _source_field("arch", "module")


class LibraryModelOptions(_Kwargs):
    source: str = Field(description="the library's model name; every other key is passed to its builder")


def _code_sources(
    record: Callable[..., Any],
    options: tuple[type[rtk.Options], type[rtk.Options]],
    summaries: tuple[str, str],
    **make: Callable[[str], Callable[..., Any]],
) -> None:
    """Declare the ``python`` and ``module`` sources of one kind (models, datasets), in that order;
    ``make`` gives each of the record's callables, made for the source's name."""
    for kind, opts, summary in zip(_CODE_FORMS, options, summaries):
        callables = {key: made(kind) for key, made in make.items()}
        components.add(record(name=kind, summary=summary, options=opts, source=_CODE_FORMS[kind], **callables))


def _code_check(kind: str):
    return lambda o: rtk.models.check_code_model(kind, o.source, o.kwargs)


def _code_build(kind: str):
    return lambda info, o: rtk.models.build_code_model(kind, o.source, o.kwargs, info)


_code_sources(
    rtk.ModelSpec,
    (PythonModelOptions, ModuleModelOptions),
    (
        "source: a callable in your own Python file (relative to the experiment file) returning an nn.Module",
        "source: a callable of an importable module returning an nn.Module",
    ),
    build=_code_build,
    check=_code_check,
)


def _torchvision_model_check(o: LibraryModelOptions) -> list[str]:
    return rtk.models.check_torchvision_model(o.source, o.kwargs)


@components.register(rtk.ModelSpec, "torchvision", LibraryModelOptions, check=_torchvision_model_check, source="<name>")
def _torchvision_model(info, o: LibraryModelOptions):
    """source: any torchvision classification builder (no weights; classes and input channels adapted)"""
    return rtk.models.build_torchvision(o.source, o.kwargs, info)


def _timm_check(o: LibraryModelOptions) -> list[str]:
    return rtk.models.check_timm(o.source)


@components.register(rtk.ModelSpec, "timm", LibraryModelOptions, check=_timm_check, source="<name>")
def _timm_model(info, o: LibraryModelOptions):
    """source: any timm model, no pretrained weights (optional extra rtk[timm])"""
    return rtk.models.build_timm(o.source, o.kwargs, info)


# ---------------------------------------------------------------------------- datasets
class _CodeDataOptions(DataOptions, _Kwargs):
    source: str = Field(description="'<file.py>:<callable>' or '<package.module>:<callable>'")
    num_classes: int | None = Field(None, ge=1, description="number of classes (default: the largest label + 1)")


class PythonDataOptions(_FileSource, _CodeDataOptions):
    source: str = _source_field("name", "python")


class ModuleDataOptions(_CodeDataOptions):
    source: str = _source_field("name", "module")


def _data_check(kind: str):
    return lambda o: rtk.data.check_code_dataset(kind, o.source, o.kwargs)


def _data_load(kind: str):
    return lambda o: rtk.data.load_code_dataset(kind, o.source, o.kwargs, num_classes=o.num_classes)


class TensorsOptions(DataOptions):
    train: str = Field(description="a .npz or .safetensors file holding x [N, C, H, W] in [0, 1] (or uint8) and y [N]")
    test: str | None = Field(None, description="the test split's file (default: hold out test_fraction of train)")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share held out for testing when no test file is given")
    num_classes: int | None = Field(None, ge=1, description="number of classes (default: the largest label + 1)")
    name: str = Field("tensors", description="dataset name shown in reports")

    def relative_to(self, base: Path) -> TensorsOptions:
        def rebase(p: str | None) -> str | None:
            if p is None or Path(p).expanduser().is_absolute():
                return p
            return str((base / p).resolve())

        return self.model_copy(update={"train": rebase(self.train), "test": rebase(self.test)})


def _tensors_check(o: TensorsOptions) -> list[str]:
    from rtk.data import tensor_file_problems

    return tensor_file_problems(train=o.train, test=o.test)


@components.register(rtk.DatasetSpec, "tensors", TensorsOptions, check=_tensors_check)
def _tensors(o: TensorsOptions):
    """source: .npz / .safetensors files of x and y (images in [0, 1] or uint8, integer labels)"""
    from rtk.data import load_tensor_files

    return load_tensor_files(
        o.train, o.test, test_fraction=o.test_fraction, seed=o.seed, num_classes=o.num_classes, name=o.name
    )


class TorchvisionDataOptions(DataOptions, _Kwargs):
    source: str = Field(description='the torchvision.datasets class, e.g. "MNIST"; written name = "torchvision:MNIST"')
    root: str | None = Field(None, description="folder of the files (default: $RTK_DATA/<class name>)")
    download: bool = Field(False, description="download the files through torchvision when missing (needs network)")


def _torchvision_data_check(o: TorchvisionDataOptions) -> list[str]:
    from rtk.data import torchvision_problems

    return torchvision_problems(o.source, o.kwargs)


@components.register(
    rtk.DatasetSpec, "torchvision", TorchvisionDataOptions, check=_torchvision_data_check, source="<ClassName>"
)
def _torchvision_data(o: TorchvisionDataOptions):
    """source: any torchvision dataset class by name (download switch as for the built-in sets)"""
    from rtk.data import data_home, load_torchvision_dataset

    root = o.root or str(data_home() / o.source)
    return load_torchvision_dataset(o.source, root, download=o.download, kwargs=o.kwargs)


_code_sources(
    rtk.DatasetSpec,
    (PythonDataOptions, ModuleDataOptions),
    (
        "source: a callable in your own Python file returning a Dataset or a (train, test) pair",
        "source: a callable of an importable module returning a Dataset or a (train, test) pair",
    ),
    load=_data_load,
    check=_data_check,
)

rtk_models = components.hookimpl(rtk.ModelSpec)
rtk_datasets = components.hookimpl(rtk.DatasetSpec)
