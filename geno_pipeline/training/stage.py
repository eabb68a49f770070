"""The `train` stage: setup -> (resume) -> train loop with held-out collapse checks -> save -> reports.

Every declared output is deterministic: no wall-clock values in logs, checkpoints or reports.
Durations and throughput go to reports/runtime/train.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from geno_pipeline import __version__
from geno_pipeline.checksums import sha256_bytes, sha256_file
from geno_pipeline.config import CollapseParams, Params, RuntimeParams, TrainParams, TrainStageParams
from geno_pipeline.data.dataset import Dataset, load_dataset
from geno_pipeline.data.edits import MAX_EDIT_BASES
from geno_pipeline.environment import EnvironmentFingerprint, build_fingerprint
from geno_pipeline.errors import TrainingCheckpointError, TrainingError
from geno_pipeline.jsonio import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_text,
    canonical_json,
    jsonl_line,
    read_json,
    validate_document,
    write_json,
)
from geno_pipeline.runtime_report import utc_now, write_runtime_report
from geno_pipeline.source import source_digest
from geno_pipeline.tensorfile import serialize_tensors
from geno_pipeline.training.checkpoint import (
    Bindings,
    CheckpointState,
    LogRecord,
    SamplerState,
    group_states,
    list_checkpoints,
    load_checkpoint,
    optimizer_tensors,
    prune_checkpoints,
    remove_stale_staging,
    restore_optimizer,
    save_checkpoint,
)
from geno_pipeline.training.collapse import CollapseThresholds, compute_collapse_metrics, detect_collapse
from geno_pipeline.training.determinism import TrainerSeeds, configure_torch_reproducibility
from geno_pipeline.training.model import WorldModel, build_world_model
from geno_pipeline.training.report import (
    ArtifactIdentity,
    CollapseAlertRecord,
    CollapseLine,
    CollapseMetricsRecord,
    CollapseSummary,
    MetricsLine,
    TrainingReport,
    TrainingStatus,
    TrainMetrics,
)
from geno_pipeline.training.sampling import edit_type_weights_from_mapping, rollout_mix_from_mapping
from geno_pipeline.training.trainer import (
    TorchTrainer,
    TorchTrainerBatch,
    build_adamw_optimizer,
    gaussian_kl,
    masked_prediction_loss,
)
from geno_pipeline.training.tuples import TupleBatch, TupleSampler, draw_tuples

__all__ = ["ModelFactory", "TrainPaths", "resolve_device", "run_train_cli", "run_training", "train_params_sha256"]

ModelFactory = Callable[[TrainParams, int, TrainerSeeds], WorldModel]
LOGS = ("metrics.jsonl", "collapse.jsonl", "train.log")
EXIT_STOPPED = 4


@dataclass(frozen=True)
class TrainPaths:
    """Where the train stage reads and writes."""

    root: Path
    dataset_dir: Path
    out_dir: Path  # artifacts/train
    reports_dir: Path  # reports

    @classmethod
    def for_root(cls, root: Path) -> TrainPaths:
        root = Path(root)
        return cls(
            root=root, dataset_dir=root / "artifacts" / "dataset", out_dir=root / "artifacts" / "train", reports_dir=root / "reports"
        )

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


def train_params_sha256(runtime: RuntimeParams, train: TrainParams, collapse: CollapseParams) -> str:
    """Hash of exactly the params the train stage reads."""
    return sha256_bytes(canonical_json({"runtime": runtime, "train": train, "collapse": collapse}).encode())


def resolve_device(requested: str) -> str:
    """`auto` -> `cuda:0` when torch can use CUDA, else `cpu`; explicit values pass through (checked)."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise TrainingError(
                f"runtime.device is {requested} but torch cannot use that CUDA device; "
                "fix: run preflight to see why, or set runtime.device: auto or cpu"
            )
        return f"cuda:{index}"
    return "cpu"


def device_kind(device: str) -> str:
    """Fingerprint device kind for a resolved torch device."""
    if not device.startswith("cuda"):
        return "cpu"
    props = torch.cuda.get_device_properties(torch.device(device))
    return f"cuda:{props.name}:sm_{props.major}{props.minor}"


# ---------------------------------------------------------------- held-out evaluation


@dataclass(frozen=True)
class HeldOut:
    """The fixed held-out batch, encoded once."""

    state: torch.Tensor
    target: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    last_index: torch.Tensor  # [N] index of each example's last real rollout step
    identity_loss: float


