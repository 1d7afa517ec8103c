"""The relative-position rule of VLMo (spec 1.4), defined beside the attention kernels that compute it on the fly
(kernels/relpos.py); the model and the checkpoint converters read it through here."""
from vlmo_fast.kernels.relpos import IMAGE, TEXT, num_image_rows, relpos_index, segment_index, table_rows

__all__ = ["IMAGE", "TEXT", "num_image_rows", "relpos_index", "segment_index", "table_rows"]
