"""The `sweep` stage: the train stage run in-process for seeds train.seed + 1 .. + N, each in its own directory.

Each seeded run is the ordinary deterministic, resumable train stage with its outputs under
artifacts/sweep/seed-<S>/ (train/, train.json, metrics.json, plots/). A finished run bound to the same params,
dataset, code and environment is reused; an interrupted one resumes from its last checkpoint. reports/sweep.json
holds no wall-clock values, so the same inputs give the same bytes; timings go to reports/runtime/sweep.json.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geno_pipeline.canonical import canonical_json
from geno_pipeline.checksums import sha256_bytes, sha256_file
from geno_pipeline.config import Params, SweepStageParams, TrainStageParams
from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.errors import GenoPipelineError, TrainingCheckpointError, TrainingError
from geno_pipeline.jsonio import read_json, write_json
from geno_pipeline.layout import Layout
from geno_pipeline.runtime_report import StageResult
from geno_pipeline.source import source_digest
from geno_pipeline.sweep.documents import SweepBinding, SweepReport, SweepRun
from geno_pipeline.sweep.summary import summarize, sweep_seeds
from geno_pipeline.training.documents import TrainingReport
from geno_pipeline.training.fingerprint import preflight_fingerprint

if TYPE_CHECKING:
    from geno_pipeline.training import stage as train_stage

__all__ = ["FINISHED", "read_sweep", "released_binding", "run", "summary", "sweep_binding"]

FINISHED = ("completed", "failed_nonfinite", "collapsed")
"""Statuses after which a seed's run is not resumed (stopped runs are)."""


def _seedless_sha256(params: TrainStageParams) -> str:
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": 0})}).sha256()


def _environment_sha256(fingerprint: EnvironmentFingerprint) -> str:
    return sha256_bytes(canonical_json(fingerprint).encode())


def sweep_binding(params: SweepStageParams, layout: Layout) -> SweepBinding:
    """What every seed of a sweep here shares: seedless params, dataset, code, and preflight's environment."""
    if not layout.dataset_manifest.is_file():
        raise TrainingError(f"{layout.dataset_manifest}: missing; fix: run `geno-pipeline data` first (dvc repro runs it)")
    return SweepBinding(
        base_seed=params.train.seed,
        train_params_sha256=_seedless_sha256(params.train_stage()),
        dataset_manifest_sha256=sha256_file(layout.dataset_manifest),
        source_digest=source_digest(),
        environment_sha256=_environment_sha256(preflight_fingerprint(layout)),
    )


def released_binding(params: TrainStageParams | Params, report: TrainingReport) -> SweepBinding:
    """The same facts for the run being released, from its training report."""
    stage_params = TrainStageParams.from_params(params) if isinstance(params, Params) else params
    return SweepBinding(
        base_seed=report.seeds.base,
        train_params_sha256=_seedless_sha256(stage_params),
        dataset_manifest_sha256=report.dataset_manifest_sha256,
        source_digest=report.source_digest,
        environment_sha256=_environment_sha256(report.environment),
    )


def _reusable(layout: Layout, params: TrainStageParams, binding: SweepBinding) -> TrainingReport | None:
    """The seed's earlier report when its run finished on exactly these inputs, else None."""
    if not layout.train_report.is_file():
        return None
    try:
        report = TrainingReport.model_validate(read_json(layout.train_report, schema="train_report"))
    except (GenoPipelineError, ValueError):
        return None
    same = (
        report.status in FINISHED
        and report.params_sha256 == params.sha256()
        and report.dataset_manifest_sha256 == binding.dataset_manifest_sha256
        and report.source_digest == binding.source_digest
        and _environment_sha256(report.environment) == binding.environment_sha256
    )
    return report if same and (report.status != "completed" or layout.final_model.is_file()) else None


def _train_seed(params: TrainStageParams, layout: Layout, binding: SweepBinding, options: dict[str, Any]) -> tuple[TrainingReport, str]:
    """Train one seed (or reuse or resume it); returns its report and how it was obtained. Only here is torch loaded: a
    sweep of no seeds (dvc repro's default) and the release, which reads sweeps, never load it."""
    from geno_pipeline.training import stage as train_stage
    from geno_pipeline.training.checkpoint import list_checkpoints

    earlier = _reusable(layout, params, binding)
    if earlier is not None:
        return earlier, "reused"
    how = "trained"
    resume: str | None = None
    if list_checkpoints(layout.checkpoints):
        resume, how = "auto", "resumed"
    try:
        result = train_stage.run(params, layout, resume=resume, **options)
    except TrainingCheckpointError as exc:  # bound to other inputs or damaged: this seed starts over
        print(f"sweep: {layout.rel(layout.train_dir)}: not resumable ({exc}); starting this seed over", file=sys.stderr)
        shutil.rmtree(layout.train_home or layout.train_dir, ignore_errors=True)
        result, how = train_stage.run(params, layout, **options), "trained"
    assert isinstance(result.document, TrainingReport), "a sweep trains in one process"
    return result.document, how


