"""Relative edits on fixed-length DNA windows and their action features.

A window is the first L bases of a buffer that also holds the following reference bases (the
flank). An edit changes the buffer; the window keeps length L by truncating at the right after an
insertion or by pulling in following reference bases after a deletion.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "ACTION_FEATURES",
    "EDIT_TYPES",
    "EDIT_TYPE_NAMES",
    "MAX_EDIT_BASES",
    "EditType",
    "RelEdit",
    "action_features",
    "apply_edit",
    "sample_edit",
]


class EditType(str, Enum):
    """Kinds of relative edit applied to a DNA window."""

    SNV = "SNV"
    INS = "INS"
    DEL = "DEL"
    MNV = "MNV"
    INDEL = "INDEL"


EDIT_TYPES: tuple[EditType, ...] = tuple(EditType)
EDIT_TYPE_NAMES: tuple[str, ...] = tuple(t.value for t in EDIT_TYPES)
MAX_EDIT_BASES = 10  # longest inserted or deleted run of one edit (bases)
_POS_FREQS = (1.0, 2.0, 4.0, 8.0)
# type one-hot, position, 2 x 4 sinusoidal position features, ref/alt lengths, alt bases one-hot
ACTION_FEATURES = len(EDIT_TYPES) + 1 + 2 * len(_POS_FREQS) + 2 + 4 * MAX_EDIT_BASES


@dataclass(frozen=True)
class RelEdit:
    """One edit relative to the current window: replace `ref_length` bases at `position` by `alt`."""

    edit_type: EditType
    position: int
    ref_length: int
    alt: tuple[int, ...]


def sample_edit(rng: np.random.Generator, edit_type: EditType, buffer: np.ndarray, window: int) -> RelEdit:
    """Draw one edit of `edit_type` inside the first `window` bases of `buffer`."""
    if edit_type is EditType.SNV:
        p = int(rng.integers(0, window))
        return RelEdit(edit_type, p, 1, ((int(buffer[p]) + int(rng.integers(1, 4))) % 4,))
    if edit_type is EditType.MNV:
        n = int(rng.integers(2, 4))
        p = int(rng.integers(0, window - n + 1))
        alt = (buffer[p : p + n].astype(np.int64) + rng.integers(1, 4, size=n)) % 4
        return RelEdit(edit_type, p, n, tuple(int(b) for b in alt))
    if edit_type is EditType.INS:
        m = int(rng.integers(1, MAX_EDIT_BASES + 1))
        p = int(rng.integers(0, window))
        return RelEdit(edit_type, p, 0, tuple(int(b) for b in rng.integers(0, 4, size=m)))
    if edit_type is EditType.DEL:
        n = int(rng.integers(1, MAX_EDIT_BASES + 1))
        return RelEdit(edit_type, int(rng.integers(0, window - n + 1)), n, ())
    if edit_type is EditType.INDEL:
        n = int(rng.integers(1, MAX_EDIT_BASES + 1))
        m = int(rng.integers(1, MAX_EDIT_BASES + 1))
        p = int(rng.integers(0, window - n + 1))
        return RelEdit(edit_type, p, n, tuple(int(b) for b in rng.integers(0, 4, size=m)))
    raise ValueError(f"unknown edit type {edit_type!r}")


def apply_edit(buffer: np.ndarray, edit: RelEdit, *, capacity: int) -> np.ndarray:
    """The buffer after `edit`, truncated at the right to `capacity` bases."""
    alt = np.asarray(edit.alt, dtype=np.uint8)
    out = np.concatenate((buffer[: edit.position], alt, buffer[edit.position + edit.ref_length :]))
    return out[:capacity]


def action_features(edits: list[RelEdit], window: int) -> np.ndarray:
    """Float32 features [len(edits), ACTION_FEATURES]: type, position, lengths and bases."""
    out = np.zeros((len(edits), ACTION_FEATURES), dtype=np.float32)
    base = len(EDIT_TYPES)
    for row, edit in enumerate(edits):
        out[row, EDIT_TYPES.index(edit.edit_type)] = 1.0
        x = edit.position / window
        out[row, base] = x
        for j, freq in enumerate(_POS_FREQS):
            out[row, base + 1 + 2 * j] = np.sin(np.pi * freq * x)
            out[row, base + 2 + 2 * j] = np.cos(np.pi * freq * x)
        off = base + 1 + 2 * len(_POS_FREQS)
        out[row, off] = edit.ref_length / MAX_EDIT_BASES
        out[row, off + 1] = len(edit.alt) / MAX_EDIT_BASES
        for j, b in enumerate(edit.alt[:MAX_EDIT_BASES]):
            out[row, off + 2 + 4 * j + b] = 1.0
    return out
