"""The safetensors format written tensor by tensor into any binary file object.

safetensors' own writers either take a path (so the bytes cannot be hashed on their way to the disk) or build the
whole file in memory (a second copy of a multi-GB model).  The format is small: an 8-byte little-endian header
length, a JSON header (dtype, shape and byte range of every tensor, optional string metadata) padded with spaces
to 8 bytes, then the raw little-endian bytes.  Tensors are laid out as safetensors lays them out (wider dtypes
first, then by name), so the file is the one `safetensors.torch.save_file` writes."""
from __future__ import annotations

import json
import struct
import sys

import torch
from torch import Tensor

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
ALIGN = 8


def _header(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> bytes:
    entries: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name")
        size = t.numel() * t.element_size()
        entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-(len(text) + 8) % ALIGN)


def write_safetensors(tensors: dict[str, Tensor], file, metadata: dict[str, str] | None = None) -> None:
    """Write CPU tensors to `file` (anything with write(bytes)) in the safetensors format."""
    if sys.byteorder != "little":
        raise RuntimeError("write_safetensors writes the host's byte order and supports little-endian hosts only")
    ordered = {k: tensors[k].detach().contiguous() for k in
               sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))}
    header = _header(ordered, metadata)
    file.write(struct.pack("<Q", len(header)))
    file.write(header)
    for t in ordered.values():
        if t.numel():
            file.write(t.reshape(-1).view(torch.uint8).numpy().data)
