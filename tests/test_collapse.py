"""Collapse metrics: exact values, invariances, agreement with a pure-Python reference, alerts, monitor."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.training import (
    CollapseAlert,
    CollapseMetrics,
    CollapseMonitor,
    CollapseThresholds,
    compute_collapse_metrics,
    detect_collapse,
    record_collapse_metrics,
)
from geno_pipeline.training.collapse import pairwise_distance_mean, reference_collapse_metrics


def test_collapse_exact_values_two_rows() -> None:
    p = [[1.0, 0.0], [0.0, 1.0]]
    t = [[1.0, 0.0], [1.0, 0.0]]
    m = compute_collapse_metrics(torch.tensor(p), torch.tensor(t), kl_reg=0.25)
    assert m.pred_cos_mean == 0.5  # cos = 1 and 0
    assert m.pred_l2_mean == pytest.approx(math.sqrt(2) / 2, rel=1e-15)
    assert m.target_var_per_dim == 0.0
    assert m.pred_var_per_dim == 0.25
    assert m.pred_target_corr == 0.0  # deviations are orthogonal
    assert m.pairwise_pred_dist_mean == pytest.approx(math.sqrt(2), rel=1e-12)
    assert m.kl_reg == 0.25
    # centred P has one singular value (rank 1): p = (1 + 1e-7, 1e-7)
    p1, p2 = 1 + 1e-7, 1e-7
    assert m.effective_rank == pytest.approx(math.exp(-(p1 * math.log(p1) + p2 * math.log(p2))), rel=1e-9)


def test_collapse_exact_values_three_rows() -> None:
    p = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    m = compute_collapse_metrics(p, torch.zeros(3, 2), kl_reg=0.0)
    assert m.pairwise_pred_dist_mean == pytest.approx(4.0, rel=1e-12)  # distances 5, 4, 3
    assert m.pred_var_per_dim == pytest.approx(25 / 9, rel=1e-12)  # (2 + 32/9) / 2
    assert m.pred_cos_mean == 0.0  # zero-norm targets count 0
    assert m.pred_l2_mean == pytest.approx((0 + 5 + 4) / 3, rel=1e-12)
    assert m.pred_target_corr == 0.0  # zero target variance


# zero or |x| in [1e-6, 100]: values whose squares neither underflow nor lose the test's precision
VALUES = st.one_of(st.just(0.0), st.floats(1e-6, 100), st.floats(-100, -1e-6))


def _matrix(n_min: int = 2, n_max: int = 12, d_max: int = 6):
    return st.integers(n_min, n_max).flatmap(
        lambda n: st.integers(1, d_max).flatmap(lambda d: st.lists(st.lists(VALUES, min_size=d, max_size=d), min_size=n, max_size=n))
    )


@settings(max_examples=200, deadline=None)
@given(p=_matrix(), shift=st.lists(st.floats(-50, 50), min_size=6, max_size=6))
def test_collapse_translation_invariance(p, shift) -> None:
    pt = torch.tensor(p, dtype=torch.float64)
    moved = pt + torch.tensor(shift[: pt.shape[1]], dtype=torch.float64)
    a = compute_collapse_metrics(pt, pt, kl_reg=0.0)
    b = compute_collapse_metrics(moved, moved, kl_reg=0.0)
    assert b.pairwise_pred_dist_mean == pytest.approx(a.pairwise_pred_dist_mean, rel=1e-9, abs=1e-9)
    assert b.pred_var_per_dim == pytest.approx(a.pred_var_per_dim, rel=1e-9, abs=1e-9)
    assert b.target_var_per_dim == pytest.approx(a.target_var_per_dim, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(p=_matrix(), c=st.floats(-20, 20).filter(lambda x: abs(x) > 1e-3))
def test_collapse_scaling(p, c) -> None:
    pt = torch.tensor(p, dtype=torch.float64)
    a = compute_collapse_metrics(pt, pt, kl_reg=0.0)
    b = compute_collapse_metrics(pt * c, pt, kl_reg=0.0)
    assert b.pairwise_pred_dist_mean == pytest.approx(abs(c) * a.pairwise_pred_dist_mean, rel=1e-9, abs=1e-9)
    assert b.pred_var_per_dim == pytest.approx(c * c * a.pred_var_per_dim, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(p=_matrix(), t=_matrix(), a=st.floats(0.01, 50), b=st.floats(-50, 50))
def test_collapse_corr_invariant_under_positive_affine_map(p, t, a, b) -> None:
    pt = torch.tensor(p, dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64)
    n, d = min(pt.shape[0], tt.shape[0]), min(pt.shape[1], tt.shape[1])
    pt, tt = pt[:n, :d], tt[:n, :d]
    base = compute_collapse_metrics(pt, tt, kl_reg=0.0).pred_target_corr
    mapped = compute_collapse_metrics(a * pt + b, tt, kl_reg=0.0).pred_target_corr
    if float(pt.std()) * a > 1e-6 * max(1.0, abs(b)):  # well-conditioned: the map keeps information
        assert mapped == pytest.approx(base, rel=1e-6, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(p=_matrix(n_min=1), t=_matrix(n_min=1))
def test_collapse_bounds(p, t) -> None:
    pt = torch.tensor(p, dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64)
    n, d = min(pt.shape[0], tt.shape[0]), min(pt.shape[1], tt.shape[1])
    m = compute_collapse_metrics(pt[:n, :d], tt[:n, :d], kl_reg=0.0)
    assert 1.0 <= m.effective_rank <= min(n, d)
    ref = reference_collapse_metrics(pt[:n, :d].tolist(), tt[:n, :d].tolist(), kl_reg=0.0)  # independent pure-Python values
    assert m.pred_cos_mean == pytest.approx(ref["pred_cos_mean"], abs=1e-9)
    assert m.pred_target_corr == pytest.approx(ref["pred_target_corr"], abs=1e-9)


def test_collapse_cosine_and_correlation_extremes_by_hand() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    same = compute_collapse_metrics(t.clone(), t, kl_reg=0.0)
    assert same.pred_cos_mean == pytest.approx(1.0) and same.pred_target_corr == pytest.approx(1.0) and same.pred_l2_mean == 0.0
    flipped = compute_collapse_metrics(-t, t, kl_reg=0.0)
    assert flipped.pred_cos_mean == pytest.approx(-1.0) and flipped.pred_target_corr == pytest.approx(-1.0)


@settings(max_examples=200, deadline=None)
@given(p=_matrix(n_min=1), t=_matrix(n_min=1), kl=st.floats(0, 100))
def test_collapse_agrees_with_python_reference(p, t, kl) -> None:
    n, d = min(len(p), len(t)), min(len(p[0]), len(t[0]))
    p = [row[:d] for row in p[:n]]
    t = [row[:d] for row in t[:n]]
    fast = compute_collapse_metrics(torch.tensor(p, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), kl_reg=kl)
    slow = reference_collapse_metrics(p, t, kl_reg=kl)
    for key, value in slow.items():
        assert getattr(fast, key) == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_collapse_chunked_pairwise_matches_full() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(300, 7, generator=gen, dtype=torch.float64)
    full = torch.pdist(p).mean().item()
    assert pairwise_distance_mean(p, chunk_elements=1000) == pytest.approx(full, rel=1e-10)
    assert pairwise_distance_mean(p, chunk_elements=1) == pytest.approx(full, rel=1e-10)
    assert pairwise_distance_mean(p[:1]) == 0.0


def test_collapse_effective_rank_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    p = rng.normal(size=(50, 8))
    sv = np.linalg.svd(p - p.mean(0), compute_uv=False)
    q = sv / sv.sum() + 1e-7
    expected = float(np.exp(-(q * np.log(q)).sum()))
    assert compute_collapse_metrics(torch.tensor(p), torch.tensor(p), kl_reg=0.0).effective_rank == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("p", "t", "message"),
    [
        (torch.zeros(3), torch.zeros(3), r"prediction must be a 2-D"),
        (torch.zeros(3, 2), torch.zeros(2, 2), r"shapes differ"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), r"prediction contains NaN"),
        (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), r"target contains NaN or infinite"),
        (torch.zeros(0, 2), torch.zeros(0, 2), r"N >= 1 rows"),
    ],
)
def test_collapse_invalid_input(p, t, message) -> None:
    with pytest.raises(ValueError, match=message):
        compute_collapse_metrics(p, t, kl_reg=0.0)
    with pytest.raises(ValueError, match="kl_reg must be a finite number"):
        compute_collapse_metrics(torch.zeros(2, 2), torch.zeros(2, 2), kl_reg=float("nan"))


def _metrics(**kw) -> CollapseMetrics:
    base = dict(
        pred_cos_mean=0.9,
        pred_l2_mean=0.1,
        target_var_per_dim=1.0,
        pred_var_per_dim=1.0,
        pred_target_corr=0.9,
        pairwise_pred_dist_mean=2.0,
        kl_reg=0.1,
        effective_rank=5.0,
    )
    base.update(kw)
    return CollapseMetrics(**base)


def test_collapse_detect_each_criterion() -> None:
    assert detect_collapse(_metrics()) == ()
    alerts = detect_collapse(
        _metrics(pred_var_per_dim=0.4, pairwise_pred_dist_mean=0.9, kl_reg=11.0), initial_pairwise_pred_dist_mean=2.0, step=7
    )
    assert alerts == (
        CollapseAlert("pred_var_per_dim", 0.4, 0.5, 7),
        CollapseAlert("pairwise_pred_dist_mean", 0.9, 1.0, 7),
        CollapseAlert("kl_reg", 11.0, 10.0, 7),
    )
    # no baseline -> no pairwise alert; custom thresholds apply
    assert detect_collapse(_metrics(pairwise_pred_dist_mean=0.0)) == ()
    assert [a.criterion for a in detect_collapse(_metrics(pred_var_per_dim=0.8), thresholds=CollapseThresholds(0.9, 0.5, 10.0))] == [
        "pred_var_per_dim"
    ]


def test_collapse_monitor_schedule_baseline_and_logging(caplog: pytest.LogCaptureFixture) -> None:
    monitor = CollapseMonitor(log_every_steps=10)
    assert [s for s in range(0, 31) if monitor.should_log(s)] == [10, 20, 30]
    p = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    assert monitor.observe(p, p, kl_reg=0.0, step=5) is None
    first = monitor.observe(p, p, kl_reg=0.0, step=10)
    assert first is not None and first.alerts == ()
    assert monitor.initial_pairwise_pred_dist_mean == first.metrics.pairwise_pred_dist_mean
    records: list[dict] = []
    collapsed = monitor.observe(torch.zeros(16, 4) + 1.0, p, kl_reg=0.0, step=13, force=True, logger=records.append)
    assert collapsed is not None and {a.criterion for a in collapsed.alerts} == {"pred_var_per_dim", "pairwise_pred_dist_mean"}
    assert records[0]["step"] == 13 and len(records[0]["alerts"]) == 2
    with caplog.at_level(logging.INFO):
        record_collapse_metrics(collapsed.metrics, alerts=collapsed.alerts, logger=logging.getLogger("t"), step=13)
    assert "collapse alert step=13 pred_var_per_dim" in caplog.text
    with pytest.raises(ValueError, match="log_every_steps"):
        CollapseMonitor(log_every_steps=0)


def test_detect_collapse_thresholds_are_strict_at_the_boundary() -> None:
    """Alerts fire strictly beyond each threshold: pred_var < r * target_var, pairwise < r * initial, kl_reg > max."""
    import dataclasses

    from geno_pipeline.training.collapse import CollapseThresholds, compute_collapse_metrics, detect_collapse

    gen = torch.Generator().manual_seed(0)
    base = compute_collapse_metrics(torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen), kl_reg=0.0)
    th = CollapseThresholds(pred_var_to_target_var=0.5, pairwise_to_initial=0.5, kl_reg_max=10.0)
    at = dataclasses.replace(base, target_var_per_dim=2.0, pred_var_per_dim=1.0, pairwise_pred_dist_mean=3.0, kl_reg=10.0)
    assert detect_collapse(at, thresholds=th, initial_pairwise_pred_dist_mean=6.0) == ()
    below = dataclasses.replace(at, pred_var_per_dim=math.nextafter(1.0, 0.0))
    assert [a.criterion for a in detect_collapse(below, thresholds=th, initial_pairwise_pred_dist_mean=6.0)] == ["pred_var_per_dim"]
    closer = dataclasses.replace(at, pairwise_pred_dist_mean=math.nextafter(3.0, 0.0))
    assert [a.criterion for a in detect_collapse(closer, thresholds=th, initial_pairwise_pred_dist_mean=6.0)] == ["pairwise_pred_dist_mean"]
    over = dataclasses.replace(at, kl_reg=math.nextafter(10.0, 11.0))
    assert [a.criterion for a in detect_collapse(over, thresholds=th, initial_pairwise_pred_dist_mean=6.0)] == ["kl_reg"]


def test_reference_collapse_metrics_refuses_ragged_rows() -> None:
    """The pure-Python oracle gives no numbers for rows of unequal length (each row pairs with its target row, so only the
    pairwise distances between prediction rows can see it)."""
    ragged = [[0.5, 1.0], [0.25, 0.5, 2.0]]
    with pytest.raises(ValueError, match="zip"):
        reference_collapse_metrics(ragged, ragged, kl_reg=0.0)
