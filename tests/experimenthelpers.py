"""Helpers of the tests that read or run the experiments shipped in experiments/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import rtk

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def shipped_run(name: str):
    """A module-scoped fixture: the result of ``experiments/<name>-digits.toml`` run as shipped."""

    @pytest.fixture(scope="module")
    def run(tmp_path_factory) -> rtk.RunResult:
        return rtk.run(EXPERIMENTS / f"{name}-digits.toml", out=tmp_path_factory.mktemp(name) / "run")

    return run


def digits_experiment(
    name: str,
    *stages: dict[str, Any],
    limits: tuple[int, int],
    model: dict[str, Any],
    model_name: str = "net",
    **top: Any,
) -> dict[str, Any]:
    """A small experiment: the digits set limited to ``limits`` (train, test), one model ``model_name``
    (``model``: its arch and options), the stages in order, and any other top-level keys (seed, device)."""
    data = {
        "name": name,
        **top,
        "dataset": {"name": "digits", "limit_train": limits[0], "limit_test": limits[1]},
        "models": {model_name: model},
    }
    return {**data, "stages": list(stages)} if stages else data


def experiment_toml(data: dict[str, Any]) -> str:
    """``data`` as an experiment file: top-level keys first, then tables (``[models.net]`` for a table of
    tables) and arrays of tables (``[[stages]]``); values inline (strings quoted, lists, ``{ k = v }``)."""
    lines = [""] + [f"{k} = {_toml_value(v)}" for k, v in data.items() if not _is_table(v)]
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for sub, table in value.items():
                lines += [f"[{key}.{sub}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        elif isinstance(value, dict):
            lines += [f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif _is_table(value):
            for table in value:
                lines += [f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)
