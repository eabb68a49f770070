"""Learning-rate schedules: warmup-stable-decay (WSD), cosine and constant, as pure functions."""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["SCHEDULES", "ScheduleName", "set_optimizer_lr", "wsd_lr_multiplier"]

ScheduleName = Literal["wsd", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("wsd", "cosine", "constant")

_DECAY_END = 0.1  # multiplier at the end of the linear decay
_FLOOR = 0.01  # multiplier at the last step


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _lerp(end: float, start: float, remaining: int, span: int) -> float:
    # start at remaining == span, end at remaining == 0 (exact at both ends)
    return end + (start - end) * (remaining / span)


def wsd_lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: ScheduleName = "wsd") -> float:
    """Learning-rate multiplier for the 1-indexed `step` of `total_steps`.

    wsd: 1) linear warmup step/warmup; 2) stable 1.0 up to 80% of the post-warmup steps;
    3) linear decay to 0.1 at 98%; 4) linear taper to 0.01 at the last step.
    cosine: 0.5 * (1 + cos(pi * (step - 1) / (total - 1))). constant: 1.0.
    """
    total = _check_int("total_steps", total_steps, 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    step = _check_int("step", step, 1)
    if step > total:
        raise ValueError(f"step must be <= total_steps ({total}), got {step}")
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        if total == 1:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - 1) / (total - 1)))
    if schedule != "wsd":
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    # 1) linear warmup (checked first, so total <= warmup means all warmup)
    if warmup > 0 and step <= warmup:
        return step / warmup
    post = total - warmup
    decay_start = warmup + max(1, int(0.80 * post))
    taper_start = warmup + max(1, int(0.98 * post))
    # 2) stable plateau
    if step <= decay_start:
        return 1.0
    # 3) linear decay 1.0 -> 0.1 over (decay_start, taper_start]
    if step <= taper_start:
        return _lerp(_DECAY_END, 1.0, taper_start - step, taper_start - decay_start)
    # 4) linear taper 0.1 -> 0.01 over (taper_start, total], floored
    return max(_FLOOR, _lerp(_FLOOR, _DECAY_END, total - step, total - taper_start))


def set_optimizer_lr(optimizer: Any, *, step: int, total_steps: int, warmup_steps: int, schedule: ScheduleName = "wsd") -> float:
    """Set every param group's lr to its `initial_lr` x multiplier; return the multiplier.

    A group without `initial_lr` gets it from its current `lr` first (as torch schedulers do).
    """
    multiplier = wsd_lr_multiplier(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * multiplier
    return multiplier
