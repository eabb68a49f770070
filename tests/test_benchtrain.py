"""The end-to-end train-stage bench and the scaling fit (figures themselves are measured by `python -m tools.bench`, never timed here)."""

from __future__ import annotations

import math
import statistics
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.config import load_params
from geno_pipeline.training.background import process_writer_available
from geno_pipeline.training.stage import PARTS
from tests.conftest import TINY
from tools.benchtrain import StageBench, bench_train_stage, cadence, fit_growth, pair_ratios


@given(
    st.floats(min_value=0.01, max_value=100.0),
    st.floats(min_value=-2.0, max_value=3.0),
    st.lists(st.floats(min_value=0.5, max_value=1e5), min_size=2, max_size=8, unique=True),
)
def test_fit_growth_recovers_a_power_law(a: float, b: float, xs: list[float]) -> None:
    if max(xs) / min(xs) < 1.5:
        return  # too narrow a range to fit a slope
    assert fit_growth(xs, [a * x**b for x in xs]) == pytest.approx(b, abs=1e-6)


def test_fit_growth_refuses_what_cannot_be_fitted() -> None:
    for xs, ys in (([1.0], [1.0]), ([1.0, 2.0], [0.0, 1.0]), ([2.0, 2.0], [1.0, 3.0]), ([1.0, 2.0], [1.0])):
        with pytest.raises(ValueError, match="fit_growth needs"):
            fit_growth(xs, ys)
    assert fit_growth([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert math.isclose(fit_growth([1, 10, 100], [1, 100, 10_000]), 2.0)


def test_bench_train_stage_reports_every_part(tmp_path: Path) -> None:
    params = load_params(TINY)
    result = bench_train_stage("tiny", params, tmp_path, repeats=1)
    assert isinstance(result, StageBench) and result.steps == params.train.steps
    assert set(result.parts) == {"setup_and_finish", *PARTS}
    assert all(v >= 0 for v in result.parts.values()) and result.ours_s > 0 and result.bare_s > 0
    assert result.ratio == pytest.approx(result.ours_s / result.bare_s, rel=1e-2)  # ours_s and bare_s are rounded to 0.1 ms
    assert result.meets_target == (result.ratio <= 1.10) or abs(result.ratio - 1.10) < 1e-3
    assert result.pair_ratios == [pytest.approx(result.ratio, rel=1e-2)]  # one pair: its ratio is the ratio
    assert sum(result.parts.values()) == pytest.approx(result.ours_s, rel=0.05)
    assert (result.evaluations, result.checkpoints) == (4, 3)  # steps 0, 4, 8, 12 evaluated; 4, 8, 12 checkpointed
    assert result.required_s > 0
    assert result.writer_s > 0  # its 3 checkpoints, written beside the loop (the parts, checked above, leave it out)
    assert result.writer == ("ProcessWriter" if process_writer_available() else "ThreadWriter")
    assert result.floor_ratio == pytest.approx((result.bare_s + result.required_s) / result.bare_s, rel=1e-2)
    assert list((tmp_path / "runs").iterdir()) == []  # each run's outputs removed once measured
    from geno_pipeline.hostmem import usable_cores

    assert result.cpu_threads == 1 and result.prefetch == (usable_cores() > 1)  # auto: a core free beside the one thread
    assert result.input_wait_ms_per_step is not None and result.input_wait_ms_per_step >= 0


@given(st.lists(st.tuples(st.floats(0.01, 100.0), st.floats(0.01, 100.0)), min_size=1, max_size=9))
def test_the_ratio_of_medians_lies_between_the_pair_ratios(runs: list[tuple[float, float]]) -> None:
    """What `StageBench.pair_ratios` promises: each pair's ratio, in order, and the headline ratio (of the medians)
    between the least and the greatest of them."""
    ours, bare = [o for o, _ in runs], [b for _, b in runs]
    pairs = pair_ratios(ours, bare)
    assert pairs == [pytest.approx(o / b, abs=6e-5) for o, b in runs]
    ratio = statistics.median(ours) / statistics.median(bare)
    assert min(pairs) - 1e-4 <= ratio <= max(pairs) + 1e-4


@pytest.mark.parametrize("micro_batches", [1, 2, 4])
def test_bare_loop_does_the_stage_math(tmp_path: Path, micro_batches: int) -> None:
    """The bench's reference is the same math as the stage: it ends with the stage's weights, bit for bit."""
    import torch
    from safetensors.torch import load_file

    from geno_pipeline.training import stage
    from geno_pipeline.training.determinism import configure_torch_reproducibility
    from tools import benchtrain

    params = benchtrain._params_with(TINY, micro_batches=micro_batches, steps=6)
    layout = benchtrain._prepare(tmp_path, params)
    configure_torch_reproducibility(0, deterministic=True, cpu_threads=params.runtime.cpu_threads)
    stage.run(params, layout)
    model = benchtrain._bare_loop(params, layout)
    ours, bare = load_file(layout.final_model), model.state_dict()
    assert sorted(ours) == sorted(bare)
    assert all(torch.equal(ours[k], bare[k]) for k in ours)
    initial = benchtrain._bare_loop(params.model_copy(update={"train": params.train.model_copy(update={"steps": 1})}), layout)
    assert not all(torch.equal(initial.state_dict()[k], bare[k]) for k in ours)  # the comparison can tell runs apart


@given(steps=st.integers(1, 400), log_every=st.integers(1, 50), every=st.integers(1, 50))
def test_cadence_counts_what_the_stage_schedules(steps: int, log_every: int, every: int) -> None:
    evaluations, checkpoints = cadence(steps, log_every, every)
    assert evaluations == 1 + sum(1 for s in range(1, steps + 1) if s % log_every == 0 or s == steps)
    assert checkpoints == sum(1 for s in range(1, steps + 1) if s % every == 0 or s == steps)


def test_required_work_writes_durable_checkpoints_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from tools import benchtrain

    files = {"a.safetensors": b"alpha", "state.json": b"{}"}
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    benchtrain._durable_writes(files, tmp_path / "w", 3)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["0", "1", "2"]
    assert all({p.name: p.read_bytes() for p in (tmp_path / "w" / n).iterdir()} == files for n in "012")
    assert len(synced) == 3 * 4  # per checkpoint: two files, the staging directory, the parent after the rename
    assert synced[3] == str(tmp_path / "w")


@settings(max_examples=20, deadline=None)
@given(repeats=st.integers(1, 7))
def test_interleaved_medians_alternate_the_two_and_take_each_ones_median(repeats: int) -> None:
    """The step bench times ours and the reference in turn (a burst of load on a shared machine hits both), `repeats`
    runs each, and reports each one's median run."""
    from tools import bench, benchtrain

    calls: list[str] = []
    clock = iter(range(10_000))
    fake_time = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
    run = {"ours": 0, "reference": 0}

    def step(name: str) -> None:  # run k of ours takes 1 + k ticks of the fake clock, of the reference 1 + 3k
        calls.append(name)
        run[name] += 1
        for _ in range(run[name] * (1 if name == "ours" else 3)):
            next(clock)

    original = benchtrain.time
    benchtrain.time = fake_time  # type: ignore[assignment]
    try:
        ours, reference = bench._interleaved(lambda: step("ours"), lambda: step("reference"), repeats)
    finally:
        benchtrain.time = original
    assert calls == ["ours", "reference"] * repeats
    assert ours == statistics.median(1 + k for k in range(1, repeats + 1))
    assert reference == statistics.median(1 + 3 * k for k in range(1, repeats + 1))


def test_bench_prints_each_profiles_ratio_pair_range_and_a_missed_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench`'s train-stage lines, from the committed reports/bench.json: the ratio, the range of its pairs, and
    TARGET MISSED exactly where the target was missed."""
    from geno_pipeline.layout import Layout
    from tools import bench

    report = bench.BenchReport.model_validate_json((Path(__file__).parents[1] / "reports" / "bench.json").read_text())
    missed = report.train_stage[0].model_copy(update={"ratio": 1.25, "meets_target": False, "pair_ratios": [1.3, 1.2, 1.25]})
    met = report.train_stage[-1].model_copy(update={"ratio": 1.05, "meets_target": True, "pair_ratios": [1.01, 1.05, 1.2]})
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: report.model_copy(update={"train_stage": [missed, met]}))
    assert bench.run_bench_cli(Layout.for_root(tmp_path), quick=True) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "train_stage_end_to_end" in line]
    assert len(lines) == 2
    assert "ratio 1.2500" in lines[0] and "TARGET MISSED; 3 alternate pairs from 1.2000 to 1.3000)" in lines[0]
    assert "ratio 1.0500" in lines[1] and "TARGET MISSED" not in lines[1] and "3 alternate pairs from 1.0100 to 1.2000)" in lines[1]
