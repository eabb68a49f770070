"""Windows at scale: N-free runs, non-overlapping slots, the seeded draw and window gathering, all as array operations.

No Python object is made per slot or per window: a human assembly has about ten million slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geno_pipeline.data.genome import N_CODE, Reference
from geno_pipeline.seeding import derive_seed

__all__ = ["Slots", "candidate_slots", "draw_split", "gather_windows", "n_free_runs", "slot_starts"]

SCAN_BLOCK = 1 << 24  # bases per block when scanning for N runs (bounded temporaries)
GATHER_ROWS = 4096  # windows per gather (bounded index arrays)


@dataclass(frozen=True)
class Slots:
    """Candidate window slots: where each starts in `Reference.codes`, and its record's index in `Reference.records`."""

    start: np.ndarray  # int64, ascending
    record: np.ndarray  # int64, non-decreasing

    @property
    def count(self) -> int:
        return int(self.start.size)


def n_free_runs(codes: np.ndarray, block: int = SCAN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of `codes` without N, found block by block."""
    edges: list[np.ndarray] = []
    previous_is_n = True  # as if an N stood before the first base
    for first in range(0, int(codes.size), block):
        is_n = codes[first : first + block] == N_CODE
        if bool(is_n[0]) != previous_is_n:
            edges.append(np.array([first], dtype=np.int64))
        edges.append(np.flatnonzero(is_n[1:] != is_n[:-1]).astype(np.int64) + (first + 1))
        previous_is_n = bool(is_n[-1])
    if not previous_is_n:
        edges.append(np.array([codes.size], dtype=np.int64))
    flat = np.concatenate(edges) if edges else np.empty(0, dtype=np.int64)
    return flat[0::2], flat[1::2]  # the first change is always N -> base, then they alternate


def slot_starts(run_starts: np.ndarray, run_ends: np.ndarray, slot: int) -> np.ndarray:
    """Starts of the non-overlapping slots of `slot` bases packed left to right inside each run, ascending."""
    counts = (run_ends - run_starts) // slot
    first_of_run = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_of_run, counts)
    return np.repeat(run_starts.astype(np.int64), counts) + within * slot


def candidate_slots(reference: Reference, slot: int) -> Slots:
    """Every N-free slot of `slot` bases in the selected records, in record then position order."""
    starts: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    records: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for index, record in enumerate(reference.records):
        if not record.selected:
            continue
        run_starts, run_ends = n_free_runs(reference.sequence(record))
        found = slot_starts(run_starts, run_ends, slot) + record.offset
        starts.append(found)
        records.append(np.full(found.size, index, dtype=np.int64))
    return Slots(np.concatenate(starts), np.concatenate(records))


def draw_split(
    slots: Slots, *, seed: int, train_windows: int, valid_windows: int, valid_records: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted slot indices of the train and valid windows, disjoint and seeded.

    Without `valid_records`, one seeded permutation of every slot gives both splits. With it (a boolean per
    record), valid windows come only from those records and train windows only from the others.
    """
    if valid_records is None:
        rng = np.random.default_rng(derive_seed(seed, "data.windows"))
        chosen = rng.permutation(slots.count)[: train_windows + valid_windows]
        return np.sort(chosen[:train_windows]), np.sort(chosen[train_windows:])
    held_out = valid_records[slots.record]
    out = []
    for pool, n, stream in ((np.flatnonzero(~held_out), train_windows, "train"), (np.flatnonzero(held_out), valid_windows, "valid")):
        rng = np.random.default_rng(derive_seed(seed, f"data.windows.{stream}"))
        out.append(np.sort(pool[rng.permutation(pool.size)[:n]]))
    return out[0], out[1]


def gather_windows(codes: np.ndarray, starts: np.ndarray, slot: int) -> np.ndarray:
    """codes[start : start + slot] for every start, as one uint8 array of shape (len(starts), slot)."""
    out = np.empty((starts.size, slot), dtype=np.uint8)
    offsets = np.arange(slot, dtype=np.int64)
    for first in range(0, int(starts.size), GATHER_ROWS):
        rows = starts[first : first + GATHER_ROWS]
        out[first : first + rows.size] = codes[rows[:, None] + offsets]
    return out
