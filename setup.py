"""vlmo-fast: build and install.

The C++ extension vlmo_fast._C (csrc/) is built with the installed torch, so install with
`pip install --no-build-isolation` after torch.  Its CUDA kernels are built only where torch has CUDA and the
nvcc that torch compiles with exists (csrc/cuda_build.py; else the CPU kernels and one warning);
VLMO_FAST_SKIP_CUDA_BUILD=1 skips them, VLMO_FAST_SKIP_EXT_BUILD=1 skips the extension altogether (the
package then runs on its torch references).
"""
import glob
import importlib.util
import os
import shutil
import sys
import warnings

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_build_decision(torch):
    """csrc/cuda_build.py's decision for this machine (loaded by path: csrc is not a package)."""
    from torch.utils.cpp_extension import CUDA_HOME

    spec = importlib.util.spec_from_file_location("cuda_build", os.path.join(HERE, "csrc", "cuda_build.py"))
    cuda_build = sys.modules["cuda_build"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_build)
    return cuda_build.decide(torch_cuda=torch.version.cuda, cuda_home=CUDA_HOME, nvcc_on_path=shutil.which("nvcc"),
                             skip=os.environ.get("VLMO_FAST_SKIP_CUDA_BUILD", "0") == "1",
                             has_cuda_sources=bool(glob.glob("csrc/*.cu")))


ext_modules, cmdclass = [], {}
if os.environ.get("VLMO_FAST_SKIP_EXT_BUILD", "0") != "1" and glob.glob("csrc/*.cpp"):
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda = cuda_build_decision(torch)
    if cuda.warning:
        warnings.warn(cuda.warning, stacklevel=1)
    extra = {"cxx": ["-O3", "-std=c++17", "-fopenmp"]}
    if cuda.build:
        extra["nvcc"] = ["-O3", "-std=c++17"]
        ext = CUDAExtension("vlmo_fast._C", sources + sorted(glob.glob("csrc/*.cu")), define_macros=[("VLMO_FAST_WITH_CUDA", None)],
                            extra_compile_args=extra, extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("vlmo_fast._C", sources, extra_compile_args=extra, extra_link_args=["-fopenmp"])
    ext_modules, cmdclass = [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}

setup(
    name="vlmo-fast",
    version="0.1.0",
    description="Fast, faithful VLMo (Mixture-of-Modality-Experts vision-language pre-training)",
    python_requires=">=3.10",
    packages=find_packages(include=["vlmo_fast", "vlmo_fast.*"]) + ["vlmo_fast.kernels"],
    package_dir={"vlmo_fast.kernels": "kernels"},
    package_data={"vlmo_fast.data": ["*.txt"]},
    install_requires=[
        "torch>=2.5",
        "triton>=3.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
        "pyarrow>=14",
        "tokenizers>=0.15",
        "pillow>=10",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "webdataset>=0.2.86",
        "fsspec>=2023.1",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "pytest-timeout>=2"],
        "dali": ["nvidia-dali-cuda120"],
        "dali-cuda130": ["nvidia-dali-cuda130"],
        "timm": ["timm>=0.9"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["vlmo-fast=vlmo_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
