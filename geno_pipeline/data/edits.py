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
    "EditBatch",
    "EditType",
    "RelEdit",
    "action_features",
    "apply_edit",
    "apply_edits",
    "sample_edits",
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


@dataclass(frozen=True)
class EditBatch:
    """One edit per row of a batch of buffers, as arrays (row b's edit is `rel_edit(b)`)."""

    types: np.ndarray  # int64 [n]: index into EDIT_TYPES
    position: np.ndarray  # int64 [n]: first replaced base, inside the window
    ref_length: np.ndarray  # int64 [n]: bases replaced
    alt_length: np.ndarray  # int64 [n]: bases put in their place
    alt: np.ndarray  # uint8 [n, MAX_EDIT_BASES]: those bases, zeros past alt_length

    def rel_edits(self, rows: np.ndarray) -> list[RelEdit]:
        """The edits of rows `rows` as `RelEdit`s."""
        types, position, ref_length = self.types.tolist(), self.position.tolist(), self.ref_length.tolist()
        alt_length, alt = self.alt_length.tolist(), self.alt.tolist()
        return [RelEdit(EDIT_TYPES[types[b]], position[b], ref_length[b], tuple(alt[b][: alt_length[b]])) for b in rows.tolist()]

    @classmethod
    def of(cls, edits: list[RelEdit]) -> EditBatch:
        """The arrays of a list of edits."""
        alt = np.zeros((len(edits), MAX_EDIT_BASES), dtype=np.uint8)
        for row, edit in enumerate(edits):
            alt[row, : len(edit.alt)] = edit.alt
        return cls(
            types=np.array([EDIT_TYPES.index(e.edit_type) for e in edits], dtype=np.int64),
            position=np.array([e.position for e in edits], dtype=np.int64),
            ref_length=np.array([e.ref_length for e in edits], dtype=np.int64),
            alt_length=np.array([len(e.alt) for e in edits], dtype=np.int64),
            alt=alt,
        )


_SUBSTITUTIONS = np.array([t in (EditType.SNV, EditType.MNV) for t in EDIT_TYPES])


def sample_edits(rng: np.random.Generator, types: np.ndarray, buffers: np.ndarray, window: int) -> EditBatch:
    """Draw one edit of type `EDIT_TYPES[types[b]]` inside the first `window` bases of each row of `buffers` [n, C].

    SNV: one base changed; MNV: 2 or 3 adjacent bases each changed; INS: 1..MAX_EDIT_BASES random bases inserted;
    DEL: 1..MAX_EDIT_BASES bases deleted; INDEL: 1..MAX_EDIT_BASES bases replaced by 1..MAX_EDIT_BASES random ones.
    Every row draws every variate, whatever its type, so the generator advances the same for any mix of types."""
    n = len(types)
    rows = np.arange(n)
    first = rng.integers(1, MAX_EDIT_BASES + 1, size=n)
    second = rng.integers(1, MAX_EDIT_BASES + 1, size=n)
    multi = rng.integers(2, 4, size=n)
    one, zero = np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    # rows by EDIT_TYPES: SNV, INS, DEL, MNV, INDEL
    ref_length = np.stack((one, zero, first, multi, first))[types, rows]
    alt_length = np.stack((one, first, zero, multi, second))[types, rows]
    position = rng.integers(0, window - np.maximum(ref_length, 1) + 1)
    shift = rng.integers(1, 4, size=(n, MAX_EDIT_BASES))
    fresh = rng.integers(0, 4, size=(n, MAX_EDIT_BASES))
    offsets = np.arange(MAX_EDIT_BASES)[None, :]
    ref = buffers[rows[:, None], np.minimum(position[:, None] + offsets, buffers.shape[1] - 1)].astype(np.int64)
    alt = np.where(_SUBSTITUTIONS[types][:, None], (ref + shift) % 4, fresh)
    alt = np.where(offsets < alt_length[:, None], alt, 0).astype(np.uint8)
    return EditBatch(types=types.astype(np.int64), position=position, ref_length=ref_length, alt_length=alt_length, alt=alt)


def apply_edits(buffers: np.ndarray, lengths: np.ndarray, edits: EditBatch, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each live row of `buffers` [n, C] (its first `lengths[b]` bases valid) after its edit, truncated at the right to C
    bases; the other rows unchanged. Returns the new buffers and valid lengths; bases past a row's length are 0."""
    out, new_lengths = buffers.copy(), lengths.copy()
    rows = np.flatnonzero(live)
    capacity = buffers.shape[1]
    i = np.arange(capacity, dtype=np.int32)[None, :]
    p, r, m = (a[rows, None].astype(np.int32) for a in (edits.position, edits.ref_length, edits.alt_length))
    source = np.where(i < p, i, i - m + r)
    kept = buffers[rows[:, None], np.minimum(source, capacity - 1)]
    kept[source >= lengths[rows, None]] = 0
    inserted = edits.alt[rows[:, None], np.clip(i - p, 0, MAX_EDIT_BASES - 1)]
    out[rows] = np.where((i >= p) & (i < p + m), inserted, kept)
    new_lengths[rows] = np.minimum(lengths[rows] - edits.ref_length[rows] + edits.alt_length[rows], capacity)
    return out, new_lengths


def apply_edit(buffer: np.ndarray, edit: RelEdit, *, capacity: int) -> np.ndarray:
    """The buffer after `edit`, truncated at the right to `capacity` bases (`apply_edits` on one row)."""
    length = min(len(buffer), capacity)
    row = np.zeros((1, capacity), dtype=np.uint8)
    row[0, :length] = buffer[:length]
    out, lengths = apply_edits(row, np.array([length]), EditBatch.of([edit]), np.array([True]))
    return out[0, : int(lengths[0])]


def action_features(edits: EditBatch, window: int) -> np.ndarray:
    """Float32 features [n, ACTION_FEATURES]: type one-hot, position, sinusoidal position, lengths, alt bases one-hot."""
    n = len(edits.types)
    base = len(EDIT_TYPES)
    x = edits.position / window
    angles = (np.pi * np.asarray(_POS_FREQS))[None, :] * x[:, None]
    off = base + 1 + 2 * len(_POS_FREQS)
    out = np.zeros((n, ACTION_FEATURES), dtype=np.float32)
    out[np.arange(n), edits.types] = 1.0
    out[:, base] = x
    out[:, base + 1 : off : 2] = np.sin(angles)
    out[:, base + 2 : off : 2] = np.cos(angles)
    out[:, off] = edits.ref_length / MAX_EDIT_BASES
    out[:, off + 1] = edits.alt_length / MAX_EDIT_BASES
    hot = (np.arange(MAX_EDIT_BASES)[None, :] < edits.alt_length[:, None]).astype(np.float32)
    bases = off + 2 + 4 * np.arange(MAX_EDIT_BASES)[None, :] + edits.alt
    np.put_along_axis(out, bases.astype(np.int64), hot, axis=1)
    return out
