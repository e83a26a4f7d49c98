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

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

import rtk
from rtk.data import DataOptions

OPTIONS_HELP = "every other key is passed to the callable as a keyword argument"


class _CodeOptions(rtk.Options):
    """Options of a user-code source: ``source`` plus the callable's own keyword options."""

    model_config = ConfigDict(extra="allow")
    source: str = Field(description="'<file.py>:<callable>' or '<package.module>:<callable>'")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PythonModelOptions(_CodeOptions):
    source: str = Field(
        description="'<file.py>:<callable>', the file relative to the experiment file; written "
        f'arch = "python:<file.py>:<callable>"; {OPTIONS_HELP}'
    )

    def relative_to(self, base: Path) -> PythonModelOptions:
        from rtk.models import rebase_source

        return self.model_copy(update={"source": rebase_source(self.source, base)})


class ModuleModelOptions(_CodeOptions):
    source: str = Field(
        description=f"'<package.module>:<callable>'; written arch = \"module:<package.module>:<callable>\"; {OPTIONS_HELP}"
    )


class LibraryModelOptions(rtk.Options):
    model_config = ConfigDict(extra="allow")
    source: str = Field(description="the library's model name; every other key is passed to its builder")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _code_check(kind: str):
    return lambda o: rtk.models.check_code_model(kind, o.source, o.kwargs)


def _code_build(kind: str):
    return lambda info, o: rtk.models.build_code_model(kind, o.source, o.kwargs, info)


@rtk.hookimpl
def rtk_models():
    yield rtk.ModelSpec(
        name="python",
        summary="source: a callable in your own Python file (relative to the experiment file) returning an nn.Module",
        options=PythonModelOptions,
        build=_code_build("python"),
        check=_code_check("python"),
        source="<file.py>:<callable>",
    )
    yield rtk.ModelSpec(
        name="module",
        summary="source: a callable of an importable module returning an nn.Module",
        options=ModuleModelOptions,
        build=_code_build("module"),
        check=_code_check("module"),
        source="<package.module>:<callable>",
    )
    yield rtk.ModelSpec(
        name="torchvision",
        summary="source: any torchvision classification builder (no weights; classes and input channels adapted)",
        options=LibraryModelOptions,
        build=lambda info, o: rtk.models.build_torchvision(o.source, o.kwargs, info),
        check=lambda o: rtk.models.check_torchvision_model(o.source, o.kwargs),
        source="<name>",
    )
    yield rtk.ModelSpec(
        name="timm",
        summary="source: any timm model, no pretrained weights (optional extra rtk[timm])",
        options=LibraryModelOptions,
        build=lambda info, o: rtk.models.build_timm(o.source, o.kwargs, info),
        check=lambda o: rtk.models.check_timm(o.source),
        source="<name>",
    )


# ---------------------------------------------------------------------------- datasets
class _CodeDataOptions(DataOptions):
    model_config = ConfigDict(extra="allow")
    source: str = Field(description="'<file.py>:<callable>' or '<package.module>:<callable>'")
    num_classes: int | None = Field(None, ge=1, description="number of classes (default: the largest label + 1)")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PythonDataOptions(_CodeDataOptions):
    source: str = Field(
        description="'<file.py>:<callable>', the file relative to the experiment file; written "
        f'name = "python:<file.py>:<callable>"; {OPTIONS_HELP}'
    )

    def relative_to(self, base: Path) -> PythonDataOptions:
        from rtk.models import rebase_source

        return self.model_copy(update={"source": rebase_source(self.source, base)})


class ModuleDataOptions(_CodeDataOptions):
    source: str = Field(
        description=f"'<package.module>:<callable>'; written name = \"module:<package.module>:<callable>\"; {OPTIONS_HELP}"
    )


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


def _tensors(o: TensorsOptions):
    from rtk.data import load_tensor_files

    return load_tensor_files(
        o.train, o.test, test_fraction=o.test_fraction, seed=o.seed, num_classes=o.num_classes, name=o.name
    )


def _tensors_check(o: TensorsOptions) -> list[str]:
    from rtk.data import tensor_file_problems

    return tensor_file_problems(train=o.train, test=o.test)


class TorchvisionDataOptions(DataOptions):
    model_config = ConfigDict(extra="allow")
    source: str = Field(description='the torchvision.datasets class, e.g. "MNIST"; written name = "torchvision:MNIST"')
    root: str | None = Field(None, description="folder of the files (default: $RTK_DATA/<class name>)")
    download: bool = Field(False, description="download the files through torchvision when missing (needs network)")


def _torchvision_data(o: TorchvisionDataOptions):
    from rtk.data import data_home, load_torchvision_dataset

    root = o.root or str(data_home() / o.source)
    return load_torchvision_dataset(o.source, root, download=o.download, kwargs=dict(o.model_extra or {}))


def _torchvision_data_check(o: TorchvisionDataOptions) -> list[str]:
    from rtk.data import torchvision_problems

    return torchvision_problems(o.source, dict(o.model_extra or {}))


@rtk.hookimpl
def rtk_datasets():
    yield rtk.DatasetSpec(
        name="python",
        summary="source: a callable in your own Python file returning a Dataset or a (train, test) pair",
        options=PythonDataOptions,
        load=_data_load("python"),
        check=_data_check("python"),
        source="<file.py>:<callable>",
    )
    yield rtk.DatasetSpec(
        name="module",
        summary="source: a callable of an importable module returning a Dataset or a (train, test) pair",
        options=ModuleDataOptions,
        load=_data_load("module"),
        check=_data_check("module"),
        source="<package.module>:<callable>",
    )
    yield rtk.DatasetSpec(
        name="tensors",
        summary="source: .npz / .safetensors files of x and y (images in [0, 1] or uint8, integer labels)",
        options=TensorsOptions,
        load=_tensors,
        check=_tensors_check,
    )
    yield rtk.DatasetSpec(
        name="torchvision",
        summary="source: any torchvision dataset class by name (download switch as for the built-in sets)",
        options=TorchvisionDataOptions,
        load=_torchvision_data,
        check=_torchvision_data_check,
        source="<ClassName>",
    )
