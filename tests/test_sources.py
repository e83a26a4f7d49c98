"""Model and dataset sources in experiment files (python:, module:, torchvision:, timm:,
tensors, init = state dict), and checkpoints that remember their data."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from experimenthelpers import digits_experiment, experiment_toml
from pydantic import Field
from torch import nn

import rtk
from rtk.cli.main import cli
from rtk.data import DataInfo, DataOptions
from rtk.models import Normalize

GRAY8 = DataInfo("gray8", 10, 1, 8, 8, (0.3,), (0.4,))

NET_PY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden * 64, num_classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def not_a_model(width: int = 3):
    return "a string"
"""


@pytest.fixture()
def pm():
    return rtk.plugin_manager(entry_points=False)


def _cli(pm, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], obj=pm)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_python_source_runs_train_evaluate_prune_similarity(tmp_path, registry):
    _write(tmp_path / "code" / "net.py", NET_PY)
    stages = (
        {
            "kind": "train",
            "model": "net",
            "trainer": {"name": "pgd-at", "eps": 0.1, "steps": 2},
            "epochs": 2,
            "lr": 0.05,
            "eval_every": 0,
        },
        {
            "kind": "evaluate",
            "models": ["net"],
            "attacks": [{"name": "pgd", "steps": 2}],
            "eps": [0.1],
            "checks": False,
        },
        {
            "kind": "prune",
            "model": "net",
            "pruners": ["lwm"],
            "compression": [2],
            "trainer": "standard",
            "score_epochs": 0,
            "finetune_epochs": 1,
            "keep_first": False,
            "eval_limit": 40,
            "attacks": [{"name": "pgd", "eps": 0.1, "steps": 2}],
        },
        {"kind": "similarity", "pairs": [["net", "net-lwm-2x"]], "limit": 40},
    )
    experiment = digits_experiment(
        "own", *stages, limits=(300, 60), model={"arch": "python:code/net.py:Net", "hidden": 4}
    )
    exp = _write(tmp_path / "exp.toml", experiment_toml(experiment))
    res = rtk.run(exp, registry=registry, out=tmp_path / "run")
    assert set(res.stages) == {"01-train", "02-evaluate", "03-prune", "04-similarity"}
    assert float(res.table("worst_case")["clean_accuracy"].iloc[0]) > 0.3
    assert list(res.table("diagonal")["layer"]) == ["conv", "relu", "fc"]
    spec = rtk.models.read_spec(tmp_path / "run" / "checkpoints" / "net" / "last")
    assert spec["arch"] == "python" and spec["options"]["hidden"] == 4
    assert spec["options"]["source"] == f"{(tmp_path / 'code' / 'net.py').resolve()}:Net"
    assert spec["dataset"] == {
        "name": "digits",
        "options": {"limit_train": 300, "limit_test": 60},
        "normalize": None,
        "rebuildable": True,
    }
    # a checkpoint's JSON never decides what code runs: the bare checkpoint is refused ...
    out = _cli(rtk.plugin_manager(entry_points=False), "evaluate", tmp_path / "run" / "checkpoints" / "net" / "last")
    assert out.exit_code != 0 and "does not run code named inside a checkpoint" in out.output
    # ... while the experiment that names the code may evaluate it
    exp2 = _write(
        tmp_path / "again.toml",
        """
        [dataset]
        name = "digits"
        limit_test = 30
        [models.net]
        arch = "python:code/net.py:Net"
        hidden = 4
        checkpoint = "run/checkpoints/net/last"
        """,
    )
    out = _cli(
        rtk.plugin_manager(entry_points=False),
        "evaluate",
        exp2,
        "-a",
        "pgd:steps=1",
        "--no-checks",
        "--out",
        tmp_path / "ev",
    )
    assert out.exit_code == 0, out.output


