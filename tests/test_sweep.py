"""Seed sweep: its pure statistics and gate, the sweep command on the tiny profile, and the release's sweep gate."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.config import SweepStageParams, load_params, params_from_mapping
from geno_pipeline.errors import ConfigError, TrainingError
from geno_pipeline.jsonio import validate_document
from geno_pipeline.layout import Layout
from geno_pipeline.release.verify import verify_bundle
from geno_pipeline.sweep import stage as sweep_stage
from geno_pipeline.sweep.documents import SweepBinding, SweepReport, SweepRun
from geno_pipeline.sweep.summary import binding_differences, gate_problems, spread, spread_interval, summarize, sweep_seeds
from geno_pipeline.training import stage as train_stage
from tests.conftest import TINY, copy_project, run_main, write_params

REPO = Path(__file__).resolve().parent.parent
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)], capture_output=True, text=True)


def in_process(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in this process (`run_main`): for the release gate's verdicts, whose subject is not the process."""
    return run_main(*args, "--root", str(root))


# ---------------------------------------------------------------- pure functions


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=50))
def test_sweep_seeds_are_the_next_ones_never_the_base(base: int, count: int) -> None:
    seeds = sweep_seeds(base, count)
    assert seeds == list(range(base + 1, base + count + 1))
    assert base not in seeds and len(set(seeds)) == count


def test_sweep_seeds_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="count must be >= 0"):
        sweep_seeds(3, -1)


