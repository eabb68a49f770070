"""Property tests and hand-computed spot values of the learning-rate schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.training import set_optimizer_lr, wsd_lr_multiplier


@st.composite
def wsd_case(draw: st.DrawFn) -> tuple[int, int]:
    warmup = draw(st.integers(0, 300))
    total = draw(st.integers(warmup + 1, warmup + 3000))
    return total, warmup


def _all(total: int, warmup: int, schedule: str = "wsd") -> list[float]:
    return [wsd_lr_multiplier(s, total_steps=total, warmup_steps=warmup, schedule=schedule) for s in range(1, total + 1)]


def _max_slope(total: int, warmup: int) -> float:
    post = total - warmup
    decay_start = warmup + max(1, int(0.80 * post))
    taper_start = warmup + max(1, int(0.98 * post))
    slopes = [1.0 / warmup if warmup else 0.0]
    taper_slope = 0.09 / (total - taper_start) if total > taper_start else 0.0
    slopes.append(taper_slope)
    if taper_start > decay_start:
        slopes.append(0.9 / (taper_start - decay_start))
    else:
        # very short runs (2..5 post-warmup steps): the decay phase has no steps, so the formula
        # itself drops 0.9 in one step on top of the taper's first step
        slopes.append(0.9 + taper_slope)
    return max(slopes)


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_range(case) -> None:
    total, warmup = case
    values = _all(total, warmup)
    # post-warmup steps live in [0.01, 1]; warmup steps in (0, 1] (step/warmup may be < 0.01)
    assert all(0.01 <= v <= 1.0 for v in values[warmup:])
    assert all(0.0 < v <= 1.0 for v in values[:warmup])


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_warmup_is_linear_and_increasing(case) -> None:
    total, warmup = case
    values = _all(total, warmup)
    for step in range(1, warmup + 1):
        assert values[step - 1] == step / warmup
    assert all(a < b for a, b in itertools.pairwise(values[:warmup]))


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_plateau_is_exactly_one(case) -> None:
    total, warmup = case
    post = total - warmup
    decay_start = warmup + max(1, int(0.80 * post))
    for step in range(warmup + 1, decay_start + 1):
        assert wsd_lr_multiplier(step, total_steps=total, warmup_steps=warmup) == 1.0


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_non_increasing_after_warmup(case) -> None:
    total, warmup = case
    values = _all(total, warmup)[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(values))


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_no_jumps(case) -> None:
    total, warmup = case
    values = _all(total, warmup)
    bound = _max_slope(total, warmup) + 1e-12
    if warmup:
        assert values[0] <= bound  # the first step rises from 0 at the warmup slope
    assert all(abs(b - a) <= bound for a, b in itertools.pairwise(values))


@settings(max_examples=200)
@given(case=wsd_case())
def test_schedule_wsd_last_step_is_floor(case) -> None:
    total, warmup = case
    if total - warmup >= 2:
        assert wsd_lr_multiplier(total, total_steps=total, warmup_steps=warmup) == 0.01


@settings(max_examples=200)
@given(warmup=st.integers(1, 500), data=st.data())
def test_schedule_wsd_all_warmup_when_total_le_warmup(warmup, data) -> None:
    total = data.draw(st.integers(1, warmup))
    assert _all(total, warmup) == [s / warmup for s in range(1, total + 1)]


@settings(max_examples=200)
@given(total=st.integers(1, 2000), warmup=st.integers(0, 100), bad=st.one_of(st.integers(max_value=0), st.integers(min_value=1)))
def test_schedule_steps_outside_range_raise(total, warmup, bad) -> None:
    if 1 <= bad <= total:
        return
    with pytest.raises(ValueError, match="step must be"):
        wsd_lr_multiplier(bad, total_steps=total, warmup_steps=warmup)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": 1.0, "total_steps": 10, "warmup_steps": 1}, "step must be an integer"),
        ({"step": True, "total_steps": 10, "warmup_steps": 1}, "step must be an integer"),
        ({"step": 1, "total_steps": 10.5, "warmup_steps": 1}, "total_steps must be an integer"),
        ({"step": 1, "total_steps": 0, "warmup_steps": 0}, "total_steps must be >= 1"),
        ({"step": 1, "total_steps": 10, "warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"step": -3, "total_steps": 10, "warmup_steps": 1}, "step must be >= 1"),
        ({"step": 1, "total_steps": 10, "warmup_steps": 1, "schedule": "linear"}, "unknown schedule 'linear'"),
    ],
)
def test_schedule_bad_arguments_raise(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        wsd_lr_multiplier(**kwargs)


@settings(max_examples=200)
@given(total=st.integers(1, 3000), warmup=st.integers(0, 300))
def test_schedule_cosine_shape(total, warmup) -> None:
    values = _all(total, warmup, "cosine")
    assert values[0] == 1.0
    if total > 1:
        assert values[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in itertools.pairwise(values))


@settings(max_examples=200)
@given(total=st.integers(1, 3000), warmup=st.integers(0, 300), data=st.data())
def test_schedule_constant_is_one(total, warmup, data) -> None:
    step = data.draw(st.integers(1, total))
    assert wsd_lr_multiplier(step, total_steps=total, warmup_steps=warmup, schedule="constant") == 1.0


# Hand-computed from SPEC §6: post = total - warmup, decay_start = warmup + max(1, int(0.8 post)),
# taper_start = warmup + max(1, int(0.98 post)).
SPOT = [
    # total=10, warmup=2: decay_start=8, taper_start=9
    (10, 2, 1, 0.5),
    (10, 2, 2, 1.0),
    (10, 2, 8, 1.0),
    (10, 2, 9, 0.1),
    (10, 2, 10, 0.01),
    # total=1500, warmup=100: decay_start=1220, taper_start=1472
    (1500, 100, 50, 0.5),
    (1500, 100, 1220, 1.0),
    (1500, 100, 1221, 1 - 0.9 / 252),
    (1500, 100, 1346, 0.55),
    (1500, 100, 1472, 0.1),
    (1500, 100, 1486, 0.055),
    (1500, 100, 1500, 0.01),
    # total=100, warmup=0: decay_start=80, taper_start=98
    (100, 0, 1, 1.0),
    (100, 0, 80, 1.0),
    (100, 0, 89, 0.55),
    (100, 0, 98, 0.1),
    (100, 0, 99, 0.055),
    (100, 0, 100, 0.01),
    # total <= warmup: all warmup
    (5, 10, 3, 0.3),
    # total=3, warmup=1: decay_start=taper_start=2
    (3, 1, 1, 1.0),
    (3, 1, 2, 1.0),
    (3, 1, 3, 0.01),
    # one post-warmup step: plateau only
    (4, 3, 4, 1.0),
]


@pytest.mark.parametrize(("total", "warmup", "step", "expected"), SPOT)
def test_schedule_spot_values(total, warmup, step, expected) -> None:
    assert wsd_lr_multiplier(step, total_steps=total, warmup_steps=warmup) == pytest.approx(expected, rel=1e-12, abs=0)


def test_schedule_cosine_spot_values() -> None:
    assert wsd_lr_multiplier(1, total_steps=1, warmup_steps=0, schedule="cosine") == 1.0
    assert wsd_lr_multiplier(2, total_steps=3, warmup_steps=0, schedule="cosine") == pytest.approx(0.5, abs=1e-15)
    assert wsd_lr_multiplier(2, total_steps=4, warmup_steps=0, schedule="cosine") == pytest.approx(0.75, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(case=wsd_case(), data=st.data(), lrs=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=3))
def test_schedule_set_optimizer_lr_sets_every_group(case, data, lrs) -> None:
    total, warmup = case
    step = data.draw(st.integers(1, total))
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr, "initial_lr": lr} for p, lr in zip(params, lrs, strict=True)])
    multiplier = set_optimizer_lr(optimizer, step=step, total_steps=total, warmup_steps=warmup)
    assert multiplier == wsd_lr_multiplier(step, total_steps=total, warmup_steps=warmup)
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        assert group["lr"] == lr * multiplier
        assert group["initial_lr"] == lr
    assert math.isfinite(multiplier)
