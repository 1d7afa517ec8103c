"""Triton kernels of vlmo-fast, installed as the subpackage vlmo_fast.kernels.

Each module holds one op: its torch reference, its Triton kernels and the custom op that wraps them.
"""
