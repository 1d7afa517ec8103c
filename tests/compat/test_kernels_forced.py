"""The whole model with its Triton kernels forced (VLMO_FAST_KERNELS=triton; under TRITON_INTERPRET=1 on a CPU)
still meets the official fixtures: every output and every gradient of the tiny config."""
from __future__ import annotations

import pytest

from tests.helpers import FixtureSet, assert_all_outputs_match, assert_gradients_match, build


@pytest.fixture
def tiny(official_dir, monkeypatch) -> FixtureSet:
    monkeypatch.setenv("VLMO_FAST_KERNELS", "triton")
    return FixtureSet.load(official_dir, "tiny")


@pytest.mark.slow
def test_outputs_with_triton_kernels(tiny):
    assert_all_outputs_match(build(tiny), tiny)


@pytest.mark.slow
def test_gradients_with_triton_kernels(tiny):
    assert_gradients_match(build(tiny), tiny)
