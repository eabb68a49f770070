"""Pure functions of the sweep: its seeds, the spread across them, and the release gate's verdict."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from geno_pipeline.sweep.documents import Spread, SweepBinding, SweepReport, SweepRun, SweepSummary

__all__ = ["binding_differences", "gate_problems", "spread", "spread_interval", "summarize", "sweep_seeds"]


def sweep_seeds(base_seed: int, count: int) -> list[int]:
    """The seeds a sweep of `count` trains: base_seed + 1 .. base_seed + count (the released seed itself is not one)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [base_seed + i for i in range(1, count + 1)]


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample standard deviation (None for one value), min and max; independent of the values' order."""
    if not values:
        raise ValueError("spread of no values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread of non-finite values {list(values)}")
    std = statistics.stdev(values) if len(values) > 1 else None  # exact (fractions), so order does not matter
    return Spread(mean=statistics.fmean(values), std=std, min=min(values), max=max(values))


def summarize(runs: Sequence[SweepRun]) -> SweepSummary | None:
    """The spread across the runs that completed (None when none did)."""
    done = [r for r in runs if r.status == "completed" and r.heldout_to_baseline is not None]
    if not done:
        return None
    ratios = [r.heldout_to_baseline for r in done if r.heldout_to_baseline is not None]
    worst = max(done, key=lambda r: (r.heldout_to_baseline, -r.seed))
    return SweepSummary(
        completed=len(done),
        heldout_to_baseline=spread(ratios),
        final_train_loss=spread([r.final_train_loss for r in done if r.final_train_loss is not None]),
        final_heldout_loss=spread([r.final_heldout_loss for r in done if r.final_heldout_loss is not None]),
        worst_seed=worst.seed,
        collapse_alerts=sum(r.collapse_alerts for r in runs),
        seeds_with_final_alerts=sum(1 for r in runs if r.final_alerts),
    )


def spread_interval(ratio: Spread, sigmas: float) -> tuple[float, float]:
    """mean -/+ sigmas x std: where a run of the same recipe is expected to land."""
    half = sigmas * (ratio.std or 0.0)
    return ratio.mean - half, ratio.mean + half


def binding_differences(sweep: SweepBinding, released: SweepBinding) -> list[str]:
    """Fields where the sweep was run on something other than the released run (empty when it applies)."""
    have, want = sweep.model_dump(), released.model_dump()
    return [f"{k} (sweep {have[k]!r}, release {want[k]!r})" for k in sorted(want) if have[k] != want[k]]


def gate_problems(report: SweepReport, released: SweepBinding, released_ratio: float, *, max_ratio: float, sigmas: float) -> list[str]:
    """Why the sweep gate refuses the release (empty when it passes).

    The sweep must be of the released recipe (same params but the seed, dataset, code and environment), every seed
    must have completed, the worst seed's ratio must be under `max_ratio`, and the released run's ratio must lie in
    `spread_interval`."""
    differences = binding_differences(report.binding, released)
    if differences:
        return [
            f"the sweep in reports/sweep.json was not run on the released run's recipe: they differ in {'; '.join(differences)}; "
            "fix: rerun whichever is out of date, `geno-pipeline train` or `geno-pipeline sweep` (dvc repro reruns what changed)"
        ]
    problems = []
    unfinished = [f"seed {r.seed} {r.status} at step {r.steps_completed}" for r in report.runs if r.status != "completed"]
    if unfinished:
        problems.append(f"every sweep seed completes: {', '.join(unfinished)}")
    summary = report.summary
    if summary is None or summary.completed < 2:
        count = 0 if summary is None else summary.completed
        problems.append(f"the sweep has {count} completed seed(s); the gate needs at least 2; fix: set sweep.seeds >= 2 and rerun it")
        return problems
    ratio = summary.heldout_to_baseline
    if not ratio.max < max_ratio:
        problems.append(
            f"worst sweep seed under release.sweep_max_ratio: seed {summary.worst_seed} has held-out/baseline ratio {ratio.max:.4f}, "
            f"not under {max_ratio:g}"
        )
    low, high = spread_interval(ratio, sigmas)
    if not low <= released_ratio <= high:
        problems.append(
            f"released run within the sweep's spread: its ratio {released_ratio:.4f} is outside [{low:.4f}, {high:.4f}] "
            f"(sweep mean {ratio.mean:.4f} +/- {sigmas:g} x std {ratio.std or 0.0:.4f} over {summary.completed} seeds)"
        )
    return problems
