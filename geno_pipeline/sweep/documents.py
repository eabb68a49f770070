"""reports/sweep.json: each seed's run and the spread across seeds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.training.documents import TrainingStatus

__all__ = ["Spread", "SweepBinding", "SweepReport", "SweepRun", "SweepSummary"]


class SweepBinding(Document):
    """What every seed shares; the release gate accepts a sweep only when these match the released run's."""

    base_seed: int
    """train.seed of the released run; the sweep trained train.seed + 1 .. train.seed + N."""
    train_params_sha256: str
    """Hash of the runtime, train and collapse params with train.seed set to 0 (the same for every seed)."""
    dataset_manifest_sha256: str
    """SHA-256 of dataset_manifest.json."""
    source_digest: str
    """Content hash of the package source, pyproject.toml and the lock file."""
    environment_sha256: str
    """Hash of the environment fingerprint the runs used."""


class SweepRun(Document):
    """One seed's training run."""

    seed: int
    """train.seed of this run."""
    run_id: str
    """Content-derived id of this run."""
    status: TrainingStatus
    """completed, failed_nonfinite or collapsed."""
    steps_completed: int = Field(ge=0)
    """Optimizer steps done."""
    heldout_to_baseline: float | None
    """Final held-out prediction loss / identity-baseline loss (< 1 beats the baseline); null when it did not finish."""
    final_train_loss: float | None
    """Loss of the last completed step."""
    final_heldout_loss: float | None
    """Prediction loss on the fixed held-out batch at the last observation."""
    identity_baseline_heldout_loss: float
    """Held-out loss of predicting 'no change'."""
    collapse_alerts: int = Field(ge=0)
    """Collapse alerts raised during the run."""
    final_alerts: list[str]
    """Collapse criteria alerting at the final observation."""
    report: str
    """This run's training report, relative to the project root."""


class Spread(Document):
    """One quantity across the completed seeds."""

    mean: float
    """Arithmetic mean."""
    std: float | None
    """Sample standard deviation (n - 1); null for a single seed."""
    min: float
    """Smallest value."""
    max: float
    """Largest value."""


class SweepSummary(Document):
    """The spread across seeds that completed."""

    completed: int = Field(ge=1)
    """Seeds that trained every step."""
    heldout_to_baseline: Spread
    """Held-out / identity-baseline ratio."""
    final_train_loss: Spread
    """Final training loss."""
    final_heldout_loss: Spread
    """Final held-out prediction loss."""
    worst_seed: int
    """Seed with the highest ratio (the first such seed on a tie)."""
    collapse_alerts: int = Field(ge=0)
    """Collapse alerts raised across every seed's run."""
    seeds_with_final_alerts: int = Field(ge=0)
    """Seeds whose final observation alerted."""


class SweepReport(Document):
    """reports/sweep.json: `geno-pipeline sweep` (no wall-clock values: same inputs give the same bytes)."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    binding: SweepBinding
    """What every seed shares."""
    seeds: list[int]
    """The seeds trained, in order."""
    runs: list[SweepRun]
    """One per seed, in order."""
    summary: SweepSummary | None
    """Spread across completed seeds; null when none completed (or sweep.seeds is 0)."""
