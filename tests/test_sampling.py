"""Property tests of the edit-type and rollout-length samplers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.training import (
    DEFAULT_EDIT_TYPE_WEIGHTS,
    DEFAULT_ROLLOUT_STEP_MIX,
    EditType,
    EditTypeWeight,
    RolloutStepWeight,
    draw_edit_type_counts,
    draw_rollout_step_counts,
    sample_edit_type,
    sample_edit_types_array,
    sample_rollout_steps,
    sample_rollout_steps_array,
)
from geno_pipeline.training.sampling import EDIT_TYPES, edit_type_weights_from_mapping, rollout_mix_from_mapping

positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def edit_weights(draw: st.DrawFn) -> tuple[EditTypeWeight, ...]:
    types = draw(st.lists(st.sampled_from(EDIT_TYPES), min_size=1, max_size=5, unique=True))
    return tuple(EditTypeWeight(t, draw(positive)) for t in types)


@st.composite
def rollout_mixes(draw: st.DrawFn) -> tuple[RolloutStepWeight, ...]:
    ks = draw(st.lists(st.integers(1, 12), min_size=1, max_size=6, unique=True))
    return tuple(RolloutStepWeight(k, draw(positive)) for k in ks)


def test_defaults_match_spec() -> None:
    assert {w.edit_type.value: w.weight for w in DEFAULT_EDIT_TYPE_WEIGHTS} == {
        "SNV": 0.40,
        "INS": 0.20,
        "DEL": 0.20,
        "MNV": 0.10,
        "INDEL": 0.10,
    }
    assert {w.steps: w.weight for w in DEFAULT_ROLLOUT_STEP_MIX} == {1: 0.90, 2: 0.05, 3: 0.05}


@settings(max_examples=200)
@given(weights=edit_weights(), n=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_sampling_edit_counts_sum_to_n_and_only_known_types(weights, n, seed) -> None:
    counts = draw_edit_type_counts(n, rng=random.Random(seed), weights=weights)
    assert sum(counts.values()) == n
    assert set(counts) == {w.edit_type for w in weights}
    assert all(isinstance(t, EditType) for t in counts)


@settings(max_examples=200)
@given(mix=rollout_mixes(), n=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_sampling_rollout_counts_sum_to_n_and_only_known_k(mix, n, seed) -> None:
    counts = draw_rollout_step_counts(n, rng=random.Random(seed), mix=mix)
    assert sum(counts.values()) == n
    assert set(counts) == {m.steps for m in mix}


@settings(max_examples=200)
@given(weights=edit_weights(), mix=rollout_mixes(), seed=st.integers(0, 2**32))
def test_sampling_zero_draws_give_all_zeros(weights, mix, seed) -> None:
    assert set(draw_edit_type_counts(0, rng=random.Random(seed), weights=weights).values()) == {0}
    assert set(draw_rollout_step_counts(0, rng=random.Random(seed), mix=mix).values()) == {0}
    assert sample_edit_types_array(np.random.default_rng(seed), 0, weights=weights).size == 0


@settings(max_examples=200)
@given(weights=edit_weights(), mix=rollout_mixes(), seed=st.integers(0, 2**32))
def test_sampling_same_seed_same_sequence(weights, mix, seed) -> None:
    a, b = random.Random(seed), random.Random(seed)
    assert [sample_edit_type(a, weights=weights) for _ in range(50)] == [sample_edit_type(b, weights=weights) for _ in range(50)]
    assert [sample_rollout_steps(a, mix=mix) for _ in range(50)] == [sample_rollout_steps(b, mix=mix) for _ in range(50)]
    va = sample_edit_types_array(np.random.default_rng(seed), 100, weights=weights)
    vb = sample_edit_types_array(np.random.default_rng(seed), 100, weights=weights)
    assert np.array_equal(va, vb)


@settings(max_examples=200)
@given(weights=edit_weights(), mix=rollout_mixes(), seed=st.integers(0, 2**32), c=positive)
def test_sampling_scaling_weights_leaves_sequence_unchanged(weights, mix, seed, c) -> None:
    scaled = tuple(EditTypeWeight(w.edit_type, w.weight * c) for w in weights)
    scaled_mix = tuple(RolloutStepWeight(m.steps, m.weight * c) for m in mix)
    a, b = random.Random(seed), random.Random(seed)
    assert [sample_edit_type(a, weights=weights) for _ in range(50)] == [sample_edit_type(b, weights=scaled) for _ in range(50)]
    assert [sample_rollout_steps(a, mix=mix) for _ in range(50)] == [sample_rollout_steps(b, mix=scaled_mix) for _ in range(50)]
    assert np.array_equal(
        sample_rollout_steps_array(np.random.default_rng(seed), 100, mix=mix),
        sample_rollout_steps_array(np.random.default_rng(seed), 100, mix=scaled_mix),
    )


def _within_five_sigma(counts: dict, weights: dict, n: int) -> None:
    total = sum(weights.values())
    for key, weight in weights.items():
        p = weight / total
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts.get(key, 0) - n * p) <= 5 * sigma + 1, (key, counts.get(key, 0), n * p)


@settings(max_examples=25, deadline=None)
@given(weights=edit_weights(), mix=rollout_mixes(), seed=st.integers(0, 2**32))
def test_sampling_large_n_frequencies_within_five_sigma(weights, mix, seed) -> None:
    n = 20_000
    w = {e.edit_type: e.weight for e in weights}
    m = {e.steps: e.weight for e in mix}
    _within_five_sigma(draw_edit_type_counts(n, rng=random.Random(seed), weights=weights), w, n)
    _within_five_sigma(draw_rollout_step_counts(n, rng=random.Random(seed), mix=mix), m, n)
    gen = np.random.default_rng(seed)
    idx = sample_edit_types_array(gen, 200_000, weights=weights)
    vec_counts = {EDIT_TYPES[i]: int(c) for i, c in enumerate(np.bincount(idx, minlength=5)) if c}
    _within_five_sigma(vec_counts, w, 200_000)
    ks = sample_rollout_steps_array(gen, 200_000, mix=mix)
    _within_five_sigma(dict(zip(*np.unique(ks, return_counts=True), strict=True)), m, 200_000)


BAD_EDIT = [
    ((EditTypeWeight(EditType.SNV, 0.0),), r"entry 0 \(SNV\): weight must be finite and > 0"),
    ((EditTypeWeight(EditType.SNV, -1.0),), r"entry 0 \(SNV\): weight must be finite and > 0"),
    ((EditTypeWeight(EditType.SNV, 1.0), EditTypeWeight(EditType.INS, float("nan"))), r"entry 1 \(INS\): weight must be finite"),
    ((EditTypeWeight(EditType.DEL, float("inf")),), r"entry 0 \(DEL\): weight must be finite"),
    ((EditTypeWeight(EditType.DEL, True),), r"entry 0 \(DEL\): weight must be a number"),
    ((EditTypeWeight(EditType.SNV, 1.0), EditTypeWeight(EditType.SNV, 1.0)), r"entry 1 \(SNV\): duplicate edit type"),
    ((EditTypeWeight("XYZ", 1.0),), r"entry 0: unknown edit type 'XYZ'"),  # type: ignore[arg-type]
    ((), r"must not be empty"),
]

BAD_MIX = [
    ((RolloutStepWeight(0, 1.0),), r"entry 0 \(K=0\): K must be an integer >= 1"),
    ((RolloutStepWeight(1, 1.0), RolloutStepWeight(1, 2.0)), r"entry 1 \(K=1\): duplicate K"),
    ((RolloutStepWeight(2, float("nan")),), r"entry 0 \(K=2\): weight must be finite"),
    ((RolloutStepWeight(2, False),), r"entry 0 \(K=2\): weight must be a number"),
    ((RolloutStepWeight(True, 1.0),), r"entry 0 \(K=True\): K must be an integer"),  # type: ignore[arg-type]
    ((), r"must not be empty"),
]


@pytest.mark.parametrize(("weights", "message"), BAD_EDIT)
def test_sampling_invalid_edit_weights_raise_naming_entry(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        sample_edit_type(random.Random(0), weights=weights)
    with pytest.raises(ValueError, match=message):
        sample_edit_types_array(np.random.default_rng(0), 3, weights=weights)
    with pytest.raises(ValueError, match=message):
        draw_edit_type_counts(3, rng=random.Random(0), weights=weights)


@pytest.mark.parametrize(("mix", "message"), BAD_MIX)
def test_sampling_invalid_rollout_mix_raises_naming_entry(mix, message) -> None:
    with pytest.raises(ValueError, match=message):
        sample_rollout_steps(random.Random(0), mix=mix)
    with pytest.raises(ValueError, match=message):
        draw_rollout_step_counts(3, rng=random.Random(0), mix=mix)


def test_sampling_negative_n_raises() -> None:
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        draw_edit_type_counts(-1, rng=random.Random(0))


def test_sampling_params_mappings_feed_samplers() -> None:
    weights = edit_type_weights_from_mapping({"SNV": 2.0, "DEL": 1.0})
    assert weights == (EditTypeWeight(EditType.SNV, 2.0), EditTypeWeight(EditType.DEL, 1.0))
    assert rollout_mix_from_mapping({3: 1.0, 1: 1.0}) == (RolloutStepWeight(1, 1.0), RolloutStepWeight(3, 1.0))
    with pytest.raises(ValueError, match="unknown edit type 'FOO'"):
        edit_type_weights_from_mapping({"FOO": 1.0})
