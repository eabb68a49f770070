"""The params' rules across sections, as pure functions returning (dotted key, value, message, fix): the whole file's
validator raises them, and the same functions check the built dataset (train) and the world size of a launched job."""

from __future__ import annotations

from geno_pipeline.config.checks import Problems
from geno_pipeline.config.sections import ReleaseParams, SweepParams, TrainParams
from geno_pipeline.data.edits import MAX_EDIT_BASES

__all__ = ["cross_section_problems", "sweep_gate_problems", "world_size_problems"]


def cross_section_problems(window_length: int, flank_length: int, train: TrainParams) -> Problems:
    """Every problem between the data shape and the train params, as (dotted key, value, message, fix).

    The same function checks params.yaml (every stage, preflight included) and the built dataset (train).
    """
    problems: Problems = []
    segments = train.model.segments
    if window_length % segments:
        divisors = [d for d in range(1, min(window_length, 64) + 1) if window_length % d == 0]
        problems.append(
            (
                "train.model.segments",
                segments,
                f"must divide data.window_length ({window_length})",
                f"choose segments that divide the window length, e.g. one of {', '.join(map(str, divisors[-6:]))}",
            )
        )
    k_max = max(train.rollout_step_mix, default=1)
    if flank_length < MAX_EDIT_BASES * k_max:
        problems.append(
            (
                "data.flank_length",
                flank_length,
                f"is too short for rollouts of K = {k_max} (train.rollout_step_mix): each edit may delete up to "
                f"{MAX_EDIT_BASES} bases, which the flank must refill",
                f"set data.flank_length >= {MAX_EDIT_BASES * k_max} or drop the longer rollouts",
            )
        )
    return problems


def world_size_problems(world_size: int, train: TrainParams, *, key: str = "runtime.nproc_per_node") -> Problems:
    """Problems of running `train` on `world_size` workers: each takes a whole number of micro-batches."""
    if train.micro_batches % world_size == 0:
        return []
    return [
        (
            key,
            world_size,
            f"does not divide train.micro_batches ({train.micro_batches}); every worker takes the same number of micro-batches",
            f"set train.micro_batches to a multiple of {world_size} (it must also divide train.batch_size {train.batch_size})",
        )
    ]


def sweep_gate_problems(sweep: SweepParams, release: ReleaseParams) -> Problems:
    """The sweep gate needs a spread: at least two seeds."""
    if release.sweep_max_ratio is None or sweep.seeds >= 2:
        return []
    return [
        (
            "sweep.seeds",
            sweep.seeds,
            f"must be at least 2 when release.sweep_max_ratio is set ({release.sweep_max_ratio}): the gate compares with a spread",
            "set sweep.seeds: 3 (or more), or release.sweep_max_ratio: null",
        )
    ]
