"""Property-based fuzzing of what rtk reads: experiment files, checkpoint JSON, state.json.

The property is always the same: rtk either succeeds or raises one :class:`rtk.RtkError`;
never a raw exception. Bounded and deterministic (``derandomize``, no example database),
so CI sees the same few hundred cases every time, in well under a minute.
"""

from __future__ import annotations

import json
import math
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trusthelpers import make_checkpoint

import rtk
from rtk.errors import RtkError

#: RTK_FUZZ_EXAMPLES=2000 RTK_FUZZ_RANDOM=1 explores further (locally; CI keeps the fixed cases).
FUZZ = settings(
    max_examples=int(os.environ.get("RTK_FUZZ_EXAMPLES", "60")),
    derandomize=not os.environ.get("RTK_FUZZ_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ------------------------------------------------------------------ building blocks
names = st.one_of(
    st.sampled_from(["m", "robust", "a.b", "../x", "/abs", "a\nb", "", "x" * 200, "ä", "a b", "-x", "m@best"]),
    st.text(string.printable, max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["8/255", "abc", "1/0", "", "auto", "cpu", "gpu0", "pgd", "mlp", "digits", "1e9"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)
KINDS = ["train", "evaluate", "prune", "fine-tune", "certify", "similarity", "zoo", "nope"]
ARCHS = ["mlp", "cnn-small", "robustbench:cifar10/Linf/Ding2020MMA", "resnet-small", "nope", 5]
ATTACKS = st.lists(
    st.one_of(
        st.sampled_from(["pgd", "fgsm", "square", "nope"]),
        st.fixed_dictionaries({"name": st.sampled_from(["pgd", "fgsm", 3])}, optional={"eps": values, "steps": values}),
    ),
    max_size=3,
)
stage = st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(KINDS), values)},
    optional={
        "id": names,
        "model": names,
        "models": st.lists(names, max_size=2),
        "source": names,
        "epochs": values,
        "eps": st.one_of(values, st.lists(st.sampled_from([0.01, "8/255", -1, "x", 1e9]), max_size=3)),
        "headline_eps": values,
        "attacks": ATTACKS,
        "compression": st.lists(st.sampled_from([2, 10, 1e9, 0.5, float("nan"), float("inf")]), max_size=2),
        "limit": values,
        "batch_size": values,
        "checkpoint": values,
        "allow_unsafe_pickle": values,
        "junk": values,
    },
)
model = st.fixed_dictionaries(
    {"arch": st.one_of(st.sampled_from(ARCHS), values)},
    optional={"hidden": values, "width": values, "checkpoint": values, "model_dir": values, "junk": values},
)
experiment = st.fixed_dictionaries(
    {
        "dataset": st.one_of(
            st.fixed_dictionaries(
                {"name": st.one_of(st.sampled_from(["digits", "mnist", "nope"]), values)},
                optional={"limit_train": values, "limit_test": values, "root": values},
            ),
            values,
        ),
        "models": st.one_of(st.dictionaries(names, model, max_size=2), values),
        "stages": st.one_of(st.lists(stage, max_size=3), values),
    },
    optional={"name": names, "seed": values, "device": values, "amp": values, "junk": values},
)


def _toml_value(v) -> str:
    """A TOML rendering of ``v`` (None becomes a string, as TOML has no null)."""
    if v is None:
        return '"null"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 2**63 else json.dumps(str(v))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _expect_rtk_error_or_success(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except RtkError:
        pass


# ------------------------------------------------------------------ the properties
@FUZZ
@given(experiment)
def test_experiment_dicts_plan_or_fail_cleanly(data):
    def go():
        rtk.plan(rtk.experiment_from_dict(data, source="<fuzz>"))

    _expect_rtk_error_or_success(go)


@FUZZ
@given(experiment)
def test_experiment_files_load_or_fail_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "e.toml"
    path.write_text("\n".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in data.items()))

    def go():
        rtk.plan(rtk.load_experiment(path))

    _expect_rtk_error_or_success(go)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_an_experiment_file(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "e.toml"
    path.write_bytes(blob)
    _expect_rtk_error_or_success(rtk.load_experiment, path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    stem = make_checkpoint(tmp_path_factory.mktemp("ck") / "m", reg)
    return reg, stem, json.loads(Path(str(stem) + ".json").read_text())


SPEC_KEYS = ["format", "arch", "options", "data", "extra", "metadata", "shapes", "sha256"]


@FUZZ
@given(st.dictionaries(st.sampled_from(SPEC_KEYS + ["junk"]), values, max_size=3), st.booleans())
def test_checkpoint_json_loads_or_fails_cleanly(tmp_path_factory, pristine, changes, as_list):
    from rtk.models import load_checkpoint

    reg, stem, spec = pristine
    d = tmp_path_factory.mktemp("ck")
    for suffix in (".safetensors",):
        (d / f"m{suffix}").write_bytes(Path(str(stem) + suffix).read_bytes())
    doc = [spec] if as_list else {**spec, **changes}
    (d / "m.json").write_text(json.dumps(doc))
    _expect_rtk_error_or_success(load_checkpoint, d / "m", reg)


@FUZZ
@given(st.dictionaries(names, values, max_size=3))
def test_state_json_checkpoints_load_or_fail_cleanly(tmp_path_factory, entries):
    from rtk.rundir import RunDir
    from rtk.runner import saved_checkpoints

    rd = RunDir(tmp_path_factory.mktemp("run"))
    for name, info in entries.items():
        _expect_rtk_error_or_success(saved_checkpoints, rd, name, info)
        _expect_rtk_error_or_success(saved_checkpoints, rd, "m", {"checkpoints": {name: info}})


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries({"stages": st.dictionaries(names, values, max_size=3)})))
def test_state_json_records_pass_or_fail_cleanly(state):
    from rtk.runner import check_state

    _expect_rtk_error_or_success(check_state, state, "state.json")