def test_bad_sources_are_reported_before_any_work(tmp_path, registry):
    _write(tmp_path / "net.py", NET_PY)
    data = {
        "dataset": "digits",
        "models": {
            "a": {"arch": "python:missing.py:Net"},
            "b": {"arch": "python:net.py:Nett"},
            "c": {"arch": "python:net.py:Net", "hiden": 3},
            "d": {"arch": "python:net.py:not_a_model"},
            "e": {"arch": "torchvision:resnet81"},
            "f": {"arch": "module:no_such_pkg_xyz:make"},
            "g": {"arch": "python:net.py"},
        },
        "stages": [{"kind": "train", "model": "a", "epochs": 1}],
    }
    with pytest.raises(rtk.ConfigError) as err:
        rtk.plan(rtk.experiment_from_dict(data, source="exp.toml", base_dir=tmp_path), registry)
    text = str(err.value)
    assert "models.a: python source 'missing.py:Net'" not in text  # resolved against the experiment's folder
    assert f"file {tmp_path / 'missing.py'} not found" in text
    assert "has no 'Nett' (did you mean 'Net'?)" in text
    assert "takes no option 'hiden'; its parameters: num_classes, in_channels, hidden" in text
    assert "returned str, not a torch.nn.Module" in text
    assert "no classification model 'resnet81' (did you mean 'resnet18'" in text
    assert "cannot import 'no_such_pkg_xyz'" in text
    assert "expected '<file.py>:<callable>'" in text
    assert len(err.value.problems) == 7


