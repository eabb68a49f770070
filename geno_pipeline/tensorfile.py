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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["TensorBytes", "all_finite", "serialize_tensors", "tensor_bytes"]

# safetensors' dtype tags by torch dtype name (torch is imported only where a torch tensor is converted: a process that
# writes stored bytes, like the release stage, never loads it)
_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
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
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    tag = _DTYPES.get(str(tensor.dtype).removeprefix("torch."))
    if tag is None:
        raise ValueError(f"tensor has unsupported dtype {tensor.dtype}")
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return TensorBytes(tag, tuple(tensor.shape), raw.numpy().tobytes())


_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def all_finite(blob: TensorBytes) -> bool:
    """Whether every value of a stored tensor is finite: no NaN or inf in a floating-point one (integer and bool
    tensors always are). bfloat16 is a float32's high 16 bits: an exponent of all ones is inf or NaN."""
    import numpy as np

    if blob.dtype == "BF16":
        return not bool(((np.frombuffer(blob.data, dtype="<u2") & 0x7F80) == 0x7F80).any())
    if blob.dtype in _FLOATS:
        return bool(np.isfinite(np.frombuffer(blob.data, dtype=_FLOATS[blob.dtype])).all())
    return True


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
