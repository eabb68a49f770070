"""Edit-type and rollout-length samplers (scalar on `random.Random`, vectorized on numpy).

Weights are normalised by their sum and drawn by a cumulative search; invalid weights or mixes
raise `ValueError` naming the bad entry.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geno_pipeline.data.edits import EDIT_TYPES, EditType

__all__ = [
    "DEFAULT_EDIT_TYPE_WEIGHTS",
    "DEFAULT_ROLLOUT_STEP_MIX",
    "EDIT_TYPES",
    "EditType",
    "EditTypeWeight",
    "RolloutStepWeight",
    "draw_edit_type_counts",
    "draw_rollout_step_counts",
    "edit_type_weights_from_mapping",
    "rollout_mix_from_mapping",
    "sample_edit_type",
    "sample_edit_types_array",
    "sample_rollout_steps",
    "sample_rollout_steps_array",
]


@dataclass(frozen=True)
class EditTypeWeight:
    """One edit-type sampling weight."""

    edit_type: EditType
    weight: float


@dataclass(frozen=True)
class RolloutStepWeight:
    """One rollout-step-count (K) sampling weight."""

    steps: int
    weight: float


DEFAULT_EDIT_TYPE_WEIGHTS: tuple[EditTypeWeight, ...] = (
    EditTypeWeight(EditType.SNV, 0.40),
    EditTypeWeight(EditType.INS, 0.20),
    EditTypeWeight(EditType.DEL, 0.20),
    EditTypeWeight(EditType.MNV, 0.10),
    EditTypeWeight(EditType.INDEL, 0.10),
)

DEFAULT_ROLLOUT_STEP_MIX: tuple[RolloutStepWeight, ...] = (
    RolloutStepWeight(1, 0.90),
    RolloutStepWeight(2, 0.05),
    RolloutStepWeight(3, 0.05),
)


def _check_weight(label: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{label}: weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{label}: weight must be finite and > 0, got {weight!r}")
    return float(weight)


def _edit_table(weights: Sequence[EditTypeWeight]) -> tuple[tuple[EditType, ...], tuple[float, ...]]:
    """Validated (types, normalised cumulative probabilities)."""
    if len(weights) == 0:
        raise ValueError("edit type weights: must not be empty")
    types: list[EditType] = []
    raw: list[float] = []
    for index, entry in enumerate(weights):
        if not isinstance(entry, EditTypeWeight):
            raise ValueError(f"edit type weight entry {index}: expected EditTypeWeight, got {entry!r}")
        try:
            edit_type = EditType(entry.edit_type)
        except ValueError:
            raise ValueError(f"edit type weight entry {index}: unknown edit type {entry.edit_type!r}") from None
        if edit_type in types:
            raise ValueError(f"edit type weight entry {index} ({edit_type.value}): duplicate edit type")
        raw.append(_check_weight(f"edit type weight entry {index} ({edit_type.value})", entry.weight))
        types.append(edit_type)
    return tuple(types), _cumulative(raw)


def _mix_table(mix: Sequence[RolloutStepWeight]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Validated (K values, normalised cumulative probabilities)."""
    if len(mix) == 0:
        raise ValueError("rollout step mix: must not be empty")
    steps: list[int] = []
    raw: list[float] = []
    for index, entry in enumerate(mix):
        if not isinstance(entry, RolloutStepWeight):
            raise ValueError(f"rollout step mix entry {index}: expected RolloutStepWeight, got {entry!r}")
        k = entry.steps
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"rollout step mix entry {index} (K={k!r}): K must be an integer >= 1")
        if k in steps:
            raise ValueError(f"rollout step mix entry {index} (K={k}): duplicate K")
        raw.append(_check_weight(f"rollout step mix entry {index} (K={k})", entry.weight))
        steps.append(k)
    return tuple(steps), _cumulative(raw)


