"""Whether setup.py builds the CUDA kernels of vlmo_fast._C: a pure function of what the build machine has,
so a test can call it with made-up machines.

torch.utils.cpp_extension compiles .cu files with CUDA_HOME/bin/nvcc (CUDA_HOME from the environment, else
the toolkit of the nvcc on PATH, else /usr/local/cuda if that folder exists).  A CUDA build of torch does not
bring that toolkit along, so a CUDA torch without nvcc there would fail the whole install: the CUDA part is
built only when that nvcc exists, and otherwise the CPU kernels are built with one warning that says why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class CudaBuild:
    build: bool          # compile csrc/*.cu and register the CUDA kernels
    nvcc: str | None     # the compiler that will be used (None when not building)
    warning: str | None  # why a CUDA torch gets the CPU kernels only (None when nothing is amiss)


def decide(*, torch_cuda: str | None, cuda_home: str | None, nvcc_on_path: str | None, skip: bool,
           has_cuda_sources: bool, is_file: Callable[[str], bool] = os.path.isfile) -> CudaBuild:
    """torch_cuda: torch.version.cuda (None for a CPU torch); cuda_home: torch.utils.cpp_extension.CUDA_HOME;
    nvcc_on_path: shutil.which("nvcc"); skip: VLMO_FAST_SKIP_CUDA_BUILD=1."""
    if skip or not has_cuda_sources or torch_cuda is None:
        return CudaBuild(False, None, None)  # asked for, nothing to build, or a CPU torch: nothing to warn about
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    if nvcc is not None and is_file(nvcc):
        return CudaBuild(True, nvcc, None)
    if cuda_home is None:
        found = "torch found no CUDA toolkit (CUDA_HOME unset, no nvcc on PATH)"
    else:
        found = f"there is no nvcc at {nvcc} (CUDA_HOME={cuda_home})"
    hint = "install the CUDA toolkit and set CUDA_HOME to it"
    if nvcc_on_path is not None and nvcc_on_path != nvcc:
        hint = f"set CUDA_HOME={os.path.dirname(os.path.dirname(nvcc_on_path))} (the nvcc on PATH)"
    return CudaBuild(False, None, f"vlmo_fast._C: torch has CUDA {torch_cuda} but {found}, so only the CPU "
                                  f"packing kernels are built (CUDA tensors use the torch references); "
                                  f"{hint} and reinstall to build the CUDA kernels")