@given(st.lists(finite, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_spread_bounds_and_order_independence(values: list[float], rnd: random.Random) -> None:
    s = spread(values)
    assert s.min == min(values) and s.max == max(values)
    assert s.min - 1e-9 * max(1.0, abs(s.min)) <= s.mean <= s.max + 1e-9 * max(1.0, abs(s.max))
    if len(values) == 1:
        assert s.std is None
    else:
        assert s.std is not None and s.std >= 0
        assert s.std == pytest.approx(statistics.stdev(values))
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert spread(shuffled) == s  # bit-for-bit: a sweep's summary does not depend on the order seeds finished in


def test_spread_known_values() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.min, s.max) == (2.5, 1.0, 4.0)
    assert s.std == pytest.approx(1.2909944487358056)
    with pytest.raises(ValueError, match="no values"):
        spread([])
    with pytest.raises(ValueError, match="non-finite"):
        spread([1.0, float("nan")])


def _run(seed: int, ratio: float | None, *, status: str = "completed", alerts: int = 0, final: tuple[str, ...] = ()) -> SweepRun:
    return SweepRun(
        seed=seed, run_id=f"run-{seed}", status=status, steps_completed=12 if status == "completed" else 5,  # type: ignore[arg-type]
        heldout_to_baseline=ratio, final_train_loss=0.5 + seed / 100, final_heldout_loss=ratio, identity_baseline_heldout_loss=1.0,
        collapse_alerts=alerts, final_alerts=list(final), report=f"artifacts/sweep/seed-{seed}/train.json",
    )  # fmt: skip


BINDING = SweepBinding(
    base_seed=5, train_params_sha256="a" * 64, dataset_manifest_sha256="b" * 64, source_digest="sha256:" + "c" * 64,
    environment_sha256="d" * 64,
)  # fmt: skip


def _report(*runs: SweepRun, binding: SweepBinding = BINDING) -> SweepReport:
    return SweepReport(binding=binding, seeds=[r.seed for r in runs], runs=list(runs), summary=summarize(runs))


def test_summarize_worst_seed_alerts_and_incomplete_runs() -> None:
    runs = [_run(6, 0.8, alerts=2, final=("pairwise",)), _run(7, 0.9), _run(8, 0.9), _run(9, None, status="failed_nonfinite", alerts=1)]
    s = summarize(runs)
    assert s is not None
    assert s.completed == 3 and s.worst_seed == 7  # the first seed on a tie
    assert s.heldout_to_baseline.max == 0.9 and s.heldout_to_baseline.min == 0.8
    assert s.collapse_alerts == 3 and s.seeds_with_final_alerts == 1
    assert summarize([_run(9, None, status="failed_nonfinite")]) is None
    assert summarize([]) is None


def test_gate_passes_inside_spread_and_under_threshold() -> None:
    report = _report(_run(6, 0.80), _run(7, 0.84), _run(8, 0.82))
    assert gate_problems(report, BINDING, 0.83, max_ratio=0.9, sigmas=3.0) == []
    low, high = spread_interval(report.summary.heldout_to_baseline, 3.0)  # type: ignore[union-attr]
    assert low == pytest.approx(0.82 - 3 * 0.02) and high == pytest.approx(0.82 + 3 * 0.02)


def test_gate_worst_seed_at_or_over_threshold_fails() -> None:
    report = _report(_run(6, 0.80), _run(7, 0.84), _run(8, 0.82))
    (problem,) = gate_problems(report, BINDING, 0.82, max_ratio=0.84, sigmas=3.0)  # "under": equal fails
    assert "seed 7 has held-out/baseline ratio 0.8400, not under 0.84" in problem


def test_gate_released_run_outside_spread_fails() -> None:
    report = _report(_run(6, 0.80), _run(7, 0.84), _run(8, 0.82))
    (problem,) = gate_problems(report, BINDING, 0.95, max_ratio=0.9, sigmas=3.0)
    assert "its ratio 0.9500 is outside [0.7600, 0.8800]" in problem
    (problem,) = gate_problems(report, BINDING, 0.70, max_ratio=0.9, sigmas=3.0)
    assert "outside" in problem


def test_gate_needs_two_completed_seeds_and_every_seed_completed() -> None:
    problems = gate_problems(_report(_run(6, 0.8), _run(7, None, status="collapsed")), BINDING, 0.8, max_ratio=0.9, sigmas=3.0)
    assert any("seed 7 collapsed at step 5" in p for p in problems)
    assert any("1 completed seed(s); the gate needs at least 2" in p for p in problems)


@pytest.mark.parametrize("field", ["base_seed", "train_params_sha256", "dataset_manifest_sha256", "source_digest", "environment_sha256"])
def test_gate_refuses_a_sweep_of_another_recipe(field: str) -> None:
    other = BINDING.model_copy(update={field: 6 if field == "base_seed" else "e" * 64})
    assert binding_differences(other, BINDING) and binding_differences(BINDING, BINDING) == []
    (problem,) = gate_problems(_report(_run(6, 0.8), _run(7, 0.8), binding=other), BINDING, 0.8, max_ratio=0.9, sigmas=3.0)
    assert "not run on the released run's recipe" in problem and field in problem


def test_config_gate_needs_two_seeds_and_positive_threshold() -> None:
    raw = yaml.safe_load(TINY.read_text())
    raw["release"]["sweep_max_ratio"] = 1.0
    with pytest.raises(ConfigError) as caught:
        params_from_mapping(raw)
    assert "sweep.seeds" in str(caught.value) and "must be at least 2 when release.sweep_max_ratio is set" in str(caught.value)
    raw["sweep"] = {"seeds": 2}
    assert params_from_mapping(raw).release.sweep_max_ratio == 1.0
    raw["release"]["sweep_max_ratio"] = 0.0
    with pytest.raises(ConfigError, match="sweep_max_ratio"):
        params_from_mapping(raw)
    raw["release"]["sweep_max_ratio"], raw["sweep"]["seeds"] = None, -1
    with pytest.raises(ConfigError, match=r"sweep\.seeds"):
        params_from_mapping(raw)


# ---------------------------------------------------------------- the sweep on the tiny profile


def _tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def swept(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny project, trained (its release left out), then swept over 3 seeds by the CLI."""
    root = copy_project(tiny_released, tmp_path_factory.mktemp("sweep") / "project", without_release=True)
    proc = cli(root, "sweep", "--seeds", "3")
    assert proc.returncode == 0, proc.stderr
    (root / "sweep_stdout.txt").write_text(proc.stdout)
    return root


@pytest.mark.slow
def test_sweep_cli_summary_report_and_per_seed_directories(swept: Path) -> None:
    out = (swept / "sweep_stdout.txt").read_text()
    for seed, index in ((6, 1), (7, 2), (8, 3)):
        assert f"sweep: seed {seed} ({index}/3): training 12 steps ..." in out
        assert f"sweep: seed {seed} ({index}/3) trained: completed, held-out/baseline " in out
    assert "sweep: 3/3 seeds completed (6, 7, 8); wrote reports/sweep.json" in out
    assert "held-out/baseline      mean " in out and "worst seed " in out
    document = json.loads((swept / "reports" / "sweep.json").read_text())
    validate_document(document, "sweep", source="reports/sweep.json")
    report = SweepReport.model_validate(document)
    assert report.seeds == [6, 7, 8] and [r.seed for r in report.runs] == [6, 7, 8]
    assert len({r.run_id for r in report.runs}) == 3
    assert report.summary is not None and report.summary.completed == 3
    ratios = [r.heldout_to_baseline for r in report.runs]
    assert report.summary.heldout_to_baseline == spread([r for r in ratios if r is not None])
    for seed in (6, 7, 8):
        home = swept / "artifacts" / "sweep" / f"seed-{seed}"
        assert (home / "train" / "model.safetensors").is_file() and (home / "train.json").is_file()
        assert json.loads((home / "train.json").read_text())["seeds"]["base"] == seed
    assert not (swept / "artifacts" / "train" / "sweep").exists()  # the released run's outputs are untouched
    assert json.loads((swept / "reports" / "train.json").read_text())["seeds"]["base"] == 5


@pytest.mark.slow
def test_sweep_seed_run_equals_the_train_stage_with_that_seed(swept: Path, tmp_path: Path) -> None:
    """Each seeded run is the ordinary deterministic train stage: same bytes as `train` with train.seed = S."""
    root = tmp_path / "seed7"
    shutil.copytree(swept, root, ignore=shutil.ignore_patterns("sweep", "train"))
    write_params(root, train={"seed": 7})
    assert cli(root, "preflight").returncode == 0
    proc = cli(root, "train", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    straight = _tree(root / "artifacts" / "train")
    assert straight == _tree(swept / "artifacts" / "sweep" / "seed-7" / "train")
    a = json.loads((root / "reports" / "train.json").read_text())
    b = json.loads((swept / "artifacts" / "sweep" / "seed-7" / "train.json").read_text())
    a.pop("artifacts"), b.pop("artifacts")  # paths differ (artifacts/train vs artifacts/sweep/seed-7/train); hashes compared above
    assert a == b


@pytest.mark.slow
def test_sweep_rerun_reuses_seeds_and_is_byte_identical(swept: Path, tmp_path: Path) -> None:
    root = tmp_path / "again"
    shutil.copytree(swept, root)
    before = (root / "reports" / "sweep.json").read_bytes()
    proc = cli(root, "sweep", "--seeds", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(") reused: completed") == 3
    assert (root / "reports" / "sweep.json").read_bytes() == before
    facts = json.loads((root / "reports" / "runtime" / "sweep.json").read_text())["facts"]
    assert facts["seeds"] == 3 and facts["seed_6_how"] == "reused"


@pytest.mark.slow
def test_sweep_interrupted_seed_resumes_to_the_same_report(swept: Path, tmp_path: Path) -> None:
    root = tmp_path / "interrupted"
    shutil.copytree(swept, root)
    before = (root / "reports" / "sweep.json").read_bytes()
    seed_home = root / "artifacts" / "sweep" / "seed-7"
    shutil.rmtree(seed_home)  # seed 7 was stopped after step 5, as a killed sweep leaves it
    params = SweepStageParams.from_params(load_params(root / "params.yaml"))
    layout = Layout.for_root(root)
    stopped = train_stage.run(params.train_stage(7), layout.for_sweep_seed(7), stop_after_step=5)
    assert stopped.document.status == "stopped"  # type: ignore[union-attr]
    lines: list[str] = []
    result = sweep_stage.run(params, layout, seeds=3, announce=lines.append)
    assert any("seed 7 (2/3) resumed: completed" in line for line in lines), lines
    assert (root / "reports" / "sweep.json").read_bytes() == before
    assert result.facts["seed_6_how"] == "reused" and result.facts["seed_7_how"] == "resumed"


@pytest.mark.slow
def test_sweep_zero_seeds_writes_an_empty_report(swept: Path, tmp_path: Path) -> None:
    root = tmp_path / "zero"
    shutil.copytree(swept, root, ignore=shutil.ignore_patterns("sweep"))
    proc = cli(root, "sweep")  # sweep.seeds is 0 in the tiny profile
    assert proc.returncode == 0, proc.stderr
    assert "sweep: no seeds (sweep.seeds is 0)" in proc.stdout
    report = SweepReport.model_validate_json((root / "reports" / "sweep.json").read_text())
    assert report.seeds == [] and report.runs == [] and report.summary is None


@pytest.mark.slow
def test_sweep_refuses_multi_process_params_and_negative_seeds(swept: Path, tmp_path: Path) -> None:
    root = tmp_path / "multi"
    shutil.copytree(swept, root, ignore=shutil.ignore_patterns("sweep", "train"))
    params = load_params(root / "params.yaml")
    multi = params.model_copy(update={"runtime": params.runtime.model_copy(update={"nproc_per_node": 2})})
    with pytest.raises(TrainingError, match=r"runtime\.nproc_per_node is 2: the sweep trains each seed in this one process"):
        sweep_stage.run(multi, Layout.for_root(root), seeds=2)
    proc = cli(root, "sweep", "--seeds", "-1")
    assert proc.returncode == 2 and "--seeds -1: must be 0 or more" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the release gate


def _gated_root(swept: Path, tmp_path: Path, **release: object) -> Path:
    root = tmp_path / "gated"
    shutil.copytree(swept, root)
    write_params(root, sweep={"seeds": 3}, release=release)
    assert in_process(root, "preflight").returncode == 0  # the outcome is bound to the params
    return root


def _report_of(root: Path) -> SweepReport:
    return SweepReport.model_validate_json((root / "reports" / "sweep.json").read_text())


@pytest.mark.slow
def test_release_sweep_gate_passes_and_records_the_sweep(swept: Path, tmp_path: Path) -> None:
    s = _report_of(swept).summary
    assert s is not None
    threshold = round(s.heldout_to_baseline.max + 0.05, 3)
    root = _gated_root(swept, tmp_path, sweep_max_ratio=threshold, sweep_spread_sigmas=100.0)
    proc = in_process(root, "release")
    assert proc.returncode == 0, proc.stderr
    metadata = json.loads((root / "artifacts" / "release" / "metadata.json").read_text())
    assert metadata["sweep"]["seeds"] == [6, 7, 8] and metadata["sweep"]["max_ratio"] == threshold
    assert metadata["sweep"]["summary"] == s.model_dump(mode="json")
    assert "reports/sweep.json" in {i["path"] for i in metadata["inputs"]}
    card = (root / "artifacts" / "release" / "MODEL_CARD.md").read_text()
    assert "## Seed sweep" in card and f"({s.worst_seed}, ratio {s.heldout_to_baseline.max:.4f}) is under the release threshold" in card
    assert verify_bundle(root / "artifacts" / "release") == []


@pytest.mark.slow
def test_release_sweep_gate_fails_over_threshold(swept: Path, tmp_path: Path) -> None:
    s = _report_of(swept).summary
    assert s is not None
    root = _gated_root(swept, tmp_path, sweep_max_ratio=s.heldout_to_baseline.max, sweep_spread_sigmas=100.0)
    proc = in_process(root, "release")
    assert proc.returncode == 6 and "Traceback" not in proc.stderr
    assert f"sweep gate: worst sweep seed under release.sweep_max_ratio: seed {s.worst_seed}" in proc.stderr
    assert not (root / "artifacts" / "release").exists()


@pytest.mark.slow
def test_release_sweep_gate_fails_outside_spread(swept: Path, tmp_path: Path) -> None:
    root = _gated_root(swept, tmp_path, sweep_max_ratio=100.0, sweep_spread_sigmas=1e-6)
    proc = in_process(root, "release")
    assert proc.returncode == 6
    assert "sweep gate: released run within the sweep's spread: its ratio" in proc.stderr and "is outside" in proc.stderr


@pytest.mark.slow
def test_release_sweep_gate_refuses_a_missing_or_stale_sweep(swept: Path, tmp_path: Path) -> None:
    root = _gated_root(swept, tmp_path, sweep_max_ratio=100.0)
    report = _report_of(root)
    stale = report.model_copy(update={"binding": report.binding.model_copy(update={"base_seed": 99})})
    (root / "reports" / "sweep.json").write_text(stale.model_dump_json())
    proc = in_process(root, "release")
    assert proc.returncode == 6 and "not run on the released run's recipe: they differ in base_seed (sweep 99, release 5)" in proc.stderr
    (root / "reports" / "sweep.json").unlink()
    proc = in_process(root, "release")
    assert proc.returncode == 6 and "sweep.json: missing; fix: run `geno-pipeline sweep`" in proc.stderr


@pytest.mark.slow
def test_release_without_gate_ignores_the_sweep_and_has_how_to_verify(swept: Path, tmp_path: Path) -> None:
    root = tmp_path / "plain"
    shutil.copytree(swept, root)
    proc = in_process(root, "release")
    assert proc.returncode == 0, proc.stderr
    sums = (root / "artifacts" / "release" / "SHA256SUMS").read_bytes()
    assert json.loads((root / "artifacts" / "release" / "metadata.json").read_text())["sweep"] is None
    card = (root / "artifacts" / "release" / "MODEL_CARD.md").read_text()
    assert "## Seed sweep" not in card
    assert "## How to verify" in card and "sha256sum -c --strict SHA256SUMS" in card and "model_signing verify key" in card
    (root / "reports" / "sweep.json").unlink()  # with the gate off the release does not read it
    assert in_process(root, "release").returncode == 0
    assert (root / "artifacts" / "release" / "SHA256SUMS").read_bytes() == sums