def _cumulative(raw: Sequence[float]) -> tuple[float, ...]:
    total = math.fsum(raw)
    cum: list[float] = []
    running = 0.0
    for weight in raw:
        running += weight
        cum.append(running / total)
    cum[-1] = 1.0  # the last bucket takes every u in [0, 1)
    return tuple(cum)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return n


def sample_edit_type(rng: random.Random, *, weights: Sequence[EditTypeWeight] = DEFAULT_EDIT_TYPE_WEIGHTS) -> EditType:
    """Sample one edit type from the normalised weights."""
    types, cum = _edit_table(weights)
    return types[bisect.bisect_right(cum, rng.random())]


def sample_rollout_steps(rng: random.Random, *, mix: Sequence[RolloutStepWeight] = DEFAULT_ROLLOUT_STEP_MIX) -> int:
    """Sample a rollout length K from the normalised mix."""
    steps, cum = _mix_table(mix)
    return steps[bisect.bisect_right(cum, rng.random())]


def draw_edit_type_counts(
    n: int, *, rng: random.Random, weights: Sequence[EditTypeWeight] = DEFAULT_EDIT_TYPE_WEIGHTS
) -> dict[EditType, int]:
    """Draw `n` edit types; return counts for every weighted type (summing to `n`)."""
    types, cum = _edit_table(weights)
    counts = dict.fromkeys(types, 0)
    for _ in range(_check_n(n)):
        counts[types[bisect.bisect_right(cum, rng.random())]] += 1
    return counts


def draw_rollout_step_counts(n: int, *, rng: random.Random, mix: Sequence[RolloutStepWeight] = DEFAULT_ROLLOUT_STEP_MIX) -> dict[int, int]:
    """Draw `n` rollout lengths; return counts for every K in the mix (summing to `n`)."""
    steps, cum = _mix_table(mix)
    counts = dict.fromkeys(steps, 0)
    for _ in range(_check_n(n)):
        counts[steps[bisect.bisect_right(cum, rng.random())]] += 1
    return counts


def sample_edit_types_array(
    rng: np.random.Generator, n: int, *, weights: Sequence[EditTypeWeight] = DEFAULT_EDIT_TYPE_WEIGHTS
) -> np.ndarray:
    """Vectorized: `n` edit types as int8 indices into `EDIT_TYPES`."""
    types, cum = _edit_table(weights)
    picks = np.searchsorted(np.asarray(cum), rng.random(_check_n(n)), side="right")
    lookup = np.asarray([EDIT_TYPES.index(t) for t in types], dtype=np.int8)
    return lookup[picks]


def sample_rollout_steps_array(
    rng: np.random.Generator, n: int, *, mix: Sequence[RolloutStepWeight] = DEFAULT_ROLLOUT_STEP_MIX
) -> np.ndarray:
    """Vectorized: `n` rollout lengths K as int64."""
    steps, cum = _mix_table(mix)
    picks = np.searchsorted(np.asarray(cum), rng.random(_check_n(n)), side="right")
    return np.asarray(steps, dtype=np.int64)[picks]


def edit_type_weights_from_mapping(mapping: Mapping[str, float]) -> tuple[EditTypeWeight, ...]:
    """`{"SNV": 0.4, ...}` (as in params) -> validated EditTypeWeight tuple in EDIT_TYPES order."""
    unknown = [name for name in mapping if name not in EditType.__members__]
    if unknown:
        raise ValueError(f"edit type weights: unknown edit type {unknown[0]!r}")
    out = tuple(EditTypeWeight(t, mapping[t.value]) for t in EDIT_TYPES if t.value in mapping)
    _edit_table(out)
    return out


def rollout_mix_from_mapping(mapping: Mapping[int, float]) -> tuple[RolloutStepWeight, ...]:
    """`{1: 0.9, ...}` (as in params) -> validated RolloutStepWeight tuple sorted by K."""
    out = tuple(RolloutStepWeight(k, mapping[k]) for k in sorted(mapping))
    _mix_table(out)
    return out
