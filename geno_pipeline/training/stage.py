"""The `train` stage as a recipe: setup -> start or resume -> loop -> finish.

Every declared output is deterministic: no wall-clock values in logs, checkpoints or reports.
Durations and throughput are returned as facts for reports/runtime/train.json.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from geno_pipeline.canonical import canonical_json
from geno_pipeline.checksums import sha256_bytes, sha256_file
from geno_pipeline.config import Params, TrainParams, TrainStageParams, cross_section_problems, world_size_problems
from geno_pipeline.data.dataset import Dataset, load_dataset
from geno_pipeline.distributed import local_world_size, micro_batch_slices, shard_range, tree_fits
from geno_pipeline.distributed.group import Collective, LocalGroup
from geno_pipeline.documents import ArtifactIdentity
from geno_pipeline.environment import EnvironmentFingerprint, build_fingerprint, torch_training_device
from geno_pipeline.errors import DistributedError, TrainingError
from geno_pipeline.fsio import atomic_write_bytes, require_writable
from geno_pipeline.hostmem import available_host_memory, usable_cores
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import LOG_FILES, Layout
from geno_pipeline.openmp import wait_policy_fact
from geno_pipeline.runtime_report import Fact, StageResult
from geno_pipeline.source import source_digest
from geno_pipeline.tensorfile import serialize_tensors
from geno_pipeline.training.budget import MEMORY_REMEDY, memory_shortfall, train_memory
from geno_pipeline.training.checkpoint import Bindings
from geno_pipeline.training.collapse import CollapseMonitor
from geno_pipeline.training.determinism import TrainerSeeds, configure_torch_reproducibility
from geno_pipeline.training.documents import (
    TrainingReport,
    TrainMetrics,
    summarize_collapse,
)
from geno_pipeline.training.fingerprint import preflight_fingerprint
from geno_pipeline.training.heldout import build_held_out, caches_source_states, encode_windows
from geno_pipeline.training.logs import RunLogs, write_plots
from geno_pipeline.training.loop import ranks_agree, train_loop
from geno_pipeline.training.model import WorldModel, build_world_model
from geno_pipeline.training.prefetch import prefetch_default
from geno_pipeline.training.resume import agreed_checkpoint, require_visible_everywhere, resume_from, start_fresh
from geno_pipeline.training.run import PARTS, CheckpointJob, LoopOutcome, TrainingRun, snapshot
from geno_pipeline.training.sampling import edit_type_weights_from_mapping, rollout_mix_from_mapping
from geno_pipeline.training.trainer import TorchTrainer, build_adamw_optimizer
from geno_pipeline.training.tuples import TupleSampler
from geno_pipeline.version import __version__

__all__ = [
    "PARTS", "CheckpointJob", "LoopOutcome", "ModelFactory", "TrainingRun", "preflight_fingerprint", "ranks_agree", "run", "run_training",
    "snapshot", "summary", "train_loop",
]  # fmt: skip

ModelFactory = Callable[[TrainParams, int, TrainerSeeds], WorldModel]


# ---------------------------------------------------------------- 1) setup


def check_cross_section(params: TrainStageParams, dataset: Dataset) -> None:
    """The params' cross-section checks against the built dataset's shape; raises `TrainingError` listing every problem."""
    counts = dataset.manifest.counts
    problems = cross_section_problems(counts.window_length, counts.flank_length, params.train)
    if problems:
        lines = "\n".join(f"  - {key} = {value!r}: {message}; fix: {fix}" for key, value, message, fix in problems)
        raise TrainingError(
            f"the dataset ({counts.window_length}-base windows, {counts.flank_length}-base flanks) does not fit the train params:\n{lines}"
        )


def check_memory_budget(params: TrainStageParams, dataset: Dataset, device: str, *, world_size: int) -> None:
    """Refuse, before the model is built or a previous run's outputs are removed, a run whose estimated peak memory
    (`train_memory`) exceeds what this machine (and, on CUDA, this worker's GPU) has; raises `TrainingError`."""
    counts = dataset.manifest.counts
    estimate = train_memory(
        params.train, params.collapse, window_length=counts.window_length, slot_length=int(dataset.train.shape[1]),
        train_windows=int(dataset.train.shape[0]), valid_windows=int(dataset.valid.shape[0]), world_size=world_size,
        workers_here=local_world_size(world_size), device="cuda" if device.startswith("cuda") else "cpu",
    )  # fmt: skip
    device_free = int(torch.cuda.mem_get_info(device)[0]) if device.startswith("cuda") else None
    short = memory_shortfall(estimate, host_available=available_host_memory(), device_free=device_free)
    if short is not None:
        raise TrainingError(f"{short}; nothing was changed; fix: {MEMORY_REMEDY}")


def run_identity(params: TrainStageParams, dataset: Dataset, world_size: int) -> str:
    """`run-<16 hex>` from the params, the dataset, the package version and the world size (the exact source is in
    `source_digest`)."""
    return "run-" + sha256_bytes(f"{params.sha256()}:{dataset.manifest_sha256}:{__version__}:world={world_size}".encode())[:16]


def _default_model(train: TrainParams, window_length: int, seeds: TrainerSeeds) -> WorldModel:
    return build_world_model(window_length=window_length, params=train.model, encoder_seed=seeds.encoder, init_seed=seeds.model_init)


def fingerprint_fix(expected: EnvironmentFingerprint, actual: EnvironmentFingerprint) -> str:
    """The command that makes preflight's fingerprint match this run: under a launcher of another world size, preflight
    must be told that world size (it reads WORLD_SIZE, as the launcher's workers do); otherwise a plain rerun."""
    if actual.world_size != expected.world_size and actual.world_size != actual.nproc_per_node:
        return f"rerun preflight with the launcher's world size, on each node: `WORLD_SIZE={actual.world_size} geno-pipeline preflight`"
    return "rerun `geno-pipeline preflight`"


def _check_fingerprint(expected: EnvironmentFingerprint | None, actual: EnvironmentFingerprint) -> None:
    if expected is None or expected == actual:
        return
    have, want = actual.model_dump(), expected.model_dump()
    diffs = ", ".join(f"{k}: preflight {want[k]!r} vs now {have[k]!r}" for k in sorted(have) if have[k] != want[k])
    raise TrainingError(f"the environment differs from preflight's fingerprint ({diffs}); fix: {fingerprint_fix(expected, actual)}")


def setup(
    params: TrainStageParams,
    layout: Layout,
    *,
    expected_fingerprint: EnvironmentFingerprint | None,
    model_factory: ModelFactory | None,
    group: Collective | None = None,
    local_rank: int | None = None,
) -> TrainingRun:
    """Load and check the inputs, apply determinism, and build the model, optimizer, sampler and held-out batch."""
    runtime, train = params.runtime, params.train
    group = group if group is not None else LocalGroup()
    for key, value, message, fix in world_size_problems(group.size, train, key="world size"):  # a launcher's WORLD_SIZE
        raise DistributedError(f"{key} {value} {message}; fix: {fix}, or launch a world size that divides it")
    if group.rank == 0 and not tree_fits(train.micro_batches, group.size):
        print(
            f"train: warning: {group.size} workers is not a power of two, so each step gathers every micro-batch's gradient "
            f"({train.micro_batches} of them) instead of exchanging gradient shards: the same bytes, more traffic; "
            "a power-of-two world size that divides train.micro_batches moves less",
            file=sys.stderr,
        )
    if group.rank == 0:
        for leftover in layout.sweep_stage_temporaries("train"):
            print(f"train: removed {layout.rel(leftover)} left by an interrupted run", file=sys.stderr)
    dataset = load_dataset(layout.dataset_dir)
    check_cross_section(params, dataset)
    device, kind = torch_training_device(runtime.device, local_rank=local_rank)
    seeds = TrainerSeeds.from_base(train.seed)
    determinism = configure_torch_reproducibility(
        train.seed, deterministic=runtime.deterministic, device=device, cpu_threads=runtime.cpu_threads
    )
    # after the settings (reading a GPU's free memory starts CUDA), before the model is built or outputs are removed
    check_memory_budget(params, dataset, device, world_size=group.size)
    tf32 = determinism.tf32_matmul or determinism.tf32_cudnn
    fingerprint = build_fingerprint(runtime, device_kind=kind, world_size=group.size, tf32=tf32, cpu_class=determinism.cpu_class)
    _check_fingerprint(expected_fingerprint, fingerprint)
    bindings = Bindings(
        params_sha256=params.sha256(),
        dataset_manifest_sha256=dataset.manifest_sha256,
        package_version=__version__,
        environment_sha256=sha256_bytes(canonical_json(fingerprint).encode()),
        world_size=group.size,
    )
    slices = micro_batch_slices(train.batch_size, train.micro_batches)
    window = dataset.manifest.counts.window_length
    model = (model_factory or _default_model)(train, window, seeds).to(device)
    optimizer = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    weights, mix = edit_type_weights_from_mapping(train.edit_type_weights), rollout_mix_from_mapping(train.rollout_step_mix)
    t0 = time.perf_counter()
    sources = source_states(model, dataset, train, device)
    source_seconds = time.perf_counter() - t0  # the cache alone: the held-out batch below is setup, not the loop's encoding
    return TrainingRun(
        params=params, layout=layout, dataset=dataset, device=device, seeds=seeds, determinism=determinism, fingerprint=fingerprint,
        bindings=bindings, run_id=run_identity(params, dataset, group.size), model=model, optimizer=optimizer,
        trainer=TorchTrainer(predictor=model.predictor, action_encoder=model.action_encoder, optimizer=optimizer, config=train,
                             total_steps=train.steps, group=group),
        sampler=TupleSampler(seeds.sampler, window_length=window, weights=weights, mix=mix),
        held=build_held_out(model, dataset, train, params.collapse, seeds, device) if group.rank == 0 else None,
        logs=RunLogs(layout), monitor=CollapseMonitor.from_params(params.collapse),
        group=group, shards=[slices[j] for j in shard_range(train.micro_batches, group.size, group.rank)],
        source_states=sources, source_seconds=source_seconds,
    )  # fmt: skip


def source_states(model: WorldModel, dataset: Dataset, train: TrainParams, device: str) -> torch.Tensor | None:
    """Every training window's state, encoded once, when that is less encoder work than encoding each step's sources."""
    windows, state_dim = dataset.train.shape[0], train.model.state_dim
    if not caches_source_states(windows, train.steps * train.batch_size, state_dim):
        return None
    return encode_windows(model, dataset.train, dataset.manifest.counts.window_length, device)


# ---------------------------------------------------------------- 4) finish


def _save_final_model(run: TrainingRun, step: int) -> None:
    meta = {
        "run_id": run.run_id,
        "step": str(step),
        "params_sha256": run.bindings.params_sha256,
        "seed": str(run.train.seed),
        "source_digest": source_digest(),
    }
    atomic_write_bytes(run.layout.final_model, serialize_tensors(run.model.state_dict(), meta))


def _artifacts(run: TrainingRun) -> list[ArtifactIdentity]:
    layout = run.layout
    files = [layout.final_model] if layout.final_model.is_file() else []
    files += [layout.log(n) for n in LOG_FILES]
    files += sorted(layout.checkpoints.rglob("*.safetensors")) + sorted(layout.checkpoints.rglob("state.json"))
    return [ArtifactIdentity(path=layout.rel(p), sha256=sha256_file(p), bytes=p.stat().st_size) for p in files]


def _train_metrics(report: TrainingReport) -> TrainMetrics:
    final = report.collapse.final_check
    return TrainMetrics(
        status=report.status,
        steps_completed=report.steps_completed,
        train_loss=report.final_train_loss,
        heldout_loss=report.final_heldout_loss,
        identity_baseline_loss=report.identity_baseline_heldout_loss,
        heldout_to_baseline=report.heldout_to_baseline,
        collapse_alerts=report.collapse.alert_count,
        pred_var_ratio=final.pred_var_ratio() if final is not None else None,
        pairwise_ratio=final.pairwise_ratio() if final is not None else None,
        effective_rank=final.metrics.effective_rank if final is not None else None,
    )


def finish(run: TrainingRun, outcome: LoopOutcome) -> TrainingReport:
    """Final weights (only for a completed run), plots, reports/train.json and reports/metrics.json."""
    if outcome.status == "completed":
        _save_final_model(run, outcome.last_step)
        run.logs.log(f"done: {outcome.message}")
    run.logs.sync()  # the lines after the last checkpoint are as durable as the reports that follow
    run.logs.close()
    assert run.held is not None, "rank 0 finishes"
    write_plots(run.layout, run.logs, run.held.identity_loss)
    summary = summarize_collapse(run.lines)
    last = run.lines[-1] if run.lines else None
    heldout = last.heldout_loss if last is not None and last.step > 0 else None
    identity = run.held.identity_loss
    report = TrainingReport(
        run_id=run.run_id, status=outcome.status, message=outcome.message, steps_requested=run.train.steps,
        steps_completed=outcome.last_step, device=run.device,
        final_train_loss=run.last_loss, final_heldout_loss=heldout, identity_baseline_heldout_loss=identity,
        heldout_to_baseline=heldout / identity if heldout is not None and identity > 0 else None,
        params_sha256=run.bindings.params_sha256, dataset_id=run.dataset.manifest.dataset_id,
        dataset_manifest_sha256=run.dataset.manifest_sha256, source_digest=source_digest(), package_version=__version__,
        seeds=run.seeds, determinism=run.determinism, environment=run.fingerprint, collapse=summary, artifacts=_artifacts(run),
    )  # fmt: skip
    write_json(run.layout.train_report, report, schema="train_report")
    write_json(run.layout.train_metrics, _train_metrics(report), schema="train_metrics")
    return report


# ---------------------------------------------------------------- the stage


def run(
    params: TrainStageParams | Params,
    layout: Layout,
    *,
    resume: str | Path | None = None,
    stop_after_step: int | None = None,
    progress: bool = False,
    expected_fingerprint: EnvironmentFingerprint | None = None,
    model_factory: ModelFactory | None = None,
    group: Collective | None = None,
    local_rank: int | None = None,
    prefetch: bool | None = None,
) -> StageResult[TrainingReport | LoopOutcome]:
    """Train (or resume) to `train.steps`; writes artifacts/train, reports/train.json, reports/metrics.json and plots.

    In a multi-process job (`group`), rank 0 returns the report and writes everything; the other ranks return how
    their loop ended, write nothing and ask the CLI to print nothing (`quiet`). `prefetch` (default: where a core is
    free for it, `prefetch_default`) prepares the next steps' batches on a worker thread; the bytes are the same."""
    stage_params = TrainStageParams.from_params(params) if isinstance(params, Params) else params
    if stop_after_step is not None and not 1 <= stop_after_step <= stage_params.train.steps:
        raise TrainingError(f"--stop-after-step {stop_after_step} is outside 1..train.steps ({stage_params.train.steps})")
    training = setup(
        stage_params, layout, expected_fingerprint=expected_fingerprint, model_factory=model_factory, group=group, local_rank=local_rank
    )
    if training.writer:  # all or nothing: a report that cannot be written is found before hours of training, not after
        require_writable([layout.train_dir.parent, layout.train_report.parent, layout.train_metrics.parent, layout.plots])
    checkpoint = agreed_checkpoint(training, resume)
    if checkpoint is not None:
        where = layout.rel(checkpoint) if checkpoint.is_absolute() and checkpoint.is_relative_to(layout.root) else str(checkpoint)
        require_visible_everywhere(training.group, checkpoint, where)
        resume_from(training, checkpoint)
    elif training.writer:
        start_fresh(training)
    if prefetch is None:
        threads = stage_params.runtime.cpu_threads
        prefetch = prefetch_default(training.device, threads, local_world_size(training.group.size), usable_cores())
    outcome = train_loop(training, stop_after_step=stop_after_step, progress=progress, prefetch=prefetch)
    if not training.writer:
        return StageResult(outcome, {}, quiet=True)
    report = finish(training, outcome)
    facts = {
        "steps_run": outcome.steps_run,
        "resumed_from_step": training.start,
        "status": report.status,
        "device": report.device,
        "world_size": training.group.size,
        "train_step_seconds": round(outcome.step_seconds, 4),
        "steps_per_second": round(outcome.steps_run / outcome.step_seconds, 3) if outcome.step_seconds > 0 else None,
        **{f"loop_{part}_seconds": round(seconds, 4) for part, seconds in outcome.parts.items()},
        "source_encoding_seconds": round(training.source_seconds, 4),  # once, before the loop; inside loop_encoding_seconds
        **traffic_facts(training.group, training.train.micro_batches, outcome.steps_run),
        "checkpoint_writer_seconds": round(training.saver.busy_seconds, 4) if training.saver is not None else 0.0,  # beside the loop
        "checkpoint_writer": type(training.saver).__name__ if training.saver is not None else None,
        "openmp_wait": wait_policy_fact(os.environ),
        "prefetch": outcome.prefetched,
        **{f"prepare_{part}_seconds": round(seconds, 4) for part, seconds in outcome.prepare_seconds.items()},
        "input_wait_ms_per_step": round(1000 * input_wait_seconds(outcome) / outcome.steps_run, 4) if outcome.steps_run else None,
    }
    return StageResult(report, facts)


def input_wait_seconds(outcome: LoopOutcome) -> float:
    """Seconds the training thread waited for its steps' input: what the prefetch thread had not finished in time, or
    without prefetch the whole preparation (sampling and encoding on the training thread)."""
    inline = 0.0 if outcome.prefetched else sum(outcome.prepare_seconds.values())
    return outcome.parts.get("input_wait", 0.0) + inline


def traffic_facts(group: Collective, micro_batches: int, steps_run: int) -> dict[str, Fact]:
    """How the gradient was reduced and the payload bytes rank 0 sent and received through collectives per step (setup
    and checkpoint agreement included, averaged over the steps run)."""
    how = "local" if group.size == 1 else "tree" if tree_fits(micro_batches, group.size) else "gather"
    per = max(steps_run, 1)
    return {
        "gradient_reduction": how,
        "collective_bytes_sent_per_step": round(group.traffic.sent / per),
        "collective_bytes_received_per_step": round(group.traffic.received / per),
    }


def run_training(params: TrainStageParams | Params, layout: Layout, **options: object) -> TrainingReport:
    """Programmatic form of the stage (seed API name): the report also written to reports/train.json."""
    document = run(params, layout, **options).document  # type: ignore[arg-type]
    if not isinstance(document, TrainingReport):
        raise TrainingError("run_training returns rank 0's report; call `run` on the other ranks of a multi-process job")
    return document


def summary(report: TrainingReport) -> list[str]:
    """What the CLI prints after the stage."""
    ratio = f"{report.heldout_to_baseline:.3f}" if report.heldout_to_baseline is not None else "n/a"
    return [
        f"train: {report.status}: {report.message}",
        f"train: steps {report.steps_completed}/{report.steps_requested}, final loss {report.final_train_loss}, "
        f"held-out {report.final_heldout_loss} vs identity baseline {report.identity_baseline_heldout_loss:.6f} (ratio {ratio}), "
        f"collapse alerts {report.collapse.alert_count}",
    ]
