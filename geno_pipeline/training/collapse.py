"""Collapse diagnostics on a held-out batch: metrics, thresholds, alerts and a monitor.

All metrics are computed vectorized in torch (float64); pairwise distances are summed in row
chunks so memory stays bounded (no N x N matrix at once).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from geno_pipeline.config import CollapseParams
from geno_pipeline.training.documents import CollapseMetrics

__all__ = [
    "CollapseAlert",
    "CollapseCheck",
    "CollapseMetrics",
    "CollapseMonitor",
    "CollapseThresholds",
    "compute_collapse_metrics",
    "detect_collapse",
    "pairwise_distance_mean",
    "record_collapse_metrics",
    "reference_collapse_metrics",
]

Criterion = Literal["pred_var_per_dim", "pairwise_pred_dist_mean", "kl_reg"]
CollapseLogger = logging.Logger | Callable[[dict[str, Any]], None]
_CHUNK_ELEMENTS = 1 << 22  # distances held at once (~32 MiB in float64)
# Up to this N, distances come from explicit differences (exact to rounding even for near-equal
# rows); beyond it, from the matmul expansion (about 5x faster, ~1e-8 absolute error per pair).
_EXACT_MAX_N = 4096


@dataclass(frozen=True)
class CollapseThresholds:
    """Alert thresholds."""

    pred_var_to_target_var: float = 0.5
    pairwise_to_initial: float = 0.5
    kl_reg_max: float = 10.0


@dataclass(frozen=True)
class CollapseAlert:
    """One tripped collapse criterion."""

    criterion: Criterion
    value: float
    threshold: float
    step: int | None = None


@dataclass(frozen=True)
class CollapseCheck:
    """Metrics and alerts produced by one monitor observation."""

    step: int
    metrics: CollapseMetrics
    alerts: tuple[CollapseAlert, ...] = ()


def _as_batch(name: str, value: object) -> Tensor:
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise ValueError(f"{name} must have N >= 1 rows and D >= 1 columns, got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def pairwise_distance_mean(points: Tensor, *, chunk_elements: int = _CHUNK_ELEMENTS) -> float:
    """Mean Euclidean distance over pairs i < j, in row chunks (0.0 when N < 2)."""
    n = points.shape[0]
    if n < 2:
        return 0.0
    centred = points - points.mean(dim=0, keepdim=True)  # translation-invariant and better conditioned
    rows = max(1, chunk_elements // n)
    mode = "donot_use_mm_for_euclid_dist" if n <= _EXACT_MAX_N else "use_mm_for_euclid_dist"
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, n - 1, rows):
        stop = min(n, start + rows)
        block = torch.cdist(centred[start:stop], centred[start:], compute_mode=mode)
        upper = torch.triu(torch.ones(block.shape, dtype=torch.bool), diagonal=1)
        total += block[upper].sum()
    return float(total / (n * (n - 1) / 2))


def _effective_rank(points: Tensor) -> float:
    sv = torch.linalg.svdvals(points - points.mean(dim=0, keepdim=True))
    total = sv.sum()
    if float(total) <= 0.0:
        return 1.0
    p = sv / total + 1e-7
    value = float(torch.exp(-(p * torch.log(p)).sum()))
    return min(max(value, 1.0), float(min(points.shape)))


def compute_collapse_metrics(prediction: object, target: object, *, kl_reg: float) -> CollapseMetrics:
    """Collapse metrics for one [N, D] batch; raises ValueError on bad shapes or non-finite input."""
    p = _as_batch("prediction", prediction)
    t = _as_batch("target", target)
    if p.shape != t.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    if isinstance(kl_reg, bool) or not isinstance(kl_reg, (int, float)) or not math.isfinite(kl_reg):
        raise ValueError(f"kl_reg must be a finite number, got {kl_reg!r}")
    p_norm, t_norm = p.norm(dim=1), t.norm(dim=1)
    denom = p_norm * t_norm
    cos = torch.where(denom > 0, (p * t).sum(dim=1) / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    pf, tf = p.flatten() - p.mean(), t.flatten() - t.mean()
    corr_den = torch.sqrt((pf * pf).sum() * (tf * tf).sum())
    corr = float((pf * tf).sum() / corr_den) if float(corr_den) > 0 else 0.0
    return CollapseMetrics(
        pred_cos_mean=float(cos.mean()),
        pred_l2_mean=float((p - t).norm(dim=1).mean()),
        target_var_per_dim=float(t.var(dim=0, unbiased=False).mean()),
        pred_var_per_dim=float(p.var(dim=0, unbiased=False).mean()),
        pred_target_corr=corr,
        pairwise_pred_dist_mean=pairwise_distance_mean(p),
        kl_reg=float(kl_reg),
        effective_rank=_effective_rank(p),
    )


def reference_collapse_metrics(
    prediction: Sequence[Sequence[float]], target: Sequence[Sequence[float]], *, kl_reg: float
) -> dict[str, float]:
    """Slow pure-Python version of the seven seed metrics (for tests and benchmarks)."""
    n, d = len(prediction), len(prediction[0])
    cos_sum = l2_sum = 0.0
    for pi, ti in zip(prediction, target, strict=True):
        dot = sum(a * b for a, b in zip(pi, ti, strict=True))
        np_, nt = math.sqrt(sum(a * a for a in pi)), math.sqrt(sum(b * b for b in ti))
        cos_sum += dot / (np_ * nt) if np_ * nt > 0 else 0.0
        l2_sum += math.sqrt(sum((a - b) ** 2 for a, b in zip(pi, ti, strict=True)))

    def var_per_dim(rows: Sequence[Sequence[float]]) -> float:
        out = 0.0
        for j in range(d):
            col = [r[j] for r in rows]
            mean = sum(col) / n
            out += sum((x - mean) ** 2 for x in col) / n
        return out / d

    fp = [x for r in prediction for x in r]
    ft = [x for r in target for x in r]
    mp, mt = sum(fp) / len(fp), sum(ft) / len(ft)
    cov = sum((a - mp) * (b - mt) for a, b in zip(fp, ft, strict=True))
    den = math.sqrt(sum((a - mp) ** 2 for a in fp) * sum((b - mt) ** 2 for b in ft))
    pair_sum, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            pair_sum += math.sqrt(sum((a - b) ** 2 for a, b in zip(prediction[i], prediction[j], strict=True)))
            pairs += 1
    return {
        "pred_cos_mean": cos_sum / n,
        "pred_l2_mean": l2_sum / n,
        "target_var_per_dim": var_per_dim(target),
        "pred_var_per_dim": var_per_dim(prediction),
        "pred_target_corr": cov / den if den > 0 else 0.0,
        "pairwise_pred_dist_mean": pair_sum / pairs if pairs else 0.0,
        "kl_reg": float(kl_reg),
    }


def detect_collapse(
    metrics: CollapseMetrics,
    *,
    thresholds: CollapseThresholds | None = None,
    initial_pairwise_pred_dist_mean: float | None = None,
    step: int | None = None,
) -> tuple[CollapseAlert, ...]:
    """The alert criteria `metrics` trips."""
    th = thresholds or CollapseThresholds()
    alerts = []
    var_threshold = th.pred_var_to_target_var * metrics.target_var_per_dim
    if metrics.pred_var_per_dim < var_threshold:
        alerts.append(CollapseAlert("pred_var_per_dim", metrics.pred_var_per_dim, var_threshold, step))
    if initial_pairwise_pred_dist_mean is not None:
        pair_threshold = th.pairwise_to_initial * initial_pairwise_pred_dist_mean
        if metrics.pairwise_pred_dist_mean < pair_threshold:
            alerts.append(CollapseAlert("pairwise_pred_dist_mean", metrics.pairwise_pred_dist_mean, pair_threshold, step))
    if metrics.kl_reg > th.kl_reg_max:
        alerts.append(CollapseAlert("kl_reg", metrics.kl_reg, th.kl_reg_max, step))
    return tuple(alerts)


def record_collapse_metrics(
    metrics: CollapseMetrics,
    *,
    alerts: Iterable[CollapseAlert] = (),
    logger: CollapseLogger | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Build the structured record of one observation and send it to `logger` (if any); return it."""
    record: dict[str, Any] = {"step": step, "metrics": asdict(metrics), "alerts": [asdict(a) for a in alerts]}
    if isinstance(logger, logging.Logger):
        logger.info("collapse step=%s %s", step, record)
        for alert in record["alerts"]:
            logger.warning("collapse alert step=%s %s=%.6g < threshold %.6g", step, alert["criterion"], alert["value"], alert["threshold"])
    elif logger is not None:
        logger(record)
    return record


