"""The packed modality-major token layout (design.md, "The packed layout"): a record of plain tensors and ints,
defined beside the kernels that read it (kernels/layout.py) so that they import nothing from the package."""
from vlmo_fast.kernels.layout import PackedLayout

__all__ = ["PackedLayout"]
