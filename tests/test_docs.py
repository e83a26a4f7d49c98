"""Docs that cannot rot: tutorials are executed, the reference is regenerated, every hook
is documented."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

import rtk

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "quickstart.md"]

FENCE = re.compile(r"(?:<!--\s*file:\s*(?P<file>[^\s]+)\s*-->\s*\n)?```(?P<info>[^\n]*)\n(?P<body>.*?)```", re.S)


def blocks(path: Path):
    for m in FENCE.finditer(path.read_text()):
        yield m.group("info").strip(), m.group("body"), m.group("file")


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(tutorial: Path, tmp_path, monkeypatch):
    """Every ```python block runs in order in one namespace; every `$ rtk ...` line of a
    ```console block exits 0; a ```toml block after `<!-- file: X -->` is written to X."""
    from rtk.cli.main import cli

    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__tutorial__"}
    ran = 0
    for info, body, fname in blocks(tutorial):
        if fname:
            (tmp_path / fname).write_text(body)
        if info == "python":
            exec(compile(body, f"{tutorial.name}", "exec"), ns)  # noqa: S102 - our own docs
            ran += 1
        elif info == "console":
            for line in body.splitlines():
                if line.startswith("$ rtk "):
                    args = shlex.split(line[len("$ rtk ") :])
                    res = CliRunner().invoke(cli, args, catch_exceptions=False)
                    assert res.exit_code == 0, f"{tutorial.name}: `{line}` failed:\n{res.output}"
                    ran += 1
    assert ran > 0, f"{tutorial.name} has no executable block"


def test_reference_is_up_to_date():
    from rtk.reference import experiment_reference

    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    committed = (DOCS / "reference" / "experiment-file.md").read_text()
    assert committed == experiment_reference(reg), (
        "docs/reference/experiment-file.md is stale: regenerate it with "
        "`RTK_NO_ENTRY_POINTS=1 rtk reference --out docs/reference/experiment-file.md`"
    )


def test_every_hook_is_documented():
    from rtk.hookspecs import HOOK_KINDS

    text = (DOCS / "writing-a-plugin.md").read_text()
    missing = [h for h in HOOK_KINDS if f"`{h}`" not in text]
    assert not missing, f"hooks not documented in docs/writing-a-plugin.md: {missing}"


def test_docs_index_links_resolve():
    index = (DOCS / "index.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", index)
    assert links
    for link in links:
        if link.startswith("http"):
            continue
        assert (DOCS / link).exists(), f"docs/index.md links to missing {link}"
