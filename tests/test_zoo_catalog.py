"""The RobustBench zoo: importing robustbench as released, entry ids, what the zoo ships, and
the clear error when the optional extra is absent."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

import rtk
from rtk.zoo import ZooError, ZooId, ZooUnavailableError, robustbench_available

needs_robustbench = pytest.mark.skipif(
    not robustbench_available() and not os.environ.get("CI"),
    reason="robustbench (pip install 'rtk[zoo]') is not installed here",
)


# ---------------------------------------------------------------------------- ids (no robustbench needed)
def test_zoo_id_parse_canonicalizes_dataset_and_threat():
    zid = ZooId.parse("CIFAR-10/linf/Carmon2019Unlabeled")
    assert (zid.dataset, zid.threat, zid.name) == ("cifar10", "Linf", "Carmon2019Unlabeled")
    assert str(zid) == "cifar10/Linf/Carmon2019Unlabeled"
    assert ZooId.parse("imagenet/corruptions_3d/X").folder == "corruptions"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Carmon2019Unlabeled", "<dataset>/<threat>/<name>"),
        ("cifar10//Carmon", "<dataset>/<threat>/<name>"),
        ("mnist/Linf/X", "unknown RobustBench dataset 'mnist'"),
        ("cifar10/L1/X", "unknown RobustBench threat model 'L1'"),
    ],
)
def test_zoo_id_errors_say_what_is_allowed(text, fragment):
    with pytest.raises(ZooError) as exc:
        ZooId.parse(text)
    assert fragment in str(exc.value)


def test_readme_table_parser_reads_rows_by_section():
    from rtk.zoo import parse_readme_tables

    text = "\n".join(
        [
            "## Model Zoo",
            "### CIFAR-10",
            "#### Linf, eps=8/255",
            "| <sub>#</sub> | <sub>Model ID</sub> | <sub>Paper</sub> | <sub>Clean accuracy</sub> | <sub>Robust accuracy</sub> "
            "| <sub>Architecture</sub> | <sub>Venue</sub> |",
            "|:---:|---|---|:---:|:---:|:---:|:---:|",
            "| <sub>**3**</sub> | <sub><sup>**Foo2020Bar**</sup></sub> | <sub>*[A Title](https://x.org/1)*</sub> | "
            "<sub>85.50%</sub> | <sub>50.25%</sub> | <sub>WideResNet-28-4 <br/> (2x)</sub> | <sub>ICLR 2020</sub> |",
            "#### L2, eps=0.5",
            "| <sub>**1**</sub> | <sub><sup>**Foo2020Bar**</sup></sub> | <sub>*Plain*</sub> | <sub>90%</sub> | "
            "<sub>70.1%</sub> | <sub>ResNet-18</sub> | <sub>N/A</sub> |",
            "## Notebooks",
            "| <sub>**1**</sub> | <sub><sup>**Outside**</sup></sub> | x | 1% | 1% | y | z |",
        ]
    )
    rows = parse_readme_tables(text)
    assert set(rows) == {"cifar10/Linf/Foo2020Bar", "cifar10/L2/Foo2020Bar"}
    linf = rows["cifar10/Linf/Foo2020Bar"]
    assert (linf.rank, linf.clean_acc, linf.robust_acc, linf.eps) == (3, 0.855, 0.5025, "8/255")
    assert linf.architecture == "WideResNet-28-4 (2x)" and linf.paper == "A Title" and linf.link == "https://x.org/1"
    l2 = rows["cifar10/L2/Foo2020Bar"]
    assert (l2.eps, l2.paper, l2.link, l2.robust_acc) == ("0.5", "Plain", None, 0.701)


# ---------------------------------------------------------------------------- robustbench as installed
@needs_robustbench
def test_import_workaround_is_idempotent_and_aliases_pyautoattack():
    from rtk.zoo import import_robustbench

    first = import_robustbench()
    assert import_robustbench() is first
    import autoattack  # noqa: F401 - resolvable because of the alias

    assert sys.modules["autoattack"].__name__ == "pyautoattack"
    assert "autoattack.state" in sys.modules
    from robustbench.model_zoo import model_dicts

    assert model_dicts  # robustbench imported with its zoo


@needs_robustbench
def test_entries_cover_model_dicts_and_carry_reported_numbers():
    from robustbench.model_zoo import model_dicts

    from rtk.zoo import entries, entry

    listed = entries("cifar10", "Linf", describe=False)
    rb = [
        name
        for ds, by in model_dicts.items()
        if ds.value == "cifar10"
        for th, table in by.items()
        if th.value == "Linf"
        for name in table
    ]
    assert [e.id.name for e in listed] == rb
    e = entry("cifar10/Linf/Ding2020MMA")
    assert e.supported and e.ensemble == 1 and e.files() == ["cifar10/Linf/Ding2020MMA.pt"]
    assert e.constructor == "Ding2020MMANet" and 5e6 < e.params < 7e6  # WRN-28-4, built on the meta device
    assert e.reported is not None and 0 < e.reported.robust_acc < e.reported.clean_acc < 1
    assert e.reported.architecture == "WideResNet-28-4" and e.reported.eps == "8/255"
    assert e.sources()[0].endswith(e.gdrive_ids[0])
    # an ensemble of files, and an entry robustbench serves through timm
    chen = entry("cifar10/Linf/Chen2020Adversarial", describe=False)
    assert chen.ensemble == 3 and chen.files()[2] == "cifar10/Linf/Chen2020Adversarial.pt_m2.pt"
    xcit = entry("cifar10/Linf/Debenedetti2022Light_XCiT-S12", describe=False)
    assert not xcit.supported and "timm" in xcit.why_not


@needs_robustbench
def test_unknown_entry_suggests_close_names():
    from rtk.zoo import entry

    with pytest.raises(ZooError) as exc:
        entry("cifar10/Linf/Ding2020MAM")
    assert "did you mean 'Ding2020MMA'" in str(exc.value)
    assert "rtk zoo list --dataset cifar10 --threat Linf" in str(exc.value)


@needs_robustbench
def test_cli_zoo_list_shows_architecture_reported_accuracy_and_weights(tmp_path):
    from rtk.cli.main import cli

    res = CliRunner().invoke(
        cli, ["zoo", "list", "--dataset", "cifar10", "--threat", "L2", "--model-dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "cifar10/L2/Ding2020MMA" in ln)
    assert "WideResNet-28-4" in line and "5.8M" in line and "missing" in line and "%" in line
    assert "not shipped" in res.output
    res = CliRunner().invoke(cli, ["zoo", "list", "--dataset", "cifar100", "--json"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.output)
    assert data["entries"] and all(e["dataset"] == "cifar100" for e in data["entries"])
    assert {"architecture", "reported_clean_acc", "files", "gdrive_ids", "status"} <= set(data["entries"][0])


# ---------------------------------------------------------------------------- the extra is absent
@pytest.fixture()
def no_robustbench(monkeypatch):
    """Make ``import robustbench`` fail as if the extra were not installed."""
    for name in list(sys.modules):
        if name == "robustbench" or name.startswith("robustbench."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "robustbench", None)


def test_absent_robustbench_is_one_clear_error_everywhere(no_robustbench, tmp_path):
    from rtk.cli.main import cli
    from rtk.zoo import import_robustbench, load_zoo_model

    with pytest.raises(ZooUnavailableError, match=r"pip install 'rtk\[zoo\]'"):
        import_robustbench()
    with pytest.raises(ZooUnavailableError, match=r"pip install 'rtk\[zoo\]'"):
        load_zoo_model("cifar10/Linf/Ding2020MMA", model_dir=tmp_path)
    res = CliRunner().invoke(cli, ["zoo", "list"])
    assert res.exit_code != 0 and "pip install 'rtk[zoo]'" in res.output
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    exp = {
        "dataset": "digits",
        "models": {"z": {"arch": "robustbench:cifar10/Linf/Ding2020MMA"}},
        "stages": [{"kind": "zoo", "models": ["z"]}],
    }
    with pytest.raises(rtk.ConfigError) as exc:
        rtk.plan(rtk.experiment_from_dict(exp), reg)
    assert "models.z.source" in str(exc.value) and "pip install 'rtk[zoo]'" in str(exc.value)
