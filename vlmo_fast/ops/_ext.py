"""Guarded loading of the compiled packing extension vlmo_fast._C, and the Python half of its ops.

The library (csrc/packing_ops.cpp) registers the schemas of the `vlmo_fast` packing ops and their CPU (and,
where built, CUDA) kernels.  This module loads it with torch.ops.load_library, checks that its schemas are the
ones this Python code was written for (a stale build after a schema change counts as incompatible), and
registers what torch.compile and autograd need: fake implementations and backward formulas.  If the library
is missing or incompatible the package still imports: `available()` is False, one warning says why, and
vlmo_fast.ops.packing runs its torch references.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

# The schemas this module's fake implementations and backward formulas are written for.
SCHEMAS = {
    "mask_lengths": "mask_lengths(Tensor mask) -> Tensor",
    "pack_plan": "pack_plan(Tensor text_lens, int image_len, int text_q_len) -> "
                 "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "plan_row_pair": "plan_row_pair(Tensor text_start, Tensor text_q_len, Tensor image_start, int image_len, "
                     "int num_rows) -> Tensor",
    "pack_rows": "pack_rows(Tensor text, Tensor? image, Tensor text_start, Tensor text_q_len, Tensor image_start, "
                 "int num_rows) -> Tensor",
    "unpack_rows": "unpack_rows(Tensor x, Tensor text_start, Tensor text_q_len, Tensor image_start, "
                   "int padded_len, int image_len) -> (Tensor, Tensor)",
}


@dataclass(frozen=True)
class ExtState:
    loaded: bool   # the library loaded and its schemas match SCHEMAS
    cuda: bool     # it also has CUDA kernels (built against a CUDA torch)
    reason: str    # why it is not loaded ("" when it is)


_state: ExtState | None = None
_warned_no_cuda_kernels = False
_python_side_registered = False


def _locate() -> str | None:
    """Path of the built library, or None when it was not built (found without importing it: it is a plain
    torch op library, not a Python module)."""
    spec = importlib.util.find_spec("vlmo_fast._C")
    return spec.origin if spec is not None and spec.origin else None


def _load() -> ExtState:
    path = _locate()
    if path is None:
        return ExtState(False, False, "vlmo_fast._C is not built (pip install --no-build-isolation -e .)")
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as err:  # e.g. built against another torch: undefined symbols
        return ExtState(False, False, f"vlmo_fast._C failed to load ({err})")
    for name, schema in SCHEMAS.items():
        try:
            got = str(getattr(torch.ops.vlmo_fast, name).default._schema)
        except (AttributeError, RuntimeError):
            got = "missing"
        if got != f"vlmo_fast::{schema}":
            return ExtState(False, False, f"vlmo_fast._C is stale: op {name} is {got!r}, expected {schema!r} "
                                          "(rebuild with pip install --no-build-isolation -e .)")
    _register_python_side()
    cuda = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"vlmo_fast::{n}", "CUDA") for n in SCHEMAS)
    return ExtState(True, cuda, "")


def state() -> ExtState:
    """Load the extension on first use; warn once if it is unusable."""
    global _state
    if _state is None:
        _state = _load()
        if not _state.loaded:
            warnings.warn(f"{_state.reason}; the packing ops fall back to their torch references",
                          RuntimeWarning, stacklevel=3)
    return _state


def available(device: torch.device) -> bool:
    """Whether the extension has kernels for tensors on `device`; warns once when a CUDA tensor meets a build
    without CUDA kernels (setup.py found no nvcc, or VLMO_FAST_SKIP_CUDA_BUILD=1)."""
    global _warned_no_cuda_kernels
    st = state()
    if st.loaded and device.type == "cuda" and not st.cuda and not _warned_no_cuda_kernels:
        _warned_no_cuda_kernels = True
        warnings.warn("vlmo_fast._C was built without its CUDA kernels (no nvcc at build time, or "
                      "VLMO_FAST_SKIP_CUDA_BUILD=1); packing on CUDA tensors uses the torch references. "
                      "Reinstall with the CUDA toolkit (CUDA_HOME) to build them", RuntimeWarning, stacklevel=3)
    return st.loaded and (device.type == "cpu" or (device.type == "cuda" and st.cuda))


def reset() -> None:
    """Forget the load result so the next call loads (and warns) again; for tests."""
    global _state, _warned_no_cuda_kernels
    _state = None
    _warned_no_cuda_kernels = False


# ---------------------------------------------------------------------------------------------------------------
# Fake implementations: shapes only, for FakeTensor tracing (torch.compile, opcheck).
def _fake_mask_lengths(mask: Tensor) -> Tensor:
    return mask.new_empty((mask.shape[0],), dtype=torch.int32)


def _fake_pack_plan(text_lens: Tensor, image_len: int, text_q_len: int) -> tuple[Tensor, ...]:
    P = text_lens.shape[0]
    meta = tuple(text_lens.new_empty((P,), dtype=torch.int32) for _ in range(5))
    return (*meta, text_lens.new_empty((4,), dtype=torch.int64))


def _fake_plan_row_pair(text_start: Tensor, text_q_len: Tensor, image_start: Tensor, image_len: int,
                        num_rows: int) -> Tensor:
    return text_start.new_empty((num_rows,), dtype=torch.int32)


def _fake_pack_rows(text: Tensor, image: Tensor | None, text_start: Tensor, text_q_len: Tensor,
                    image_start: Tensor, num_rows: int) -> Tensor:
    return text.new_empty((num_rows, text.shape[2]))


def _fake_unpack_rows(x: Tensor, text_start: Tensor, text_q_len: Tensor, image_start: Tensor, padded_len: int,
                      image_len: int) -> tuple[Tensor, Tensor]:
    P, D = text_start.shape[0], x.shape[1]
    return x.new_empty((P, padded_len, D)), x.new_empty((P, image_len, D))


# ---------------------------------------------------------------------------------------------------------------
# Backward formulas: pack and unpack are each other's adjoint.
def _setup_pack(ctx, inputs, output) -> None:
    text, image, text_start, text_q_len, image_start, _ = inputs
    ctx.save_for_backward(text_start, text_q_len, image_start)
    ctx.padded_len = text.shape[1]
    ctx.image_len = None if image is None else image.shape[1]


def _backward_pack(ctx, grad: Tensor):
    text_start, text_q_len, image_start = ctx.saved_tensors
    g_text, g_image = torch.ops.vlmo_fast.unpack_rows(grad, text_start, text_q_len, image_start, ctx.padded_len,
                                                      ctx.image_len or 0)
    return g_text, (None if ctx.image_len is None else g_image), None, None, None, None


def _setup_unpack(ctx, inputs, output) -> None:
    x, text_start, text_q_len, image_start, _, _ = inputs
    ctx.save_for_backward(text_start, text_q_len, image_start)
    ctx.num_rows = x.shape[0]


def _backward_unpack(ctx, g_text: Tensor, g_image: Tensor):
    text_start, text_q_len, image_start = ctx.saved_tensors
    g_x = torch.ops.vlmo_fast.pack_rows(g_text, g_image, text_start, text_q_len, image_start, ctx.num_rows)
    return g_x, None, None, None, None, None


def _register_python_side() -> None:
    global _python_side_registered
    if _python_side_registered:  # a reset() followed by a reload must not register twice
        return
    fakes = {"mask_lengths": _fake_mask_lengths, "pack_plan": _fake_pack_plan,
             "plan_row_pair": _fake_plan_row_pair, "pack_rows": _fake_pack_rows,
             "unpack_rows": _fake_unpack_rows}
    for name, fake in fakes.items():
        torch.library.register_fake(f"vlmo_fast::{name}", fake)
    grads = {"pack_rows": (_backward_pack, _setup_pack), "unpack_rows": (_backward_unpack, _setup_unpack)}
    for name, (backward, setup) in grads.items():
        torch.library.register_autograd(f"vlmo_fast::{name}", backward, setup_context=setup)
    _python_side_registered = True