def _encode(model: WorldModel, batch: TupleBatch, device: str) -> TorchTrainerBatch:
    b, k, length = batch.targets.shape
    sources = torch.from_numpy(batch.sources).to(device)
    targets = torch.from_numpy(batch.targets.reshape(b * k, length)).to(device)
    return TorchTrainerBatch(
        state=model.encoder.encode(sources),
        target=model.encoder.encode(targets).reshape(b, k, -1),
        actions=torch.from_numpy(batch.actions).to(device),
        action_mask=torch.from_numpy(batch.mask).to(device),
        rel_edits=batch.rel_edits,
        window_ids=batch.window_ids,
    )


def _held_out(
    model: WorldModel, dataset: Dataset, train: TrainParams, collapse: CollapseParams, seeds: TrainerSeeds, device: str
) -> HeldOut:
    rng = np.random.default_rng(seeds.validation)
    raw = draw_tuples(
        rng,
        dataset.valid,
        collapse.valid_batch_size,
        window_length=dataset.manifest.counts.window_length,
        weights=edit_type_weights_from_mapping(train.edit_type_weights),
        mix=rollout_mix_from_mapping(train.rollout_step_mix),
        split="valid",
    )
    enc = _encode(model, raw, device)
    identity = masked_prediction_loss(enc.state.unsqueeze(1).expand_as(enc.target), enc.target, enc.action_mask)
    last = torch.from_numpy(raw.rollout_steps - 1).to(device)
    return HeldOut(enc.state, enc.target, enc.actions, enc.action_mask, last, float(identity))


@torch.no_grad()
def _evaluate(model: WorldModel, held: HeldOut) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    """(held-out loss, final-step predictions [N, D], their targets, held-out kl_reg)."""
    model.eval()
    pred = model.rollout(held.state, held.actions)
    loss = float(masked_prediction_loss(pred, held.target, held.mask))
    rows = torch.arange(pred.shape[0], device=pred.device)
    return loss, pred[rows, held.last_index], held.target[rows, held.last_index], float(gaussian_kl(pred, held.mask))


# ---------------------------------------------------------------- logs


class RunLogs:
    """Append-only deterministic logs; truncated back to a checkpoint's prefix on resume."""

    def __init__(self, out_dir: Path) -> None:
        self.paths = {name: out_dir / name for name in LOGS}

    def reset(self) -> None:
        for path in self.paths.values():
            path.write_bytes(b"")

    def record(self) -> dict[str, LogRecord]:
        out = {}
        for name, path in self.paths.items():
            data = path.read_bytes()
            out[name] = LogRecord(bytes=len(data), sha256=sha256_bytes(data))
        return out

    def truncate_to(self, records: dict[str, LogRecord]) -> None:
        for name, path in self.paths.items():
            want = records.get(name)
            if want is None:
                raise TrainingCheckpointError(f"checkpoint has no record of {name}")
            data = path.read_bytes() if path.is_file() else b""
            if len(data) < want.bytes or sha256_bytes(data[: want.bytes]) != want.sha256:
                raise TrainingCheckpointError(
                    f"{path}: does not start with the {want.bytes} bytes the checkpoint recorded (the metric history differs); "
                    "fix: train from scratch (without --resume)"
                )
            atomic_write_bytes(path, data[: want.bytes])

    def metrics(self, line: MetricsLine) -> None:
        # validated like every JSON we write, but not fsynced per step (checkpoints fsync)
        document = line.model_dump(mode="json")
        validate_document(document, "metrics_line", source=str(self.paths["metrics.jsonl"]))
        with open(self.paths["metrics.jsonl"], "a", encoding="utf-8") as handle:
            handle.write(jsonl_line(document))

    def collapse(self, line: CollapseLine) -> None:
        append_jsonl(self.paths["collapse.jsonl"], [line], schema="collapse_line")

    def log(self, text: str) -> None:
        with open(self.paths["train.log"], "a", encoding="utf-8") as handle:
            handle.write(text.rstrip("\n") + "\n")


# ---------------------------------------------------------------- progress


class Progress:
    """A live line on a terminal (steps, loss, it/s, ETA); periodic plain lines otherwise."""

    def __init__(self, total: int, start: int, *, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - step) / rate if rate > 0 else 0.0
        text = f"train {step}/{self.total} loss {loss:.4f} {rate:.1f} it/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        if self.tty:
            self.stream.write("\r" + text + " " * 4)
            if step == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- the run


