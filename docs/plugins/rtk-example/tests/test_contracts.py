"""The example plugin's own tests: rtk's contract checks over its components, run against
the installed plugin (``pip install -e . && pytest``)."""

import pytest

import rtk.testing


def test_every_component_meets_rtk_contracts():
    results = rtk.testing.assert_contracts("rtk-example")  # the distribution: all its components
    assert {r.name for r in results} == {"uniform-noise", "gram-cosine"}


@pytest.mark.parametrize("name", ["uniform-noise", "gram-cosine"])
def test_one_component(name):
    (reg,) = rtk.testing.registrations(name)
    rtk.testing.assert_contract(reg)
