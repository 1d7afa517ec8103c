#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200; Python 3.12, torch 2.11, triton 3.6, pytest-benchmark, no internet),
# within 5 minutes including autotuning:
#   1. the environment; 2. build the CUDA extension; 3. GPU parity tests (bf16 kernels, CUDA packing);
#   4. the official fixtures with the Triton kernels forced; 5. the op benchmarks at VLMo-base shapes;
#   6. the train step at VLMo-base 224 px; 7. 3 compiled steps under set_sync_debug_mode("error") (no device read);
#   8. one final table.
# Files land in $OUT (the device tool brings back at most 8): gpu_check.log, steps.txt, gpu_tests.xml,
# bench_ops.json, bench_step.jsonl, summary.md.  Carry shared/fixtures/official (VLMO_FAST_FIXTURES) for step 4.
#
# --dry-run runs every step on a CPU at tiny sizes (Triton's interpreter with VLMO_FAST_AUTOTUNE_CHECK=1, so the
# autotuners' first-call path runs too; the installed build instead of a rebuild): CI runs it to prove the script.
set -uo pipefail
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-benchmarks/results/latest}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/steps.txt"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ $DRY = 1 ]; then
  export TRITON_INTERPRET=1 VLMO_FAST_AUTOTUNE_CHECK=1 VLMO_FAST_BENCH_QUICK=1
  STEP_ARGS=(--preset vlmo_tiny_patch16 --image 32 --text-len 12 --batch 2 --steps 1 --warmup 0 --no-compile)
  SYNC_ARGS=(--preset vlmo_tiny_patch16 --image 32 --text-len 12 --batch 2)
  BENCH_ARGS=(-k "base224 and (ours or reference) or pack_text")
  FIXTURE_CASES="tiny and vqa_targets"  # one fused forward through the kernels (the CI suite runs the rest)
else
  FIXTURE_CASES="tiny and not gradients"
  # eager: compiling a whole VLMo-base step does not fit the one call's 5 minutes (the sync check compiles 2 layers)
  STEP_ARGS=(--preset vlmo_base_patch16 --image 224 --batch 32 --steps 5 --warmup 3 --no-compile)
  SYNC_ARGS=(--preset vlmo_base_patch16 --depth 2 --image 224 --batch 32)
  BENCH_ARGS=(--benchmark-columns=median,ops)
fi

step() {  # step NAME SECONDS [--to FILE] COMMAND...: runs it (stdout also to FILE), records "name|ok|seconds"
  local name=$1 limit=$2 to=/dev/null t0=$SECONDS rc=0
  shift 2
  if [ "$1" = "--to" ]; then to=$2; shift 2; fi
  echo "== $name"
  timeout "$limit" "$@" > >(tee "$to") || rc=$?
  echo "$name|$([ $rc = 0 ] && echo ok || echo "FAILED($rc)")|$((SECONDS - t0))" >> "$OUT/steps.txt"
}

{
  if [ $DRY = 1 ]; then
    step environment 30 "$PY" -c "import platform, torch, triton; print(platform.processor() or platform.machine(), 'torch', torch.__version__, 'triton', triton.__version__)"
    step build 60 "$PY" -c "from vlmo_fast.ops import _ext; print('extension (installed build):', _ext.state())"
    step kernel_parity 300 env VLMO_FAST_KERNELS=triton "$PY" -m pytest -q -x -p no:cacheprovider \
        tests/kernels/autotune_cases.py -k "first_and_cached" --junitxml="$OUT/gpu_tests.xml"
  else
    step environment 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    step build 150 "$PY" -m pip install -q --no-deps --no-build-isolation --use-pep517 -e .
    step kernel_parity 120 "$PY" -m pytest -q -x -m gpu tests/kernels tests/csrc -p no:cacheprovider \
        --junitxml="$OUT/gpu_tests.xml"
  fi
  step fixture_parity_triton 120 env VLMO_FAST_KERNELS=triton "$PY" -m pytest -q -p no:cacheprovider \
      tests/compat/test_official_parity.py -k "$FIXTURE_CASES"
  step op_benchmarks 150 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_attention.py \
      benchmarks/bench_expert_ffn.py benchmarks/bench_packing.py "${BENCH_ARGS[@]}" --benchmark-json="$OUT/bench_ops.json"
  step train_step 120 --to "$OUT/bench_step.jsonl" "$PY" -m vlmo_fast.cli bench step "${STEP_ARGS[@]}"
  step sync_free_step 150 "$PY" benchmarks/sync_free_step.py "${SYNC_ARGS[@]}"
  "$PY" benchmarks/gpu_summary.py "$OUT"
} 2>&1 | tee "$OUT/gpu_check.log"
! grep -q FAILED "$OUT/steps.txt"