def test_module_source_and_trust(tmp_path, monkeypatch, registry):
    _write(tmp_path / "pkg_nets" / "__init__.py", NET_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = rtk.experiment_from_dict(
        {
            "dataset": {"name": "digits", "limit_test": 10},
            "models": {"m": {"arch": "module:pkg_nets:Net", "hidden": 2}},
            "stages": [{"kind": "evaluate", "models": ["m"], "attacks": ["fgsm"], "checks": False}],
        },
        source="<dict>",
        base_dir=tmp_path,
    )
    planned = rtk.plan(exp, registry)
    model = planned.models["m"].spec.build(GRAY8, planned.models["m"].options)
    assert model.conv.out_channels == 2 and model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    from rtk.models.sources import require_trusted

    with pytest.raises(rtk.CheckpointError, match="does not run code named inside a checkpoint"):
        require_trusted("module", "os:system")


def test_torchvision_and_timm_sources(tmp_path, pm, monkeypatch):
    reg = rtk.default_registry()
    tv = reg.get("model", "torchvision")
    model = tv.build(GRAY8, tv.options(source="resnet18"))
    assert isinstance(model.norm, Normalize) and model.net.conv1.in_channels == 1
    assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    exp = _write(
        tmp_path / "tv.toml",
        """
        [dataset]
        name = "digits"
        [models.r]
        arch = "torchvision:resnet18"
        [models.t]
        arch = "timm:resnet18"
        [[stages]]
        kind = "train"
        model = "r"
        epochs = 1
        """,
    )
    out = _cli(pm, "run", exp, "--dry-run")
    assert out.exit_code == 0, out.output
    assert "model r: torchvision (source=resnet18)" in out.output
    timm = reg.get("model", "timm")
    tm = timm.build(GRAY8, timm.options(source="resnet18"))
    assert tm.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the optional extra were missing
    with pytest.raises(rtk.ConfigError, match=r'pip install "rtk\[timm\]"'):
        timm.build(GRAY8, timm.options(source="resnet18"))


def test_init_from_a_plain_state_dict(tmp_path, registry, digits):
    from safetensors.torch import save_file

    _write(tmp_path / "net.py", NET_PY)
    sys.path.insert(0, str(tmp_path))
    try:
        import net as user_net  # noqa: PLC0415 - the user's own file
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(1)
    src = user_net.Net(hidden=4)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    wide = {k: v for k, v in src.state_dict().items() if k != "fc.bias"}
    wide["extra.weight"] = torch.zeros(2)
    torch.save(wide, tmp_path / "partial.pt")

    def run(init, strict=True, name="x"):
        decl = {"arch": "python:net.py:Net", "hidden": 4, "init": init, "strict": strict}
        exp = rtk.experiment_from_dict(
            {
                "name": name,
                "dataset": "digits",
                "models": {"m": decl},
                "stages": [{"kind": "evaluate", "models": ["m"], "attacks": ["fgsm"], "checks": False}],
            },
            source="<dict>",
            base_dir=tmp_path,
        )
        return rtk.execute(rtk.plan(exp, registry), out=tmp_path / name)

    x, y = digits.test.x, digits.test.y
    expected = float((src(x).argmax(1) == y).float().mean())
    for i, f in enumerate(("w.pt", "w.safetensors")):
        res = run(f, name=f"r{i}")
        assert float(res.table("worst_case")["clean_accuracy"].iloc[0]) == pytest.approx(expected)
        report = pd.read_csv(res.path / "tables" / "init" / "m.csv")
        assert set(report["status"]) == {"loaded"}
    with pytest.raises(
        rtk.CheckpointError, match=r"2 of 5 tensors.*extra.weight: unexpected.*fc.bias: missing.*strict = false"
    ):
        run("partial.pt", name="r3")
    res = run("partial.pt", strict=False, name="r4")
    report = pd.read_csv(res.path / "tables" / "init" / "m.csv").set_index("key")["status"]
    assert report["fc.bias"] == "missing" and report["extra.weight"] == "unexpected" and report["fc.weight"] == "loaded"
    with pytest.raises(rtk.ConfigError, match="models.m.init: file not found"):
        run("nope.pt", name="r5")


def _splits(digits):
    return (digits.train.x[:200], digits.train.y[:200]), (digits.test.x[:50], digits.test.y[:50])


def test_dataset_sources(tmp_path, registry, digits):
    from safetensors.torch import save_file

    (xtr, ytr), (xte, yte) = _splits(digits)
    _write(
        tmp_path / "data.py",
        """
        import torch
        from rtk.data import TensorSplit

        def load(n=200, scale=1.0):
            from rtk.data import load_digits
            d = load_digits()
            return (d.train.x[:n] * scale, d.train.y[:n]), TensorSplit(d.test.x[:50], d.test.y[:50])
        """,
    )
    np.savez(tmp_path / "train.npz", x=(xtr.numpy() * 255).astype(np.uint8), y=ytr.numpy())
    save_file({"x": xte.contiguous(), "y": yte.contiguous()}, str(tmp_path / "test.safetensors"))

    def bundle(dataset):
        exp = rtk.experiment_from_dict(
            {
                "dataset": dataset,
                "models": {"m": {"arch": "mlp", "hidden": [8]}},
                "stages": [{"kind": "train", "model": "m", "epochs": 1}],
            },
            source="<dict>",
            base_dir=tmp_path,
        )
        planned = rtk.plan(exp, registry)
        return planned.dataset_spec.load(planned.dataset_options)

    b = bundle({"name": "python:data.py:load", "n": 120})
    assert len(b.train) == 120 and len(b.test) == 50
    assert (b.info.num_classes, b.info.channels, b.info.height) == (10, 1, 8)
    assert b.info.mean[0] == pytest.approx(float(xtr[:120].mean()), rel=1e-4)
    t = bundle({"name": "tensors", "train": "train.npz", "test": "test.safetensors"})
    assert torch.allclose(t.train.x, xtr, atol=1 / 255) and torch.equal(t.test.y, yte)
    s = bundle({"name": "tensors", "train": "train.npz", "test_fraction": 0.5})
    assert len(s.train) == len(s.test) == 100
    fake = bundle({"name": "torchvision:FakeData", "size": 12, "image_size": [1, 8, 8], "num_classes": 3})
    assert len(fake.train) == 12 and fake.info.channels == 1 and fake.train[0][0].max() <= 1
    with pytest.raises(rtk.ConfigError) as err:
        bundle({"name": "tensors", "train": "nope.npz"})
    assert "dataset: train: file" in str(err.value) and "not found" in str(err.value)
    with pytest.raises(rtk.ConfigError, match="no dataset class 'FakeDat'.*did you mean 'FakeData'"):
        bundle({"name": "torchvision:FakeDat"})
    with pytest.raises(rtk.ConfigError, match="takes no option 'sclae'"):
        bundle({"name": "python:data.py:load", "sclae": 2})
    with pytest.raises(rtk.DataError, match=r"must lie in \[0, 1\]"):
        bundle({"name": "python:data.py:load", "scale": 3.0})


class NoisyOptions(DataOptions):
    noise: float = Field(0.1, ge=0, description="std of the Gaussian noise added to every image")


class NoisyDigits:
    """A dataset plugin with a non-default option, as in the issue's report."""

    @staticmethod
    @rtk.hookimpl
    def rtk_datasets():
        def load(o: NoisyOptions):
            from rtk.data import DatasetBundle, TensorSplit, load_digits

            d = load_digits()
            g = torch.Generator().manual_seed(0)

            def noisy(s):
                return TensorSplit((s.x + o.noise * torch.randn(s.x.shape, generator=g)).clamp(0, 1), s.y)

            return DatasetBundle(d.info, noisy(d.train), noisy(d.test))

        yield rtk.DatasetSpec(name="noisy-digits", summary="digits plus noise", options=NoisyOptions, load=load)


def test_bare_checkpoint_is_evaluated_on_the_data_it_was_trained_on(tmp_path):
    """Regression: a model trained on noise = 0.05 was evaluated on the default noise = 0.1."""
    pm = rtk.plugin_manager(entry_points=False, extra=[("noisy", NoisyDigits)])
    reg = rtk.Registry.from_plugin_manager(pm)
    rtk.run(
        {
            "name": "noisy",
            "dataset": {"name": "noisy-digits", "noise": 0.05},
            "models": {"m": {"arch": "mlp", "hidden": [16]}},
            "stages": [{"kind": "train", "model": "m", "epochs": 3, "lr": 0.05, "eval_every": 0}],
        },
        registry=reg,
        out=tmp_path / "train",
    )
    ckpt = tmp_path / "train" / "checkpoints" / "m" / "last"
    model, _, spec = rtk.models.load_checkpoint(ckpt, reg)
    assert spec["dataset"]["options"] == {"noise": 0.05}
    assert spec["dataset"]["normalize"]["mean"] == pytest.approx(list(spec["data"]["mean"]))  # mlp's Normalize

    def clean(noise):
        bundle = reg.get("dataset", "noisy-digits").load(NoisyOptions(noise=noise))
        with torch.no_grad():
            return float((model.eval()(bundle.test.x).argmax(1) == bundle.test.y).float().mean())

    out = _cli(pm, "evaluate", ckpt, "-a", "fgsm:eps=0.01", "--no-checks", "--out", tmp_path / "ev")
    assert out.exit_code == 0, out.output
    assert "noisy-digits (noise=0.05), as recorded in" in out.output
    got = float(pd.read_csv(tmp_path / "ev" / "tables" / "evaluate" / "worst_case.csv")["clean_accuracy"].iloc[0])
    assert got == pytest.approx(clean(0.05))
    out = _cli(pm, "certify", ckpt, "-c", "ibp", "--eps", "0.01", "--limit", "20")
    assert out.exit_code == 0 and "on noisy-digits" in out.output and "as recorded in" in out.output
    out = _cli(pm, "similarity", ckpt, "--limit", "16", "--out", tmp_path / "sim")
    assert out.exit_code == 0, out.output
    assert "noisy-digits (noise=0.05), as recorded in" in out.output
    assert json.loads((tmp_path / "sim" / "config.json").read_text())["dataset"]["options"]["noise"] == 0.05
    # a checkpoint written before datasets were recorded: said, with the reason
    js = ckpt.with_suffix(".json")
    old = json.loads(js.read_text())
    del old["dataset"]
    js.write_text(json.dumps(old))
    out = _cli(pm, "evaluate", ckpt, "-a", "fgsm:eps=0.01", "--no-checks", "--out", tmp_path / "ev2")
    assert out.exit_code == 0 and "records no dataset options" in out.output


def test_sources_are_listed_and_documented(pm):
    out = _cli(pm, "plugins", "--kind", "model")
    for label in ("python:<file.py>:<callable>", "module:<package.module>:<callable>", "torchvision:<name>"):
        assert label in out.output
    out = _cli(pm, "plugins", "--kind", "dataset")
    assert "torchvision:<ClassName>" in out.output and "tensors" in out.output
    ref = _cli(pm, "reference").output
    assert "### `python:<file.py>:<callable>`" in ref and "### `tensors`" in ref


def test_checkpoints_never_run_code_or_claim_data_they_cannot_rebuild(tmp_path, registry, pm, digits, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a dict experiment's paths are relative to the working directory
    _write(
        tmp_path / "data.py",
        """
        from rtk.data import load_digits

        def load():
            d = load_digits()
            return (d.train.x[:100], d.train.y[:100]), (d.test.x[:30], d.test.y[:30])
        """,
    )
    rtk.run(
        {
            "name": "code-data",
            "dataset": "python:data.py:load",
            "models": {"m": {"arch": "mlp", "hidden": [8]}},
            "stages": [{"kind": "train", "model": "m", "epochs": 1, "eval_every": 0}],
        },
        registry=registry,
        out=tmp_path / "run",
    )
    out = _cli(pm, "evaluate", tmp_path / "run" / "checkpoints" / "m" / "last", "-a", "fgsm", "--no-checks")
    assert "does not run on the word of a checkpoint" in out.output and out.exit_code != 0
    x, y = digits.test.x[:30], digits.test.y[:30]
    res = rtk.train(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (x, y), trainer="standard", epochs=1, out=tmp_path / "py"
    )
    assert res.path == tmp_path / "py" and (tmp_path / "py" / "report.md").exists()
    out = _cli(pm, "evaluate", tmp_path / "py" / "checkpoints" / "model" / "last")
    assert out.exit_code != 0 and "written by rtk.train / rtk.prune for a module handed over from Python" in out.output
