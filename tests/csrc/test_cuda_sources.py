"""The CUDA half of the extension compiles here, although this machine has no GPU and a CPU-only torch:
nvcc builds csrc/*.cu for sm_90 (they include no torch header) with every warning an error, and the C++
compiler checks the CUDA-only branch of csrc/packing_ops.cpp against torch's headers.  Both are skipped when
their compiler is absent."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")
                                     if Path(p).is_file()), None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in CSRC.glob("*.cu")))
def test_nvcc_compiles(tmp_path, source):
    # Warnings are errors, from nvcc's front end and from the host compiler (-Wall) alike.
    cmd = [NVCC, "-c", "-std=c++17", "-arch=sm_90", "-O1", "-Xcompiler", "-Wall", "-Werror", "all-warnings",
           str(CSRC / source), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None or shutil.which("g++") is None, reason="needs nvcc (CUDA headers) and g++")
def test_cuda_branch_of_ops_compiles(tmp_path):
    from torch.utils.cpp_extension import include_paths

    candidates = [Path(NVCC).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    cuda_include = next((p for p in candidates if (p / "cuda_runtime_api.h").is_file()), None)
    if cuda_include is None:
        pytest.skip(f"no CUDA headers in {candidates}")
    # A CPU torch ships c10/cuda headers but not the one its CMake build generates; an empty stand-in is
    # enough for a syntax check.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["g++", "-fsyntax-only", "-std=c++17", "-DVLMO_FAST_WITH_CUDA", f"-I{tmp_path}", f"-I{cuda_include}",
           *[f"-I{p}" for p in include_paths()], f"-I{sys.prefix}/include", str(CSRC / "packing_ops.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
