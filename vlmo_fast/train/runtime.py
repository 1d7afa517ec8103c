"""Where and in what precision a run computes: its device, its autocast dtype, what it compiles."""
from __future__ import annotations

import contextlib
import os

import torch

from vlmo_fast.model.vlmo import VLMo


def pick_device(device: str) -> torch.device:
    """The `device` key: auto = this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), where oneDNN's bf16 GEMMs run
    several times faster than fp32 ones; elsewhere bf16 would be emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(precision: str | int, device: torch.device) -> torch.dtype | None:
    """The `precision` key: None = fp32; auto = bf16 on CUDA and on a CPU with bf16 matrix units
    (cpu_has_bf16_matmul), fp32 elsewhere.  The official precision=16 maps to fp16 (the trainer adds a gradient
    scaler)."""
    p = str(precision)
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16_matmul() else None
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[p]


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's count of unique graphs)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a run (none in fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compile_mode(compile_key: bool | str, device: torch.device, amp: torch.dtype | None, fsdp: bool) -> str | None:
    """The `compile` key: "step" compiles the whole training step (forward, losses and, through AOTAutograd, the
    backward) over layouts the data loader plans; with FSDP2 "blocks" compiles each transformer block instead (the
    sharded module's hooks stay outside the graphs); None runs eagerly.

    auto = where the compiled step measured faster: on CUDA, and on the CPU in bf16 (about 8% over eager at dim 256,
    README "Measured"); in fp32 on the CPU it measured no faster, so fp32 CPU runs (the tiny tasks, the demo) stay
    eager and spend no time compiling."""
    if compile_key is True or (compile_key == "auto" and (device.type == "cuda" or amp == torch.bfloat16)):
        return "blocks" if fsdp else "step"
    return None


def compile_blocks(model: VLMo) -> None:
    """torch.compile each transformer block (compile_mode "blocks"), before FSDP2 wraps them."""
    for blk in model.transformer.blocks:
        blk.compile(dynamic=True)


# Graphs one compiled step may build: one per bucketed shape (train/layouts.py: a few in practice, a few dozen at
# worst) and precision.  Past dynamo's default of 8 a fullgraph step would fail hard instead of running eagerly.
STEP_GRAPHS_LIMIT = 64


def compile_step(step_module: torch.nn.Module, fullgraph: bool) -> None:
    """torch.compile a run's step module (compile_mode "step") with static shapes.  Dynamo keeps its graphs per
    code object, so every run's step module would add to one shared count: a new run starts from a fresh dynamo
    state (one run trains at a time in a process; the compiled kernels stay cached on disk)."""
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, STEP_GRAPHS_LIMIT)
    step_module.compile(fullgraph=fullgraph, dynamic=False)
