"""Which implementation an op uses, decided per call from the device and VLMO_FAST_KERNELS."""
from __future__ import annotations

import os

import torch
from torch import Tensor

_CHOICES = ("auto", "ref", "triton")


def kernel_choice() -> str:
    """The value of VLMO_FAST_KERNELS (auto, ref or triton); read on every call so tests can switch it."""
    choice = os.environ.get("VLMO_FAST_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"VLMO_FAST_KERNELS={choice!r}: expected one of {', '.join(_CHOICES)}")
    return choice


def use_triton(x: Tensor) -> bool:
    """Triton on CUDA by default; forced (also on the CPU, under the interpreter) by VLMO_FAST_KERNELS=triton."""
    choice = kernel_choice()
    if choice == "ref":
        return False
    if choice == "triton":
        return True
    return x.is_cuda


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will record an op on these tensors (the CPU paths differ for training and inference)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