@dataclass
class CollapseTracker:
    """Collapse lines seen so far (rebuilt from collapse.jsonl on resume)."""

    baseline: float | None = None
    lines: list[CollapseLine] = field(default_factory=list)

    def summary(self) -> CollapseSummary:
        later = [ln for ln in self.lines if ln.step > 0]
        ratios_var = [r for ln in later if (r := ln.pred_var_ratio()) is not None]
        ratios_pair = [r for ln in later if (r := ln.pairwise_ratio()) is not None]
        return CollapseSummary(
            final_check=self.lines[-1] if self.lines else None,
            alert_count=sum(len(ln.alerts) for ln in self.lines),
            worst_pred_var_ratio=min(ratios_var) if ratios_var else None,
            worst_pairwise_ratio=min(ratios_pair) if ratios_pair else None,
            worst_kl_reg=max((ln.metrics.kl_reg for ln in later), default=None),
        )


def _observe(model: WorldModel, held: HeldOut, step: int, tracker: CollapseTracker, collapse: CollapseParams) -> CollapseLine:
    loss, pred, target, kl = _evaluate(model, held)
    metrics = compute_collapse_metrics(pred, target, kl_reg=kl)
    if tracker.baseline is None:
        tracker.baseline = metrics.pairwise_pred_dist_mean
    alerts = (
        ()
        if step == 0
        else detect_collapse(
            metrics,
            thresholds=CollapseThresholds(collapse.pred_var_to_target_var, collapse.pairwise_to_initial, collapse.kl_reg_max),
            initial_pairwise_pred_dist_mean=tracker.baseline,
            step=step,
        )
    )
    line = CollapseLine(
        step=step,
        heldout_loss=loss,
        baseline_pairwise_pred_dist_mean=tracker.baseline,
        metrics=CollapseMetricsRecord(**vars(metrics)),
        alerts=[CollapseAlertRecord(criterion=a.criterion, value=a.value, threshold=a.threshold, step=step) for a in alerts],
    )
    tracker.lines.append(line)
    return line


def _plots(paths: TrainPaths, logs: RunLogs) -> None:
    plots = paths.reports_dir / "plots"
    metrics = [json.loads(x) for x in logs.paths["metrics.jsonl"].read_text().splitlines() if x.strip()]
    collapse = [json.loads(x) for x in logs.paths["collapse.jsonl"].read_text().splitlines() if x.strip()]
    atomic_write_text(
        plots / "loss.csv",
        "step,loss,pred_loss,kl_reg\n" + "".join(f"{m['step']},{m['loss']!r},{m['pred_loss']!r},{m['kl_reg']!r}\n" for m in metrics),
    )
    atomic_write_text(plots / "lr.csv", "step,lr_multiplier\n" + "".join(f"{m['step']},{m['lr_multiplier']!r}\n" for m in metrics))
    keys = ("pred_var_per_dim", "target_var_per_dim", "pairwise_pred_dist_mean", "effective_rank", "pred_target_corr", "pred_cos_mean")
    atomic_write_text(
        plots / "collapse.csv",
        "step,heldout_loss,"
        + ",".join(keys)
        + "\n"
        + "".join(f"{c['step']},{c['heldout_loss']!r}," + ",".join(repr(c["metrics"][k]) for k in keys) + "\n" for c in collapse),
    )


def _artifact(root: Path, path: Path) -> ArtifactIdentity:
    return ArtifactIdentity(path=path.relative_to(root).as_posix(), sha256=sha256_file(path), bytes=path.stat().st_size)


