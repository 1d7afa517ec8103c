"""Shared test set-up: Triton's interpreter on machines without a GPU, and the official fixtures."""
from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before any kernel module imports.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import FixtureSet, fixtures_dir  # noqa: E402



def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def official_dir():
    d = fixtures_dir()
    if d is None:
        if os.environ.get("CI") == "true":
            pytest.fail("official fixtures not found: set VLMO_FAST_FIXTURES or provide ../shared/fixtures/official")
        pytest.skip("official fixtures not found (VLMO_FAST_FIXTURES or ../shared/fixtures/official)")
    return d


@pytest.fixture(scope="session", params=["tiny", "small_480"])
def official(request, official_dir) -> FixtureSet:
    """One of the two official fixture configs with gradients (model, inputs, outputs, gradients)."""
    return FixtureSet.load(official_dir, request.param)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic dataset (vlmo-fast convert synthetic), written once per session."""
    from vlmo_fast.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, n_train=200, n_val=100, n_test=100, n_pairs_train=100, n_pairs_dev=40,
                    n_text_train=200, n_text_val=40, progress_bar=False)
    return root
