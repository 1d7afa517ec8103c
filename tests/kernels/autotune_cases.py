"""Cases run under VLMO_FAST_AUTOTUNE_CHECK=1 (tests/kernels/test_autotune_check.py starts them in a process of
their own: the switch must be set before the kernels are imported).  Under it every autotuner holds its GPU
configs and a stub timer, so the autotuner's first call launches every kept config before the chosen one.

- the first (benchmarking) call and the cached call both meet the parity rule, for attention with and without
  a bias table (without one, the dk/dv autotuner's `reset_to_zero` once zeroed the saved log-sum-exp) and for
  the expert FFN;
- every config each autotuner may pick on a GPU, forced one at a time, meets the rule, forward and backward,
  fp32 and fp16, with and without bias;
- a base_plus-style model (absolute positions, no relative bias) gives the same outputs and gradients with the
  Triton kernels as with the references.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import triton

from tests.helpers import encode_pair_batch
from tests.kernels.parity import assert_ffn_parity, check_attention
from vlmo_fast.kernels import attention, attention_bwd, expert_ffn_norm, grouped_gemm
from vlmo_fast.kernels.tuning import AUTOTUNE_CHECK

pytestmark = pytest.mark.skipif(not AUTOTUNE_CHECK, reason="needs VLMO_FAST_AUTOTUNE_CHECK=1 before import")

AUTOTUNERS = {"attention._fwd_kernel": attention._fwd_kernel, "attention_bwd._dkdv_kernel": attention_bwd._dkdv_kernel,
              "attention_bwd._dq_kernel": attention_bwd._dq_kernel,
              "grouped_gemm._rows_gemm_kernel": grouped_gemm._rows_gemm_kernel,
              "grouped_gemm._wgrad_kernel": grouped_gemm._wgrad_kernel}
FFN_GROUPS = [(0, 5, 0), (5, 5, 1), (5, 70, 1), (70, 77, 2)]


def _forget_tuning():
    for tuner in AUTOTUNERS.values():
        tuner.cache.clear()


@contextlib.contextmanager
def only(tuner, config):
    """The autotuner holds this one config inside the block."""
    saved = tuner.configs
    tuner.configs = [config]
    tuner.cache.clear()
    try:
        yield
    finally:
        tuner.configs = saved
        tuner.cache.clear()


def test_every_autotuner_is_module_level_with_several_configs():
    modules = (attention, attention_bwd, expert_ffn_norm, grouped_gemm)
    found = {f"{m.__name__.rsplit('.', 1)[-1]}.{n}" for m in modules for n, v in vars(m).items()
             if isinstance(v, triton.runtime.Autotuner) and v.fn.fn.__module__ == m.__name__}
    assert found == set(AUTOTUNERS)
    for name, tuner in AUTOTUNERS.items():
        assert len(tuner.configs) >= 2, name


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_attention_first_and_cached_call(bias):
    """The first call runs the benchmarking path (every kept config, with the autotuner's resets); the second
    takes the cached config.  Both meet the rule, forward and every gradient."""
    _forget_tuning()
    for _ in range(2):  # fp16: fp32 keeps a single config on GPUs (nothing to time)
        check_attention([2, 6, 3], 5, 6, 16, torch.float16, bias=bias, seed=11)
    assert attention_bwd._dkdv_kernel.cache, "the dk/dv autotuner never tuned"


def test_expert_ffn_first_and_cached_call():
    _forget_tuning()
    for _ in range(2):
        assert_ffn_parity(FFN_GROUPS, 77, 64, torch.float32, True, True)
    assert grouped_gemm._rows_gemm_kernel.cache, "the row GEMM autotuner never tuned"
    assert grouped_gemm._wgrad_kernel.cache, "the weight-gradient autotuner never tuned"


@pytest.mark.parametrize("name", ["attention._fwd_kernel", "attention_bwd._dkdv_kernel", "attention_bwd._dq_kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_every_attention_config(name, dtype):
    """Text segments longer than the 32-row tiles and an image of 10 tokens, head dim 24 (padded to 32)."""
    tuner = AUTOTUNERS[name]
    for config in list(tuner.configs):
        with only(tuner, config):
            for bias in (True, False):
                check_attention([40, 3, 70], 10, 70, 24, dtype, bias=bias, window=3, l0=70, seed=12)


@pytest.mark.parametrize("name", ["grouped_gemm._rows_gemm_kernel", "grouped_gemm._wgrad_kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_every_gemm_config(name, dtype):
    """Two experts, a group shorter than the smallest tile and one spanning several (rows and weight rows)."""
    tuner = AUTOTUNERS[name]
    for config in list(tuner.configs):
        with only(tuner, config):
            assert_ffn_parity([(0, 40, 0), (40, 140, 1)], 140, 64, dtype, True, False, num_experts=2)


def test_model_without_relative_bias(monkeypatch):
    """A base_plus-style tiny model (absolute positions, no bias table): the Triton path equals the reference
    path on a fused pass, every output row and every parameter's gradient (fp32, fixture tolerances)."""
    from vlmo_fast.config import preset
    from vlmo_fast.model.vlmo import VLMo

    cfg = preset("vlmo_tiny_patch16", rel_pos_bias=False, abs_pos_emb=True, layer_scale=None, image_size=32,
                 max_text_len=12, drop_path_rate=0.0)
    g = torch.Generator().manual_seed(13)
    model = VLMo(cfg).eval()  # no dropout draws: both paths see the same function
    ids = torch.randint(1, 1000, (3, 12), generator=g)
    lens = torch.tensor([12, 5, 8], dtype=torch.int32)
    images = torch.randn(3, 3, 32, 32, generator=g)
    results = {}
    for kernels in ("ref", "triton"):
        monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
        model.zero_grad()
        enc = encode_pair_batch(model, ids, lens, images)
        (enc.feats * torch.linspace(-1, 1, enc.feats.numel()).view_as(enc.feats)).sum().backward()
        results[kernels] = (enc.feats.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None})
    ref_out, ref_grads = results["ref"]
    out, grads = results["triton"]
    assert (out - ref_out).abs().max() <= 2e-5 + 1e-4 * ref_out.abs().max()
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name, ref in ref_grads.items():
        assert (grads[name] - ref).abs().max() <= 1e-5 + 1e-3 * ref.abs().max(), name
