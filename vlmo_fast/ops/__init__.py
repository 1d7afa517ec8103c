"""One dispatch point per op: the Triton kernel on CUDA, the compiled extension, or the torch reference.

`VLMO_FAST_KERNELS=ref` forces the references everywhere; `VLMO_FAST_KERNELS=triton` forces the Triton
kernels, on the CPU too (under TRITON_INTERPRET=1).
"""
