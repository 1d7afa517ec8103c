#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200; Python 3.12, torch 2.11, triton 3.6, pytest-benchmark, no internet):
# build the CUDA extension, run the GPU parity tests (bf16 kernels, CUDA packing, fixtures with the kernels forced),
# then the benchmark suite at VLMo-base shapes; tables go to $OUT (at most 8 files come back), within 5 minutes.
# Carry the tiny fixtures in shared/fixtures/official (VLMO_FAST_FIXTURES) if the parity against them should run.
set -uo pipefail
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
log="$OUT/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  timeout 150 python3 -m pip install -q --no-deps --no-build-isolation --use-pep517 -e . || echo "BUILD FAILED"
  python3 -c "from vlmo_fast.ops import _ext; print('extension', _ext.state())"
  # bf16 kernel parity, CUDA packing, and the whole model with the Triton kernels against the official fixtures.
  timeout 120 python3 -m pytest -q -x -m gpu tests/kernels tests/csrc -p no:cacheprovider \
      --junitxml="$OUT/gpu_tests.xml" || echo "GPU TESTS FAILED"
  VLMO_FAST_KERNELS=triton timeout 60 python3 -m pytest -q tests/compat/test_official_parity.py \
      -k "tiny and not gradients" -p no:cacheprovider || echo "FIXTURE PARITY WITH KERNELS FAILED"
  # tables afterwards, here: python benchmarks/report.py bench_ops.json --device h100
  timeout 120 python3 -m pytest -q benchmarks/bench_attention.py benchmarks/bench_expert_ffn.py \
      benchmarks/bench_packing.py -p no:cacheprovider --benchmark-columns=median,ops \
      --benchmark-json="$OUT/bench_ops.json" || echo "OP BENCHMARKS FAILED"
  timeout 90 python3 -m vlmo_fast.cli bench step --preset vlmo_base_patch16 --image 224 --batch 32 --steps 5 \
      --warmup 3 | tee "$OUT/bench_step.jsonl" || echo "STEP BENCHMARK FAILED"
} 2>&1 | tee "$log"
