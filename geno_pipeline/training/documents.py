"""JSON documents of the train stage: metrics lines, collapse lines, the training report, DVC metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from geno_pipeline.documents import ArtifactIdentity, Document
from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.training.seeds import TorchDeterminismReport, TrainerSeeds

__all__ = [
    "ArtifactIdentity",
    "CollapseAlertRecord",
    "CollapseLine",
    "CollapseMetrics",
    "CollapseSummary",
    "MetricsLine",
    "TrainMetrics",
    "TrainingReport",
    "TrainingStatus",
    "summarize_collapse",
]

TrainingStatus = Literal["completed", "stopped", "failed_nonfinite", "collapsed"]


class MetricsLine(Document):
    """One line of artifacts/train/metrics.jsonl (one optimizer step)."""

    step: int = Field(ge=1)
    """1-indexed optimizer step."""
    loss: float
    """pred_loss + kl_weight x kl_reg."""
    pred_loss: float
    """Masked latent prediction error over the rollout."""
    kl_reg: float
    """Gaussian KL regulariser on predicted states' batch statistics."""
    lr_multiplier: float
    """Schedule multiplier applied at this step."""
    grad_norm: float
    """Global gradient norm before clipping."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid", use_attribute_docstrings=True))
class CollapseMetrics:
    """Scalar collapse diagnostics for one [N, D] batch of predictions and targets (a dataclass, as in the seed API)."""

    pred_cos_mean: float
    """Mean cosine similarity of prediction and target rows."""
    pred_l2_mean: float
    """Mean L2 distance of prediction and target rows."""
    target_var_per_dim: float
    """Per-dimension population variance of targets, averaged."""
    pred_var_per_dim: float
    """Per-dimension population variance of predictions, averaged."""
    pred_target_corr: float
    """Pearson r over all flattened values."""
    pairwise_pred_dist_mean: float
    """Mean pairwise distance between predictions."""
    kl_reg: float
    """KL regulariser on the held-out predictions."""
    effective_rank: float = 1.0
    """RankMe effective rank of the centred predictions."""


class CollapseAlertRecord(Document):
    """One tripped criterion."""

    criterion: Literal["pred_var_per_dim", "pairwise_pred_dist_mean", "kl_reg"]
    """Which criterion."""
    value: float
    """Observed value."""
    threshold: float
    """Threshold it crossed."""
    step: int = Field(ge=0)
    """Step of the observation."""


class CollapseLine(Document):
    """One line of artifacts/train/collapse.jsonl (one held-out observation)."""

    step: int = Field(ge=0)
    """Step (0 = baseline before any update)."""
    heldout_loss: float
    """Prediction loss on the fixed held-out batch."""
    metrics: CollapseMetrics
    """Collapse metrics of the final-step predictions."""
    baseline_pairwise_pred_dist_mean: float
    """Pairwise distance measured at step 0."""
    alerts: list[CollapseAlertRecord]
    """Criteria tripped (never evaluated at the step-0 baseline)."""

    def pred_var_ratio(self) -> float | None:
        """pred_var_per_dim / target_var_per_dim (None when the target variance is 0)."""
        target = self.metrics.target_var_per_dim
        return self.metrics.pred_var_per_dim / target if target > 0 else None

    def pairwise_ratio(self) -> float | None:
        """pairwise_pred_dist_mean / its step-0 baseline (None when the baseline is 0)."""
        base = self.baseline_pairwise_pred_dist_mean
        return self.metrics.pairwise_pred_dist_mean / base if base > 0 else None


class CollapseSummary(Document):
    """Collapse outcome of the run."""

    final_check: CollapseLine | None
    """The last observation."""
    alert_count: int = Field(ge=0)
    """Alerts over all observations."""
    worst_pred_var_ratio: float | None
    """Lowest pred_var_per_dim / target_var_per_dim seen after step 0."""
    worst_pairwise_ratio: float | None
    """Lowest pairwise_pred_dist_mean / baseline seen after step 0."""
    worst_kl_reg: float | None
    """Highest held-out kl_reg seen after step 0."""


class TrainingReport(Document):
    """reports/train.json: what the training run did."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    run_id: str
    """Content-derived id (params, dataset, code)."""
    status: TrainingStatus
    """completed, stopped (--stop-after-step), failed_nonfinite or collapsed."""
    message: str
    """One sentence for people."""
    steps_requested: int = Field(ge=1)
    """train.steps."""
    steps_completed: int = Field(ge=0)
    """Optimizer steps done."""
    device: str
    """Device trained on."""
    final_train_loss: float | None
    """Loss of the last completed step."""
    final_heldout_loss: float | None
    """Prediction loss on the fixed held-out batch at the last observation."""
    identity_baseline_heldout_loss: float
    """Held-out loss of predicting 'no change' (the source state) at every rollout step."""
    heldout_to_baseline: float | None
    """final_heldout_loss / identity_baseline_heldout_loss (< 1 beats the baseline)."""
    params_sha256: str
    """Hash of the runtime, train and collapse params."""
    dataset_id: str
    """Dataset id."""
    dataset_manifest_sha256: str
    """SHA-256 of dataset_manifest.json."""
    source_digest: str
    """Content hash of the package source, pyproject.toml and the lock file."""
    package_version: str
    """geno-pipeline version."""
    seeds: TrainerSeeds
    """Per-purpose seeds."""
    determinism: TorchDeterminismReport
    """Reproducibility settings applied."""
    environment: EnvironmentFingerprint
    """Environment fingerprint the run used."""
    collapse: CollapseSummary
    """Collapse outcome."""
    artifacts: list[ArtifactIdentity]
    """Files written, with sha256."""


class TrainMetrics(Document):
    """reports/metrics.json: the DVC metrics of the train stage."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    status: TrainingStatus
    """Run status."""
    steps_completed: int = Field(ge=0)
    """Optimizer steps done."""
    train_loss: float | None
    """Final training loss."""
    heldout_loss: float | None
    """Final held-out loss."""
    identity_baseline_loss: float
    """Held-out loss of the identity baseline."""
    heldout_to_baseline: float | None
    """heldout_loss / identity_baseline_loss."""
    collapse_alerts: int = Field(ge=0)
    """Collapse alerts raised."""
    pred_var_ratio: float | None
    """Final pred_var_per_dim / target_var_per_dim."""
    pairwise_ratio: float | None
    """Final pairwise distance / step-0 baseline."""
    effective_rank: float | None
    """Final effective rank of held-out predictions."""


def summarize_collapse(lines: list[CollapseLine]) -> CollapseSummary:
    """The run's collapse outcome from its observations (step 0 is the baseline and never counts as worst)."""
    later = [ln for ln in lines if ln.step > 0]
    ratios_var = [r for ln in later if (r := ln.pred_var_ratio()) is not None]
    ratios_pair = [r for ln in later if (r := ln.pairwise_ratio()) is not None]
    return CollapseSummary(
        final_check=lines[-1] if lines else None,
        alert_count=sum(len(ln.alerts) for ln in lines),
        worst_pred_var_ratio=min(ratios_var) if ratios_var else None,
        worst_pairwise_ratio=min(ratios_pair) if ratios_pair else None,
        worst_kl_reg=max((ln.metrics.kl_reg for ln in later), default=None),
    )