@dataclass
class CollapseMonitor:
    """Compute, record and optionally log collapse diagnostics on scheduled steps.

    The first logged observation sets the pairwise-distance baseline unless one is supplied.
    """

    log_every_steps: int = 500
    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)
    initial_pairwise_pred_dist_mean: float | None = None
    history: list[CollapseCheck] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.log_every_steps, bool) or not isinstance(self.log_every_steps, int) or self.log_every_steps < 1:
            raise ValueError(f"log_every_steps must be an integer >= 1, got {self.log_every_steps!r}")

    @classmethod
    def from_params(cls, params: CollapseParams) -> CollapseMonitor:
        """A monitor with the schedule and thresholds of the `collapse` params."""
        return cls(
            log_every_steps=params.log_every_steps,
            thresholds=CollapseThresholds(params.pred_var_to_target_var, params.pairwise_to_initial, params.kl_reg_max),
        )

    def should_log(self, step: int) -> bool:
        """Whether `step` is a scheduled monitoring step."""
        return step > 0 and step % self.log_every_steps == 0

    def observe(
        self,
        prediction: object,
        target: object,
        *,
        kl_reg: float,
        step: int,
        logger: CollapseLogger | None = None,
        force: bool = False,
    ) -> CollapseCheck | None:
        """Observe a held-out batch at `step`; None on non-scheduled steps unless `force`.

        Step 0 (before any update) is the baseline: it sets the pairwise-distance baseline when none
        is set and raises no alert.
        """
        if not (force or self.should_log(step)):
            return None
        metrics = compute_collapse_metrics(prediction, target, kl_reg=kl_reg)
        if self.initial_pairwise_pred_dist_mean is None:
            self.initial_pairwise_pred_dist_mean = metrics.pairwise_pred_dist_mean
        alerts = (
            ()
            if step == 0
            else detect_collapse(
                metrics, thresholds=self.thresholds, initial_pairwise_pred_dist_mean=self.initial_pairwise_pred_dist_mean, step=step
            )
        )
        check = CollapseCheck(step=step, metrics=metrics, alerts=alerts)
        self.history.append(check)
        record_collapse_metrics(metrics, alerts=alerts, logger=logger, step=step)
        return check