def run_training(
    params: TrainStageParams | Params,
    paths: TrainPaths,
    *,
    resume: str | Path | None = None,
    stop_after_step: int | None = None,
    progress: bool = False,
    expected_fingerprint: EnvironmentFingerprint | None = None,
    model_factory: ModelFactory | None = None,
) -> TrainingReport:
    """Train (or resume) to `train.steps`; returns the report also written to reports/train.json."""
    if isinstance(params, Params):
        params = TrainStageParams.from_params(params)
    runtime, train, collapse = params.runtime, params.train, params.collapse
    t0, started = time.perf_counter(), utc_now()
    # 1) setup: dataset, checks that span sections, device, determinism, fingerprint
    dataset = load_dataset(paths.dataset_dir)
    counts = dataset.manifest.counts
    k_max = max(train.rollout_step_mix)
    if counts.window_length % train.model.segments:
        raise TrainingError(
            f"train.model.segments = {train.model.segments} must divide data.window_length = {counts.window_length}; "
            "fix: choose segments that divide the window length"
        )
    if counts.flank_length < MAX_EDIT_BASES * k_max:
        raise TrainingError(
            f"data.flank_length = {counts.flank_length} is too short for rollouts of K = {k_max} "
            f"(each edit may delete up to {MAX_EDIT_BASES} bases); fix: set data.flank_length >= {MAX_EDIT_BASES * k_max}"
        )
    if stop_after_step is not None and not 1 <= stop_after_step <= train.steps:
        raise TrainingError(f"--stop-after-step {stop_after_step} is outside 1..train.steps ({train.steps})")
    device = resolve_device(runtime.device)
    seeds = TrainerSeeds.from_base(train.seed)
    determinism = configure_torch_reproducibility(
        train.seed, deterministic=runtime.deterministic, device=device, cpu_threads=runtime.cpu_threads
    )
    fingerprint = build_fingerprint(runtime, device_kind=device_kind(device))
    if expected_fingerprint is not None and expected_fingerprint != fingerprint:
        have, want = fingerprint.model_dump(), expected_fingerprint.model_dump()
        diffs = ", ".join(f"{k}: preflight {want[k]!r} vs now {have[k]!r}" for k in sorted(have) if have[k] != want[k])
        raise TrainingError(f"the environment differs from preflight's fingerprint ({diffs}); fix: rerun `geno-pipeline preflight`")
    params_sha = train_params_sha256(runtime, train, collapse)
    bindings = Bindings(
        params_sha256=params_sha,
        dataset_manifest_sha256=dataset.manifest_sha256,
        package_version=__version__,
        environment_sha256=sha256_bytes(canonical_json(fingerprint).encode()),
    )
    digest = source_digest()
    run_id = "run-" + sha256_bytes(f"{params_sha}:{dataset.manifest_sha256}:{digest}".encode())[:16]

    factory = model_factory or (
        lambda tp, length, s: build_world_model(window_length=length, params=tp.model, encoder_seed=s.encoder, init_seed=s.model_init)
    )
    model = factory(train, counts.window_length, seeds).to(device)
    optimizer = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    trainer = TorchTrainer(
        predictor=model.predictor, action_encoder=model.action_encoder, optimizer=optimizer, config=train, total_steps=train.steps
    )
    sampler = TupleSampler(
        seeds.sampler,
        window_length=counts.window_length,
        weights=edit_type_weights_from_mapping(train.edit_type_weights),
        mix=rollout_mix_from_mapping(train.rollout_step_mix),
    )
    held = _held_out(model, dataset, train, collapse, seeds, device)
    names = {id(p): n for g in optimizer.param_groups for n, p in zip(g["names"], g["params"], strict=True)}
    params_by_name = {n: p for g in optimizer.param_groups for n, p in zip(g["names"], g["params"], strict=True)}
    logs = RunLogs(paths.out_dir)
    tracker = CollapseTracker()

    # 2) fresh start or resume
    start, last_loss = 0, None
    checkpoint_path: Path | None = None
    if resume == "auto":
        found = list_checkpoints(paths.checkpoints)
        checkpoint_path = found[-1][1] if found else None
    elif resume is not None:
        checkpoint_path = Path(resume)
    if checkpoint_path is not None:
        loaded = load_checkpoint(checkpoint_path, expected=bindings, steps_total=train.steps)
        model.load_state_dict(loaded.model)
        restore_optimizer(optimizer, loaded.optimizer, loaded.state.optimizer_groups, params_by_name)
        sampler.set_state(loaded.state.sampler.model_dump())
        logs.truncate_to(loaded.state.logs)
        remove_stale_staging(paths.checkpoints)
        for extra in paths.out_dir.glob("model.safetensors"):
            extra.unlink()
        start, last_loss = loaded.state.step, loaded.state.last_train_loss
        tracker.baseline = loaded.state.monitor_baseline_pairwise
        tracker.lines = [
            CollapseLine.model_validate(json.loads(x)) for x in logs.paths["collapse.jsonl"].read_text().splitlines() if x.strip()
        ]
        # not in train.log: a resumed run's logs must equal the straight run's
        print(f"train: resumed from {checkpoint_path} at step {start}", file=sys.stderr)
    else:
        if paths.out_dir.exists():
            shutil.rmtree(paths.out_dir)
        paths.checkpoints.mkdir(parents=True)
        logs.reset()
        logs.log(f"run {run_id}: {train.steps} steps, batch {train.batch_size}, device {device}, dataset {dataset.manifest.dataset_id}")
        line = _observe(model, held, 0, tracker, collapse)
        logs.collapse(line)
        logs.log(
            f"step 0 held-out loss {line.heldout_loss:.6f} (identity baseline {held.identity_loss:.6f}), "
            f"pairwise baseline {tracker.baseline:.6f}"
        )

    def checkpoint(step: int, *, scheduled: bool) -> None:
        if scheduled:  # logged before the log digests are taken, so a resume from here keeps the line
            logs.log(f"step {step} checkpoint {step:06d}")
        else:  # an extra checkpoint (stop or halt) leaves the deterministic logs as the straight run has them
            print(f"train: checkpoint at step {step}", file=sys.stderr)
        state = CheckpointState(
            step=step,
            steps_total=train.steps,
            run_id=run_id,
            sampler=SamplerState.model_validate(sampler.state()),
            monitor_baseline_pairwise=tracker.baseline,
            last_train_loss=last_loss,
            logs=logs.record(),
            tensors={},
            optimizer_groups=group_states(optimizer),
            bindings=bindings,
        )
        save_checkpoint(
            paths.checkpoints, state=state, model_tensors=dict(model.state_dict()), optimizer_tensors=optimizer_tensors(optimizer, names)
        )
        prune_checkpoints(paths.checkpoints, keep=train.keep_checkpoints, every=train.checkpoint_every_steps, steps_total=train.steps)

    # 3) train loop
    status: TrainingStatus = "completed"
    message = ""
    bar = Progress(train.steps, start, enabled=progress)
    step_time = 0.0
    steps_run = 0
    step = start
    for step in range(start + 1, train.steps + 1):
        batch = _encode(model, sampler.draw(dataset.train, train.batch_size), device)
        ts = time.perf_counter()
        result = trainer.train_step(batch, step=step)
        step_time += time.perf_counter() - ts
        steps_run += 1
        if not result.finite:
            status = "failed_nonfinite"
            message = (
                f"non-finite {'loss' if not np.isfinite(result.loss) else 'gradient norm'} at step {step} "
                f"(loss={result.loss}, grad_norm={result.grad_norm}); weights of step {step - 1} kept; "
                "fix: lower train.lr or raise train.grad_clip_norm, then resume from the last checkpoint or start over"
            )
            logs.log(f"step {step} FAILED: {message}")
            step -= 1
            break
        last_loss = result.loss
        logs.metrics(
            MetricsLine(
                step=step,
                loss=result.loss,
                pred_loss=result.pred_loss,
                kl_reg=result.kl_reg,
                lr_multiplier=result.lr_multiplier,
                grad_norm=result.grad_norm,
            )
        )
        bar.update(step, result.loss)
        halt = False
        if step % collapse.log_every_steps == 0 or step == train.steps:
            line = _observe(model, held, step, tracker, collapse)
            logs.collapse(line)
            logs.log(
                f"step {step} loss {result.loss:.6f} held-out {line.heldout_loss:.6f} lr_mult {result.lr_multiplier:.6f} "
                f"pred_var {line.metrics.pred_var_per_dim:.6f} pairwise {line.metrics.pairwise_pred_dist_mean:.6f}"
            )
            for alert in line.alerts:
                logs.log(
                    f"step {step} COLLAPSE ALERT {alert.criterion} = {alert.value:.6g} below threshold {alert.threshold:.6g}"
                    if alert.criterion != "kl_reg"
                    else f"step {step} COLLAPSE ALERT kl_reg = {alert.value:.6g} above threshold {alert.threshold:.6g}"
                )
            halt = bool(line.alerts) and collapse.on_alert == "halt"
        scheduled = step % train.checkpoint_every_steps == 0 or step == train.steps
        if scheduled or halt or step == stop_after_step:
            checkpoint(step, scheduled=scheduled)
        if halt:
            status = "collapsed"
            message = (
                f"collapse alert at step {step} ({', '.join(a.criterion for a in tracker.lines[-1].alerts)}) with "
                "collapse.on_alert: halt; checkpoint kept; see artifacts/train/collapse.jsonl"
            )
            break
        if step == stop_after_step and step < train.steps:
            status = "stopped"
            message = f"stopped after step {step} as asked; resume with `geno-pipeline train --resume auto`"
            break
    bar.close()
    if start == train.steps:
        step = start
    completed = step

    # 4) save: final weights (only for a completed run) and reports
    final_model = paths.out_dir / "model.safetensors"
    if status == "completed":
        message = f"trained {train.steps} steps"
        atomic_write_bytes(
            final_model,
            serialize_tensors(
                model.state_dict(),
                {"run_id": run_id, "step": str(completed), "params_sha256": params_sha, "seed": str(train.seed), "source_digest": digest},
            ),
        )
        logs.log(f"done: {message}")
    _plots(paths, logs)
    summary = tracker.summary()
    heldout = tracker.lines[-1].heldout_loss if tracker.lines and tracker.lines[-1].step > 0 else None
    artifacts = [
        _artifact(paths.root, p)
        for p in ([final_model] if final_model.is_file() else [])
        + [logs.paths[n] for n in LOGS]
        + sorted(paths.checkpoints.rglob("*.safetensors"))
        + sorted(paths.checkpoints.rglob("state.json"))
    ]
    report = TrainingReport(
        run_id=run_id,
        status=status,
        message=message,
        steps_requested=train.steps,
        steps_completed=completed,
        resumed_from_step=start if checkpoint_path is not None else 0,
        device=device,
        final_train_loss=last_loss,
        final_heldout_loss=heldout,
        identity_baseline_heldout_loss=held.identity_loss,
        heldout_to_baseline=heldout / held.identity_loss if heldout is not None and held.identity_loss > 0 else None,
        params_sha256=params_sha,
        dataset_id=dataset.manifest.dataset_id,
        dataset_manifest_sha256=dataset.manifest_sha256,
        source_digest=digest,
        package_version=__version__,
        seeds=seeds,
        determinism=determinism,
        environment=fingerprint,
        collapse=summary,
        artifacts=artifacts,
    )
    write_json(paths.reports_dir / "train.json", report, schema="train_report")
    final = summary.final_check
    write_json(
        paths.reports_dir / "metrics.json",
        TrainMetrics(
            status=status,
            steps_completed=completed,
            train_loss=last_loss,
            heldout_loss=heldout,
            identity_baseline_loss=held.identity_loss,
            heldout_to_baseline=report.heldout_to_baseline,
            collapse_alerts=summary.alert_count,
            pred_var_ratio=final.pred_var_ratio() if final is not None else None,
            pairwise_ratio=final.pairwise_ratio() if final is not None else None,
            effective_rank=final.metrics.effective_rank if final is not None else None,
        ),
        schema="train_metrics",
    )
    wall = time.perf_counter() - t0
    write_runtime_report(
        paths.root,
        "train",
        started_at=started,
        duration_s=wall,
        facts={
            "steps_run": steps_run,
            "resumed_from_step": start,
            "status": status,
            "device": device,
            "train_step_seconds": round(step_time, 4),
            "steps_per_second": round(steps_run / step_time, 3) if step_time > 0 else None,
        },
    )
    return report


