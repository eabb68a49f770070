"""Training tuples: (source window, K relative edits, K target windows), drawn by a seeded sampler.

The sampler owns one numpy Generator whose state is checkpointed, so a resumed run draws exactly
the tuples the straight run would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geno_pipeline.data.edits import ACTION_FEATURES, RelEdit, action_features, apply_edit, sample_edit
from geno_pipeline.training.sampling import (
    EDIT_TYPES,
    EditTypeWeight,
    RolloutStepWeight,
    sample_edit_types_array,
    sample_rollout_steps_array,
)

__all__ = ["TupleBatch", "TupleSampler", "draw_tuples", "take_rows"]


@dataclass(frozen=True)
class TupleBatch:
    """A batch of tuples as arrays (K_max = longest rollout in the batch)."""

    sources: np.ndarray  # uint8 [B, L]
    targets: np.ndarray  # uint8 [B, K_max, L]; padding repeats the last real target
    actions: np.ndarray  # float32 [B, K_max, ACTION_FEATURES]; zeros for padding
    mask: np.ndarray  # bool [B, K_max]; True where step k < K_b
    rollout_steps: np.ndarray  # int64 [B]
    rows: np.ndarray  # int64 [B]: each source's row in the windows it was drawn from
    window_ids: tuple[str, ...]
    rel_edits: tuple[tuple[RelEdit, ...], ...]


def draw_tuples(
    rng: np.random.Generator,
    windows: np.ndarray,
    n: int,
    *,
    window_length: int,
    weights: Sequence[EditTypeWeight],
    mix: Sequence[RolloutStepWeight],
    split: str,
) -> TupleBatch:
    """Draw `n` tuples from `windows` (uint8 [W, L + flank])."""
    rows = rng.integers(0, windows.shape[0], size=n)
    ks = sample_rollout_steps_array(rng, n, mix=mix)
    k_max = int(ks.max()) if n else 0
    types = sample_edit_types_array(rng, n * k_max, weights=weights).reshape(n, k_max)
    capacity = windows.shape[1]
    targets = np.zeros((n, k_max, window_length), dtype=np.uint8)
    actions = np.zeros((n, k_max, ACTION_FEATURES), dtype=np.float32)
    all_edits: list[tuple[RelEdit, ...]] = []
    for b in range(n):
        buffer = windows[rows[b]]
        edits: list[RelEdit] = []
        for k in range(int(ks[b])):
            edit = sample_edit(rng, EDIT_TYPES[int(types[b, k])], buffer, window_length)
            buffer = apply_edit(buffer, edit, capacity=capacity)
            targets[b, k] = buffer[:window_length]
            edits.append(edit)
        targets[b, len(edits) :] = buffer[:window_length]
        actions[b, : len(edits)] = action_features(edits, window_length)
        all_edits.append(tuple(edits))
    mask = np.arange(k_max)[None, :] < ks[:, None]
    return TupleBatch(
        sources=np.ascontiguousarray(windows[rows, :window_length]),
        targets=targets,
        actions=actions,
        mask=mask,
        rollout_steps=ks,
        rows=rows.astype(np.int64),
        window_ids=tuple(f"{split}:{int(r)}" for r in rows),
        rel_edits=tuple(all_edits),
    )


def take_rows(batch: TupleBatch, rows: slice) -> TupleBatch:
    """The examples `rows` of a batch (a micro-batch); K_max stays the whole batch's, so every micro-batch has the same shape."""
    return TupleBatch(
        sources=batch.sources[rows],
        targets=batch.targets[rows],
        actions=batch.actions[rows],
        mask=batch.mask[rows],
        rollout_steps=batch.rollout_steps[rows],
        rows=batch.rows[rows],
        window_ids=batch.window_ids[rows],
        rel_edits=batch.rel_edits[rows],
    )


class TupleSampler:
    """Seeded stream of training batches; `state()`/`set_state()` make it resumable."""

    def __init__(self, seed: int, *, window_length: int, weights: Sequence[EditTypeWeight], mix: Sequence[RolloutStepWeight]) -> None:
        self._rng = np.random.default_rng(seed)
        self.window_length = window_length
        self.weights = tuple(weights)
        self.mix = tuple(mix)

    def draw(self, windows: np.ndarray, batch_size: int) -> TupleBatch:
        """The next batch."""
        return draw_tuples(
            self._rng, windows, batch_size, window_length=self.window_length, weights=self.weights, mix=self.mix, split="train"
        )

    def state(self) -> dict[str, Any]:
        """JSON-serialisable generator state."""
        return dict(self._rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from `state()`."""
        self._rng.bit_generator.state = state
