"""The training loop: steps `start + 1 .. train.steps` (update, log, observe, checkpoint), timed by part."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch

from geno_pipeline.errors import DistributedError
from geno_pipeline.training.documents import (
    CollapseLine,
    MetricsLine,
)
from geno_pipeline.training.heldout import encode_batch
from geno_pipeline.training.prefetch import InlineInput, PrefetchInput, Prepared, StepInput
from geno_pipeline.training.progress import Progress
from geno_pipeline.training.run import PARTS, LoopOutcome, TrainingRun
from geno_pipeline.training.trainer import TorchTrainerStepResult
from geno_pipeline.training.tuples import take_rows
from geno_pipeline.workspace import check_terminated

__all__ = ["Laps", "prepare_step", "ranks_agree", "train_loop"]


class Laps:
    """Seconds per part of the loop (`PARTS`): `lap(part)` adds the time since the previous lap to that part."""

    def __init__(self, parts: dict[str, float], clock: Callable[[], float] = time.perf_counter) -> None:
        self.parts, self.clock = parts, clock
        self.last = clock()

    def lap(self, part: str) -> None:
        now = self.clock()
        self.parts[part] += now - self.last
        self.last = now


def _nonfinite_message(step: int, result: TorchTrainerStepResult) -> str:
    what = "loss" if not np.isfinite(result.loss) else "gradient norm"
    return (
        f"non-finite {what} at step {step} (loss={result.loss}, grad_norm={result.grad_norm}); weights of step {step - 1} kept; "
        "fix: lower train.lr or raise train.grad_clip_norm, then resume from the last checkpoint or start over"
    )


def _log_observation(run: TrainingRun, step: int, result: TorchTrainerStepResult, line: CollapseLine) -> None:
    run.logs.log(
        f"step {step} loss {result.loss:.6f} held-out {line.heldout_loss:.6f} lr_mult {result.lr_multiplier:.6f} "
        f"pred_var {line.metrics.pred_var_per_dim:.6f} pairwise {line.metrics.pairwise_pred_dist_mean:.6f}"
    )
    for a in line.alerts:
        relation = "above" if a.criterion == "kl_reg" else "below"
        run.logs.log(f"step {step} COLLAPSE ALERT {a.criterion} = {a.value:.6g} {relation} threshold {a.threshold:.6g}")


def ranks_agree(run: TrainingRun, step: int) -> None:
    """Every rank holds the same weights (they apply the same summed gradient); checked before each checkpoint."""
    if run.group.size == 1:
        return
    data = b"".join(t.detach().cpu().contiguous().numpy().tobytes() for t in run.model.state_dict().values())
    digest = int.from_bytes(hashlib.sha256(data).digest()[:7], "big")
    digests = run.group.gather_rows(torch.tensor([[digest]], dtype=torch.int64)).flatten().tolist()
    if len(set(digests)) != 1:
        raise DistributedError(
            f"step {step}: the workers' weights differ ({', '.join(f'rank {r}: {d:014x}' for r, d in enumerate(digests))}); "
            "fix: this is a bug or a mixed environment (different torch builds or thread counts per worker); report it"
        )


def prepare_step(run: TrainingRun, step: int) -> Prepared:
    """Step `step`'s input: the sampler's next global batch, this rank's micro-batches of it encoded, and the sampler's
    state after the draw (the one definition, whichever thread runs it)."""
    t0 = time.perf_counter()
    batch = run.sampler.draw(run.dataset.train, run.train.batch_size)
    state = run.sampler.state()
    t1 = time.perf_counter()
    shards = [encode_batch(run.model, take_rows(batch, rows), run.device, source_states=run.source_states) for rows in run.shards]
    return Prepared(step, shards, int(batch.mask.sum()), state, t1 - t0, time.perf_counter() - t1)


def train_loop(run: TrainingRun, *, stop_after_step: int | None, progress: bool, prefetch: bool = False) -> LoopOutcome:
    """Steps `start + 1 .. train.steps`: update, log, observe, checkpoint; returns how the loop ended, once the last
    checkpoint is on disk.

    Every rank draws the same global batch and computes its own micro-batches of it; rank 0 alone logs, evaluates and
    writes checkpoints (in the background, `TrainingRun.checkpoint`), and tells the others when a collapse alert halts
    the run. With `prefetch` a worker thread prepares the next steps' batches meanwhile (`training.prefetch`); the
    checkpoint writer is started before it, so that its fork sees one thread. When the loop raises, the checkpoint being
    written is finished (or its staging directory removed) first."""
    parts = dict.fromkeys(PARTS, 0.0)
    parts["encoding"] = run.source_seconds
    last = run.train.steps if stop_after_step is None else min(stop_after_step, run.train.steps)
    source: StepInput = InlineInput(lambda step: prepare_step(run, step))
    try:
        if prefetch and run.start < last:
            if run.writer:
                run.start_saver()
            source = PrefetchInput(lambda step: prepare_step(run, step), run.start + 1, last)
            source.start()  # once `source` holds it: an interrupt while the thread starts still closes it
        outcome = _steps(run, parts, source, stop_after_step=stop_after_step, progress=progress)
    except BaseException:
        source.close()
        if run.saver is not None:
            run.saver.abandon()
        run.logs.close()
        raise
    source.close()
    prefetched = isinstance(source, PrefetchInput)
    if not prefetched:  # the training thread's wait was the preparation itself: counted by its own parts
        parts["input_wait"] -= source.sampling_seconds + source.encoding_seconds
        parts["sampling"] += source.sampling_seconds
        parts["encoding"] += source.encoding_seconds
    prepare = {"sampling": source.sampling_seconds, "encoding": source.encoding_seconds}
    outcome = dataclasses.replace(outcome, prefetched=prefetched, prepare_seconds=prepare)
    t0 = time.perf_counter()
    if run.saver is not None:
        run.saver.close()
    parts["checkpoint"] += time.perf_counter() - t0  # waiting for the last checkpoint is checkpoint time
    return outcome


def _steps(run: TrainingRun, parts: dict[str, float], source: StepInput, *, stop_after_step: int | None, progress: bool) -> LoopOutcome:
    train, collapse = run.train, run.params.collapse
    bar = Progress(train.steps, run.start, enabled=progress and run.writer)
    steps_run = 0
    outcome: LoopOutcome | None = None
    laps = Laps(parts)
    for step in range(run.start + 1, train.steps + 1):
        check_terminated()  # a SIGTERM whose exception was lost (it landed in an at-fork callback) stops here
        laps.lap("logs")  # the end of the previous step's bookkeeping (nothing, at the first)
        prepared = source.get(step)
        laps.lap("input_wait")
        result = run.trainer.train_step(prepared.shards, step=step, action_count=prepared.action_count)
        laps.lap("step")
        steps_run += 1
        if not result.finite:  # every rank holds the same summed gradient, so every rank stops here
            message = _nonfinite_message(step, result)
            if run.writer:
                run.logs.log(f"step {step} FAILED: {message}")
            outcome = LoopOutcome("failed_nonfinite", message, step - 1, steps_run, parts["step"], parts)
            break
        run.last_loss = result.loss
        if run.writer:
            run.logs.metrics(MetricsLine(step=step, loss=result.loss, pred_loss=result.pred_loss, kl_reg=result.kl_reg,
                                         lr_multiplier=result.lr_multiplier, grad_norm=result.grad_norm))  # fmt: skip
            bar.update(step, result.loss)
        laps.lap("logs")
        halt = False
        if run.monitor.should_log(step) or step == train.steps:
            if run.writer:
                line = run.observe(step)
                _log_observation(run, step, result, line)
                halt = bool(line.alerts) and collapse.on_alert == "halt"
            if collapse.on_alert == "halt":
                halt = bool(run.group.broadcast_int(int(halt)))
        laps.lap("evaluation")
        scheduled = step % train.checkpoint_every_steps == 0 or step == train.steps
        if scheduled or halt or step == stop_after_step:
            ranks_agree(run, step)
            if run.writer:
                run.checkpoint(step, scheduled=scheduled, sampler_state=prepared.sampler_state)
        laps.lap("checkpoint")
        if halt:
            criteria = ", ".join(a.criterion for a in run.lines[-1].alerts) if run.writer else "see rank 0"
            message = (
                f"collapse alert at step {step} ({criteria}) with collapse.on_alert: halt; checkpoint kept; "
                "see artifacts/train/collapse.jsonl"
            )
            outcome = LoopOutcome("collapsed", message, step, steps_run, parts["step"], parts)
            break
        if step == stop_after_step and step < train.steps:
            message = f"stopped after step {step} as asked; resume with `geno-pipeline train --resume auto`"
            outcome = LoopOutcome("stopped", message, step, steps_run, parts["step"], parts)
            break
    bar.close()
    return outcome or LoopOutcome("completed", f"trained {train.steps} steps", train.steps, steps_run, parts["step"], parts)
