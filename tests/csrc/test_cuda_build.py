"""setup.py's choice of building the CUDA kernels (csrc/cuda_build.py), on made-up machines: built only where
torch has CUDA and the nvcc torch compiles with (CUDA_HOME/bin/nvcc) exists; otherwise the CPU kernels, and a
warning exactly when a CUDA torch lacks the toolkit; at run time, a CUDA tensor meeting a build without CUDA
kernels warns once."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vlmo_fast.ops import _ext

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def decide():
    spec = importlib.util.spec_from_file_location("vlmo_fast_cuda_build", ROOT / "csrc" / "cuda_build.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
    spec.loader.exec_module(module)
    yield module.decide
    del sys.modules[spec.name]


def machine(files=(), **kw):
    args = dict(torch_cuda="12.8", cuda_home="/usr/local/cuda", nvcc_on_path=None, skip=False,
                has_cuda_sources=True, is_file=lambda p: p in files)
    return {**args, **kw}


def test_builds_with_the_toolkit_torch_uses(decide):
    got = decide(**machine(files={"/usr/local/cuda/bin/nvcc"}))
    assert got.build and got.nvcc == "/usr/local/cuda/bin/nvcc" and got.warning is None


@pytest.mark.parametrize("kw", [dict(torch_cuda=None), dict(skip=True), dict(has_cuda_sources=False)])
def test_cpu_only_without_a_warning(decide, kw):
    """A CPU torch, VLMO_FAST_SKIP_CUDA_BUILD=1, or no .cu sources: nothing is amiss, even with nvcc around."""
    got = decide(**machine(files={"/usr/local/cuda/bin/nvcc"}, **kw))
    assert not got.build and got.warning is None


def test_cuda_torch_without_a_toolkit_warns(decide):
    got = decide(**machine(cuda_home=None))
    assert not got.build and got.nvcc is None
    assert "torch has CUDA 12.8 but torch found no CUDA toolkit" in got.warning
    assert "only the CPU packing kernels are built" in got.warning


def test_cuda_home_without_nvcc_points_at_the_one_on_path(decide):
    """CUDA_HOME (or torch's /usr/local/cuda guess) may hold only the runtime: the nvcc on PATH is named."""
    got = decide(**machine(nvcc_on_path="/opt/cuda-12.8/bin/nvcc", files={"/opt/cuda-12.8/bin/nvcc"}))
    assert not got.build
    assert "no nvcc at /usr/local/cuda/bin/nvcc (CUDA_HOME=/usr/local/cuda)" in got.warning
    assert "set CUDA_HOME=/opt/cuda-12.8 (the nvcc on PATH)" in got.warning


def test_cuda_tensor_without_cuda_kernels_warns_once(monkeypatch):
    monkeypatch.setattr(_ext, "_state", _ext.ExtState(loaded=True, cuda=False, reason=""))
    monkeypatch.setattr(_ext, "_warned_no_cuda_kernels", False)
    with pytest.warns(RuntimeWarning, match="built without its CUDA kernels .*CUDA_HOME"):
        assert not _ext.available(torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _ext.available(torch.device("cuda"))
        assert _ext.available(torch.device("cpu"))
