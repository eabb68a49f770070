"""One training run's state (`TrainingRun`: inputs, model, optimizer, sampler, logs, monitor), how its loop ended
(`LoopOutcome`), and the checkpoint jobs it hands its background writer."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geno_pipeline.canonical import canonical_json
from geno_pipeline.config import TrainParams, TrainStageParams
from geno_pipeline.data.dataset import Dataset
from geno_pipeline.distributed.group import Collective
from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.layout import Layout
from geno_pipeline.tensorfile import TensorBytes, tensor_bytes
from geno_pipeline.training.adamw import AdamW
from geno_pipeline.training.background import Writer, start_writer
from geno_pipeline.training.checkpoint import (
    Bindings,
    CheckpointState,
    SamplerState,
    group_states,
    optimizer_tensors,
    prune_checkpoints,
    save_checkpoint,
)
from geno_pipeline.training.collapse import CollapseMonitor
from geno_pipeline.training.determinism import TorchDeterminismReport, TrainerSeeds
from geno_pipeline.training.documents import (
    CollapseAlertRecord,
    CollapseLine,
    TrainingStatus,
)
from geno_pipeline.training.heldout import HeldOut, evaluate
from geno_pipeline.training.logs import RunLogs
from geno_pipeline.training.model import WorldModel
from geno_pipeline.training.trainer import TorchTrainer
from geno_pipeline.training.tuples import TupleSampler

__all__ = ["PARTS", "CheckpointJob", "LoopOutcome", "TrainingRun", "snapshot"]


@dataclass(frozen=True)
class LoopOutcome:
    """How the loop ended."""

    status: TrainingStatus
    message: str
    last_step: int  # last step whose update the weights hold
    steps_run: int  # optimizer steps this process ran
    step_seconds: float  # time inside train_step
    parts: dict[str, float] = field(default_factory=dict)  # seconds per part of the loop (PARTS)
    prefetched: bool = False  # a worker thread prepared the steps' input ahead (`training.prefetch`)
    prepare_seconds: dict[str, float] = field(default_factory=dict)  # sampling and encoding, on whichever thread ran them


PARTS = ("sampling", "encoding", "input_wait", "step", "logs", "evaluation", "checkpoint")
"""Where a training step's time goes: tuple drawing, the frozen encoder, the optimizer step, log lines and progress,
the held-out evaluation, and checkpoint writes (volatile facts in reports/runtime/train.json and the bench). Time on the
training thread: with prefetch, the sampling and encoding run on the prefetch thread and the training thread's part
is `input_wait`, the time it waited for them."""


@dataclass
class TrainingRun:
    """Everything one training run holds: inputs, model, optimizer, sampler, held-out batch, logs and monitor."""

    params: TrainStageParams
    layout: Layout
    dataset: Dataset
    device: str
    seeds: TrainerSeeds
    determinism: TorchDeterminismReport
    fingerprint: EnvironmentFingerprint
    bindings: Bindings
    run_id: str
    model: WorldModel
    optimizer: AdamW
    trainer: TorchTrainer
    sampler: TupleSampler
    held: HeldOut | None  # rank 0 only: evaluation runs once, on the full held-out batch
    logs: RunLogs
    monitor: CollapseMonitor
    group: Collective
    shards: list[slice]  # this rank's micro-batches: rows of the global batch
    source_states: torch.Tensor | None = None  # every training window encoded once (see `caches_source_states`)
    source_seconds: float = 0.0  # time to encode them, counted in the loop's encoding part
    lines: list[CollapseLine] = field(default_factory=list)
    start: int = 0
    resumed_from: Path | None = None
    last_loss: float | None = None
    saver: Writer[CheckpointJob] | None = None  # writes checkpoints (rank 0), started at the first one

    @property
    def train(self) -> TrainParams:
        return self.params.train

    @property
    def writer(self) -> bool:
        """Rank 0 writes every output; the other ranks write nothing."""
        return self.group.rank == 0

    def parameters_by_name(self) -> dict[str, torch.nn.Parameter]:
        """The optimizer's parameters by the names its groups list (how checkpoints name their state)."""
        return {n: p for g in self.optimizer.param_groups for n, p in zip(g["names"], g["params"], strict=True)}

    @functools.cached_property
    def params_document(self) -> dict[str, object]:
        """The train stage params as checkpoints store them (canonical JSON, parsed back); made once per run."""
        return dict(json.loads(canonical_json(self.params)))

    def observe(self, step: int) -> CollapseLine:
        """Evaluate the held-out batch, feed the collapse monitor and append the collapse line (rank 0)."""
        assert self.held is not None, "only rank 0 evaluates"
        ev = evaluate(self.model, self.held)
        check = self.monitor.observe(ev.prediction, ev.target, kl_reg=ev.kl_reg, step=step, force=True)
        assert check is not None and self.monitor.initial_pairwise_pred_dist_mean is not None
        line = CollapseLine(
            step=step,
            heldout_loss=ev.loss,
            baseline_pairwise_pred_dist_mean=self.monitor.initial_pairwise_pred_dist_mean,
            metrics=check.metrics,
            alerts=[CollapseAlertRecord(criterion=a.criterion, value=a.value, threshold=a.threshold, step=step) for a in check.alerts],
        )
        self.lines.append(line)
        self.logs.collapse(line)
        return line

    def start_saver(self) -> None:
        """Start the checkpoint writer now, if it is not running (else the first checkpoint starts it)."""
        if self.saver is None:
            self.saver = start_writer(self.write_checkpoint, "checkpoint")

    def checkpoint(self, step: int, *, scheduled: bool, sampler_state: dict[str, Any] | None = None) -> None:
        """Checkpoint `step`: what it holds is copied now, and written, synced and renamed into place by the background
        writer while training goes on (older ones pruned after it); a scheduled one is logged, an extra one (stop or
        halt) leaves the logs as the straight run has them."""
        if scheduled:  # logged before the log lengths are taken, so a resume from here keeps the line
            self.logs.log(f"step {step} checkpoint {step:06d}")
        else:
            print(f"train: checkpoint at step {step}", file=sys.stderr)
        names = {id(p): n for n, p in self.parameters_by_name().items()}
        state = CheckpointState(
            step=step,
            steps_total=self.train.steps,
            run_id=self.run_id,
            sampler=SamplerState.model_validate(self.sampler.state() if sampler_state is None else sampler_state),
            monitor_baseline_pairwise=self.monitor.initial_pairwise_pred_dist_mean,
            last_train_loss=self.last_loss,
            logs={},  # recorded by the writer, once it has synced the logs
            tensors={},
            optimizer_groups=group_states(self.optimizer),
            bindings=self.bindings,
            params=self.params_document,
        )
        job = CheckpointJob(
            state, self.logs.lengths(), snapshot(self.model.state_dict()), snapshot(optimizer_tensors(self.optimizer, names))
        )
        self.start_saver()
        assert self.saver is not None
        self.saver.submit(job)

    def write_checkpoint(self, job: CheckpointJob) -> None:
        """The writer's job (in the writer process or thread): sync the logs and record them, write the checkpoint
        durably, prune older ones. No torch call: the tensors come as `TensorBytes`."""
        recorded = job.state.model_copy(update={"logs": self.logs.record(job.lengths)})
        save_checkpoint(self.layout.checkpoints, state=recorded, model_tensors=job.model, optimizer_tensors=job.optimizer)
        t = self.train
        prune_checkpoints(self.layout.checkpoints, keep=t.keep_checkpoints, every=t.checkpoint_every_steps, steps_total=t.steps)


@dataclass(frozen=True)
class CheckpointJob:
    """What the writer is handed for one checkpoint: everything copied out at the step."""

    state: CheckpointState  # logs and tensors not yet filled in
    lengths: dict[str, int]  # each log's length at the step (`RunLogs.lengths`)
    model: dict[str, TensorBytes]
    optimizer: dict[str, TensorBytes]


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, TensorBytes]:
    """A copy in host memory of each tensor as it is now (training goes on changing the originals in place)."""
    return {name: tensor_bytes(t) for name, t in tensors.items()}
