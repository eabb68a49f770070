"""What a user of a released model passes in: DNA windows as strings (or codes) and edits as `Edit` records.

`dna_codes` turns windows into the uint8 codes the encoder reads (A=0, C=1, G=2, T=3). `Edit` names one change by its
position in the window and the bases it replaces, as a VCF record does (`ref` -> `alt`, both as written on the window's
strand); `edit_actions` turns each window's edits into the action features the model was trained on, after checking
every edit against its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geno_pipeline.data.edits import ACTION_FEATURES, MAX_EDIT_BASES, EditType, RelEdit, action_features, apply_edit

__all__ = ["Edit", "dna_codes", "edit_actions"]

_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _base in enumerate("ACGT"):
    _CODE[ord(_base)] = _CODE[ord(_base.lower())] = _i


@dataclass(frozen=True)
class Edit:
    """Replace the bases `ref` at 0-based `position` of the window by `alt`.

    `Edit(10, "A", "G")` is an SNV, `Edit(10, "", "TT")` inserts TT before base 10, `Edit(10, "AC", "")` deletes two
    bases, `Edit(10, "AC", "GT")` is an MNV and `Edit(10, "AC", "T")` an indel. At most 10 bases on each side.
    """

    position: int
    ref: str
    alt: str

    @property
    def kind(self) -> EditType:
        """SNV, MNV, INS, DEL or INDEL, from the lengths of `ref` and `alt`."""
        if len(self.ref) == len(self.alt):
            return EditType.SNV if len(self.ref) == 1 else EditType.MNV
        if not self.ref:
            return EditType.INS
        return EditType.DEL if not self.alt else EditType.INDEL


def dna_codes(windows: Sequence[str] | np.ndarray, window_length: int) -> np.ndarray:
    """uint8 codes [N, window_length] of the first `window_length` bases of each window (strings of A, C, G, T in
    either case, or a code array); raises `ValueError` naming the window and the position of anything else."""
    if isinstance(windows, np.ndarray):
        codes = np.asarray(windows)
        if codes.ndim != 2 or codes.shape[1] < window_length or codes.dtype != np.uint8 or (codes > 3).any():
            raise ValueError(f"windows: expected uint8 codes 0..3 of shape [N, >= {window_length}], got {codes.dtype} {list(codes.shape)}")
        return np.ascontiguousarray(codes[:, :window_length])
    if isinstance(windows, str):
        raise ValueError("windows: expected a list of DNA strings, got one string; wrap it in a list")
    out = np.empty((len(windows), window_length), dtype=np.uint8)
    for row, text in enumerate(windows):
        if len(text) < window_length:
            raise ValueError(f"windows[{row}]: {len(text)} bases, the model reads windows of {window_length}")
        codes = _CODE[np.frombuffer(text[:window_length].encode("latin-1", "replace"), dtype=np.uint8)]
        bad = np.flatnonzero(codes == 255)
        if bad.size:
            raise ValueError(f"windows[{row}]: base {text[int(bad[0])]!r} at position {int(bad[0])}; the model reads A, C, G and T only")
        out[row] = codes
    return out


def _rel_edit(edit: Edit, codes: np.ndarray, window_length: int, where: str) -> RelEdit:
    """`edit` checked against the window's current bases `codes`, as the trainer's relative edit."""
    if not edit.ref and not edit.alt:
        raise ValueError(f"{where}: an edit changes at least one base (ref and alt are both empty)")
    if len(edit.ref) > MAX_EDIT_BASES or len(edit.alt) > MAX_EDIT_BASES:
        raise ValueError(f"{where}: at most {MAX_EDIT_BASES} bases on each side, got ref {len(edit.ref)}, alt {len(edit.alt)}")
    if not 0 <= edit.position < window_length or edit.position + len(edit.ref) > window_length:
        raise ValueError(f"{where}: position {edit.position} with {len(edit.ref)} ref base(s) is outside the {window_length}-base window")
    ref = dna_codes([edit.ref], len(edit.ref))[0] if edit.ref else np.zeros(0, np.uint8)
    if not np.array_equal(codes[edit.position : edit.position + len(edit.ref)], ref):
        have = "".join("ACGT"[int(b)] for b in codes[edit.position : edit.position + len(edit.ref)])
        raise ValueError(f"{where}: ref {edit.ref!r} at position {edit.position}, but the window has {have!r} there")
    alt = dna_codes([edit.alt], len(edit.alt))[0] if edit.alt else np.zeros(0, np.uint8)
    if edit.kind in (EditType.SNV, EditType.MNV) and (alt == ref).any():
        raise ValueError(f"{where}: {edit.kind.value} {edit.ref!r} -> {edit.alt!r} leaves a base unchanged")
    return RelEdit(edit.kind, edit.position, len(edit.ref), tuple(int(b) for b in alt))


def edit_actions(codes: np.ndarray, edits: Sequence[Edit | Sequence[Edit]], window_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(actions float32 [N, K, ACTION_FEATURES], steps int64 [N]) for each window's edits, applied in order (one `Edit`
    or a sequence of them per window; K is the longest). Each edit is checked against the window as the edits before
    it left it, which the window's flank (bases after `window_length` in `codes`) feeds after a deletion."""
    if len(edits) != codes.shape[0]:
        raise ValueError(f"edits: {len(edits)} entries for {codes.shape[0]} windows; give one edit (or a list of edits) per window")
    per_window = [[e] if isinstance(e, Edit) else list(e) for e in edits]
    k = max((len(e) for e in per_window), default=0)
    actions = np.zeros((len(per_window), max(k, 1), ACTION_FEATURES), dtype=np.float32)
    steps = np.zeros(len(per_window), dtype=np.int64)
    for row, window_edits in enumerate(per_window):
        if not window_edits:
            raise ValueError(f"edits[{row}]: no edit for this window")
        buffer, rel = codes[row], []
        for step, edit in enumerate(window_edits):
            rel.append(_rel_edit(edit, buffer, window_length, f"edits[{row}][{step}]"))
            buffer = apply_edit(buffer, rel[-1], capacity=codes.shape[1])
        actions[row, : len(rel)] = action_features(rel, window_length)
        steps[row] = len(rel)
    return actions, steps