def _preflight_fingerprint(root: Path) -> EnvironmentFingerprint:
    path = Path(root) / "artifacts" / "preflight" / "environment.json"
    if not path.is_file():
        raise TrainingError(f"{path}: missing; fix: run `geno-pipeline preflight` first (dvc repro runs it before train)")
    return EnvironmentFingerprint.model_validate(read_json(path, schema="environment"))


def run_train_cli(params: TrainStageParams, *, root: Path, resume: str | None, stop_after_step: int | None, progress: bool) -> int:
    """CLI wrapper: checks the preflight fingerprint, trains, prints the outcome; returns the exit code."""
    expected = _preflight_fingerprint(root)
    report = run_training(
        params, TrainPaths.for_root(root), resume=resume, stop_after_step=stop_after_step, progress=progress, expected_fingerprint=expected
    )
    ratio = f"{report.heldout_to_baseline:.3f}" if report.heldout_to_baseline is not None else "n/a"
    print(f"train: {report.status}: {report.message}")
    print(
        f"train: steps {report.steps_completed}/{report.steps_requested}, final loss {report.final_train_loss}, "
        f"held-out {report.final_heldout_loss} vs identity baseline {report.identity_baseline_heldout_loss:.6f} (ratio {ratio}), "
        f"collapse alerts {report.collapse.alert_count}"
    )
    if report.status in ("failed_nonfinite", "collapsed"):
        print(f"train: error: {report.message}", file=sys.stderr)
        return EXIT_STOPPED
    return 0
