"""Deterministic safetensors writer.

The safetensors library stores `__metadata__` in a hash map, so its header order (and thus the
file's bytes) can change from one process to the next. This writer emits the same format with a
canonical header (sorted keys, compact JSON, space padding to 8 bytes), so equal tensors and
metadata always give equal bytes. Files are read back with `safetensors` itself (never pickle).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["TensorBytes", "serialize_tensors", "tensor_bytes"]

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorBytes:
    """A tensor as the bytes a safetensors file stores: its dtype tag, shape and raw little-endian data (an owned copy,
    so it can be handed to another thread or process while training changes the tensor it came from)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def tensor_bytes(tensor: torch.Tensor) -> TensorBytes:
    """`tensor` (any device) copied out as `TensorBytes`; raises `ValueError` for a dtype safetensors files cannot hold."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"tensor has unsupported dtype {tensor.dtype}")
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return TensorBytes(_DTYPES[tensor.dtype], tuple(tensor.shape), raw.numpy().tobytes())


def serialize_tensors(tensors: Mapping[str, torch.Tensor | TensorBytes], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes for `tensors` (stored in name order) with string `metadata`. `TensorBytes` are stored as they
    are, with no torch call (what the checkpoint writer process is given)."""
    header: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name]
        try:
            blob = value if isinstance(value, TensorBytes) else tensor_bytes(value)
        except ValueError as exc:
            raise ValueError(f"tensor {name!r}: {exc}") from None
        header[name] = {"dtype": blob.dtype, "shape": list(blob.shape), "data_offsets": [offset, offset + len(blob.data)]}
        blobs.append(blob.data)
        offset += len(blob.data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)
