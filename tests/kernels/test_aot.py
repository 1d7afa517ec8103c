"""Every Triton kernel compiled for Hopper (sm_90) on this CPU by `python -m vlmo_fast.kernels.aot`, and the rules
of design.md checked on its report: every config the autotuners keep fits in the 227 KB of shared memory a block
may use, spills nothing, and (bf16/fp16) runs its matmuls on wgmma; no atomic is fenced (acquire/release), and
attention has none at all.
CI compiles bf16 at head dims 34 (base_plus) and 64 (base, large); the full table (bf16/fp16/fp32 x head dims
16-128) is benchmarks/results/sm90_resources.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMEM = 227 * 1024


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("aot") / "sm90.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLMO_FAST_AUTOTUNE_CHECK")}
    result = subprocess.run([sys.executable, "-m", "vlmo_fast.kernels.aot", "--dtypes", "bf16", "--head-dims", "34,64",
                             "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def _breaches(records: list[dict]) -> list[str]:
    bad = []
    for r in records:
        where = f"{r['kernel']} {r['variant']} {r['config']} {r['dtype']} hd={r['head_dim']}"
        if r["smem_bytes"] > SMEM:
            bad.append(f"{where}: {r['smem_bytes']} B of shared memory")
        if r["spill_bytes"]:
            bad.append(f"{where}: spills {r['spill_bytes']} B")
        if r["matmul"] and r["dtype"] != "fp32" and r["mma"] != "wgmma":
            bad.append(f"{where}: matmuls on {r['mma']}")
    return bad


@pytest.mark.slow
def test_report_covers_every_kernel(report):
    kernels = {r["kernel"] for r in report}
    assert {"attention._fwd_kernel", "attention_bwd._dkdv_kernel", "attention_bwd._dq_kernel",
            "attention_bwd._delta_kernel", "grouped_gemm._rows_gemm_kernel", "grouped_gemm._wgrad_kernel",
            "expert_ffn_norm._ln_fwd_kernel", "expert_ffn_norm._ln_bwd_kernel",
            "expert_ffn_scale._scale_bwd_kernel"} <= kernels
    assert {r["head_dim"] for r in report if r["kernel"].startswith("attention")} == {34, 64}
    for name in ("attention._fwd_kernel", "attention_bwd._dkdv_kernel", "grouped_gemm._rows_gemm_kernel",
                 "grouped_gemm._wgrad_kernel"):
        mine = [r for r in report if r["kernel"] == name]
        assert any(r["kept"] for r in mine) and all(r["regs"] > 0 for r in mine), name


@pytest.mark.slow
def test_kept_configs_meet_the_sm90_rules(report):
    breaches = _breaches([r for r in report if r["kept"]])
    assert not breaches, "\n".join(breaches)


@pytest.mark.slow
def test_no_fenced_atomics(report):
    fenced = [f"{r['kernel']} {r['config']}" for r in report if r["fenced_atomics"]]
    assert not fenced, fenced


@pytest.mark.slow
def test_attention_has_no_atomics(report):
    """The bias gradient is summed in per-chunk buffers that each program owns columns of: no atomic at all."""
    attention = [r for r in report if r["kernel"].startswith("attention")]
    assert any("HAS_BIAS=True" in r["variant"] for r in attention)
    with_atomics = [f"{r['kernel']} {r['variant']} {r['config']}" for r in attention if r["atomics"]]
    assert not with_atomics, with_atomics


def test_rules_catch_breaches():
    """The judge itself: a record over each limit is reported."""
    base = dict(kernel="k", variant="", config="c", dtype="bf16", head_dim=64, matmul=True, kept=True)
    assert _breaches([dict(base, smem_bytes=SMEM + 1, spill_bytes=0, mma="wgmma")])
    assert _breaches([dict(base, smem_bytes=0, spill_bytes=8, mma="wgmma")])
    assert _breaches([dict(base, smem_bytes=0, spill_bytes=0, mma="mma.sync")])
    assert not _breaches([dict(base, smem_bytes=SMEM, spill_bytes=0, mma="wgmma")])