def _record(layout: Layout, seed: int, report: TrainingReport) -> SweepRun:
    final = report.collapse.final_check
    return SweepRun(
        seed=seed,
        run_id=report.run_id,
        status=report.status,
        steps_completed=report.steps_completed,
        heldout_to_baseline=report.heldout_to_baseline if report.status == "completed" else None,
        final_train_loss=report.final_train_loss,
        final_heldout_loss=report.final_heldout_loss,
        identity_baseline_heldout_loss=report.identity_baseline_heldout_loss,
        collapse_alerts=report.collapse.alert_count,
        final_alerts=sorted({a.criterion for a in final.alerts}) if final is not None else [],
        report=layout.rel(layout.train_report),
    )


def _line(index: int, total: int, run: SweepRun, how: str, seconds: float) -> str:
    ratio = f"{run.heldout_to_baseline:.4f}" if run.heldout_to_baseline is not None else "n/a"
    alerts = f", final alerts {', '.join(run.final_alerts)}" if run.final_alerts else ""
    return (
        f"sweep: seed {run.seed} ({index}/{total}) {how}: {run.status}, held-out/baseline {ratio}, "
        f"final loss {run.final_train_loss}, collapse alerts {run.collapse_alerts}{alerts} [{seconds:.1f} s]"
    )


def run(
    params: SweepStageParams | Params,
    layout: Layout,
    *,
    seeds: int | None = None,
    progress: bool = False,
    model_factory: train_stage.ModelFactory | None = None,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> StageResult[SweepReport]:
    """Train `seeds` further seeds (default sweep.seeds) and write reports/sweep.json; returns it.

    `progress` shows each run's step progress on a terminal; `announce` gets one line before and after each seed."""
    stage_params = SweepStageParams.from_params(params) if isinstance(params, Params) else params
    count = stage_params.sweep.seeds if seeds is None else seeds
    if count < 0:
        raise TrainingError(f"--seeds {count}: must be >= 0")
    if count and stage_params.runtime.nproc_per_node != 1:
        raise TrainingError(
            f"runtime.nproc_per_node is {stage_params.runtime.nproc_per_node}: the sweep trains each seed in this one process; "
            "fix: run the sweep with a params file whose runtime.nproc_per_node is 1"
        )
    binding = sweep_binding(stage_params, layout)
    expected = preflight_fingerprint(layout)
    options: dict[str, Any] = {"progress": progress, "expected_fingerprint": expected, "model_factory": model_factory}
    chosen = sweep_seeds(stage_params.train.seed, count)
    runs: list[SweepRun] = []
    facts: dict[str, Any] = {"seeds": len(chosen)}  # flat scalars: seed_<S>_seconds, seed_<S>_how
    for index, seed in enumerate(chosen, 1):
        announce(f"sweep: seed {seed} ({index}/{len(chosen)}): training {stage_params.train.steps} steps ...")
        t0 = time.perf_counter()
        seed_layout = layout.for_sweep_seed(seed)
        report, how = _train_seed(stage_params.train_stage(seed), seed_layout, binding, options)
        runs.append(_record(seed_layout, seed, report))
        seconds = time.perf_counter() - t0
        facts[f"seed_{seed}_seconds"], facts[f"seed_{seed}_how"] = round(seconds, 3), how
        announce(_line(index, len(chosen), runs[-1], how, seconds))
    swept = SweepReport(binding=binding, seeds=chosen, runs=runs, summary=summarize(runs))
    write_json(layout.sweep_report, swept, schema="sweep")
    return StageResult(swept, facts)


def read_sweep(path: Path, *, error: type[GenoPipelineError], fix: str) -> SweepReport:
    """reports/sweep.json, validated; `error` with `fix` when it is missing or invalid."""
    if not path.is_file():
        raise error(f"{path}: missing; fix: {fix}")
    return SweepReport.model_validate(read_json(path, schema="sweep", error=error, fix=fix))


def summary(layout: Layout, report: SweepReport) -> list[str]:
    """What the CLI prints after the sweep: the spread across seeds."""
    where = layout.rel(layout.sweep_report)
    if not report.seeds:
        return [f"sweep: no seeds (sweep.seeds is 0); wrote {where}. Run `geno-pipeline sweep --seeds 3` or set sweep.seeds."]
    s = report.summary
    if s is None:
        return [f"sweep: none of {len(report.seeds)} seeds completed; wrote {where}"]

    def fmt(name: str, v: Any) -> str:
        std = f"{v.std:.4f}" if v.std is not None else "n/a"
        return f"sweep:   {name:<22} mean {v.mean:.4f}  std {std}  min {v.min:.4f}  max {v.max:.4f}"

    return [
        f"sweep: {s.completed}/{len(report.seeds)} seeds completed ({', '.join(map(str, report.seeds))}); wrote {where}",
        fmt("held-out/baseline", s.heldout_to_baseline),
        fmt("final train loss", s.final_train_loss),
        fmt("final held-out loss", s.final_heldout_loss),
        f"sweep:   worst seed {s.worst_seed}; collapse alerts {s.collapse_alerts} in all; "
        f"seeds alerting at the end {s.seeds_with_final_alerts}",
    ]
