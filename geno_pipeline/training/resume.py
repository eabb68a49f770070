"""Starting a training run: from scratch (`start_fresh`), or from a checkpoint every rank sees and agrees on
(`agreed_checkpoint`, `require_visible_everywhere`), verified against what this run expects (`expected_checkpoint`)
and restored (`resume_from`)."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

import torch

from geno_pipeline.distributed.group import Collective
from geno_pipeline.errors import DistributedError
from geno_pipeline.layout import Layout
from geno_pipeline.training.checkpoint import checkpoint_dir_name, group_states, list_checkpoints, restore_optimizer
from geno_pipeline.training.checkpoint_load import Expected, load_checkpoint, tensor_specs
from geno_pipeline.training.run import TrainingRun
from geno_pipeline.training.schedule import wsd_lr_multiplier

__all__ = ["agreed_checkpoint", "expected_checkpoint", "require_visible_everywhere", "resume_from", "start_fresh"]


def _checkpoint_to_resume(layout: Layout, resume: str | Path | None) -> Path | None:
    if resume == "auto":
        found = list_checkpoints(layout.checkpoints)
        if not found:
            print(f"train: --resume auto: no checkpoint in {layout.checkpoints}; starting from step 0", file=sys.stderr)
        return found[-1][1] if found else None
    return None if resume is None else Path(resume)


def expected_checkpoint(run: TrainingRun) -> Expected:
    """What a checkpoint must hold to resume `run`: its bindings, params, and every tensor's name, shape and dtype."""
    optimizer: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, param in run.parameters_by_name().items():
        spec = (tuple(param.shape), str(param.dtype).removeprefix("torch."))
        optimizer |= {f"{name}.exp_avg": spec, f"{name}.exp_avg_sq": spec, f"{name}.step": ((), "float32")}
    train = run.train
    return Expected(
        bindings=run.bindings,
        steps_total=train.steps,
        run_id=run.run_id,
        params=run.params_document,
        model=tensor_specs(dict(run.model.state_dict())),
        groups=[(g["group_name"], list(g["names"])) for g in run.optimizer.param_groups],
        optimizer=optimizer,
        hyper=group_states(run.optimizer),  # not stepped yet: lr = initial_lr = train.lr
        lr_multiplier=functools.partial(
            wsd_lr_multiplier, total_steps=train.steps, warmup_steps=train.warmup_steps, schedule=train.schedule
        ),
    )


def start_fresh(run: TrainingRun) -> None:
    """Empty artifacts/train, start the logs and observe the step-0 baseline."""
    layout, train = run.layout, run.train
    if layout.train_dir.exists():
        shutil.rmtree(layout.train_dir)
    layout.checkpoints.mkdir(parents=True)
    run.logs.reset()
    run.logs.log(
        f"run {run.run_id}: {train.steps} steps, batch {train.batch_size}, device {run.device}, dataset {run.dataset.manifest.dataset_id}"
    )
    line = run.observe(0)
    assert run.held is not None
    run.logs.log(
        f"step 0 held-out loss {line.heldout_loss:.6f} (identity baseline {run.held.identity_loss:.6f}), "
        f"pairwise baseline {line.baseline_pairwise_pred_dist_mean:.6f}"
    )


def agreed_checkpoint(run: TrainingRun, resume: str | Path | None) -> Path | None:
    """The checkpoint every rank resumes from; with `auto`, rank 0 lists the directory and tells the others the step."""
    if resume != "auto":
        return None if resume is None else Path(resume)
    chosen = _checkpoint_to_resume(run.layout, resume) if run.writer else None
    if run.group.size == 1:
        return chosen
    step = run.group.broadcast_int(-1 if chosen is None else int(chosen.name.removeprefix("step-")))
    return None if step < 0 else run.layout.checkpoints / checkpoint_dir_name(step)


def require_visible_everywhere(group: Collective, path: Path, where: str) -> None:
    """Every rank sees the checkpoint rank 0 resumes from, or every rank stops with the same `DistributedError` naming
    the ranks that do not: their nodes do not share the project folder (each would otherwise fail on its own)."""
    if group.size == 1:
        return
    seen = float(path.is_dir() and (path / "SHA256SUMS").is_file())
    flags = group.gather_rows(torch.tensor([[seen]], dtype=torch.float32)).reshape(-1).tolist()
    blind = [rank for rank, flag in enumerate(flags) if flag < 1.0]
    if blind:
        ranks = ", ".join(str(r) for r in blind)
        raise DistributedError(
            f"rank(s) {ranks} of {group.size} cannot see {where}, the checkpoint the job resumes from: their nodes do not share "
            "the project folder; fix: put the project on a filesystem every node mounts at the same path (or copy "
            "artifacts/train/checkpoints to each node), then resume with `geno-pipeline train --resume auto`"
        )


def resume_from(run: TrainingRun, path: Path) -> None:
    """Restore model, optimizer, sampler, logs and monitor from a verified checkpoint (every rank reads it; rank 0 alone
    cuts the logs back)."""
    loaded = load_checkpoint(path, expected=expected_checkpoint(run))
    run.model.load_state_dict(loaded.model)
    restore_optimizer(run.optimizer, loaded.optimizer, loaded.state.optimizer_groups, run.parameters_by_name())
    run.sampler.set_state(loaded.state.sampler.model_dump())
    run.start, run.last_loss, run.resumed_from = loaded.state.step, loaded.state.last_train_loss, path
    if not run.writer:
        return
    run.logs.truncate_to(loaded.state.logs, step=run.start)
    run.layout.final_model.unlink(missing_ok=True)
    run.monitor.initial_pairwise_pred_dist_mean = loaded.state.monitor_baseline_pairwise
    run.lines = run.logs.collapse_lines()
    # not in train.log: a resumed run's logs must equal the straight run's
    print(f"train: resumed from {path} at step {run.start}", file=sys.stderr)
