"""Loading a resume checkpoint: it is accepted only when it agrees with itself, its folder and this run, and every
difference is named in one `TrainingCheckpointError` (the checks are pure functions of the state and the tensors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from geno_pipeline.checksums import check_sha256sums, sha256_file
from geno_pipeline.errors import TrainingCheckpointError
from geno_pipeline.jsonio import read_json
from geno_pipeline.layout import LOG_FILES
from geno_pipeline.readers import read_tensors_with_metadata
from geno_pipeline.training.checkpoint import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    SUMS_FILE,
    Bindings,
    CheckpointState,
    OptimizerGroupState,
    checkpoint_dir_name,
)

__all__ = ["Expected", "LoadedCheckpoint", "load_checkpoint", "params_differences", "shape_problems", "tensor_specs"]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint."""

    path: Path
    state: CheckpointState
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Expected:
    """What a checkpoint must match to resume this run."""

    bindings: Bindings
    steps_total: int
    run_id: str
    params: dict[str, Any]  # the train stage params of this run, as JSON
    model: dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, dtype) of the model's state dict
    groups: list[tuple[str, list[str]]]  # (group name, parameter names) of the optimizer
    optimizer: dict[str, tuple[tuple[int, ...], str]]  # AdamW state tensor name -> (shape, dtype)
    hyper: list[OptimizerGroupState]  # this run's optimizer groups before its first step (lr = initial_lr = train.lr)
    lr_multiplier: Callable[[int], float]  # the schedule: the lr of step s is initial_lr x lr_multiplier(s)


def tensor_specs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) of a tensor mapping."""
    return {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()}


def params_differences(have: Any, want: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON values, with both values."""
    if isinstance(have, dict) and isinstance(want, dict):
        out: list[str] = []
        for key in sorted(set(have) | set(want), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in have or key not in want:
                out.append(f"{dotted}: checkpoint has {have.get(key, '<absent>')!r}, this run has {want.get(key, '<absent>')!r}")
            else:
                out += params_differences(have[key], want[key], dotted)
        return out
    return [] if have == want else [f"{prefix}: checkpoint has {have!r}, this run has {want!r}"]


def _fail(path: Path, what: str, problems: list[str]) -> TrainingCheckpointError:
    return TrainingCheckpointError(
        f"{path}: {what}:\n"
        + "\n".join(f"  - {p}" for p in problems)
        + "\nfix: resume from another checkpoint or train from scratch (without --resume)"
    )


def _read_state(path: Path) -> CheckpointState:
    fix = "resume from another checkpoint or train from scratch (without --resume)"
    document = read_json(path / STATE_FILE, schema="checkpoint_state", error=TrainingCheckpointError, fix=fix)
    try:
        return CheckpointState.model_validate(document)
    except ValidationError as exc:
        raise TrainingCheckpointError(
            f"{path / STATE_FILE}: invalid checkpoint state ({exc.error_count()} problem(s)); fix: {fix}"
        ) from None


def _binding_problems(state: CheckpointState, expected: Expected) -> list[str]:
    diffs = []
    have, want = state.bindings.model_dump(), expected.bindings.model_dump()
    for key in sorted(want):
        if key == "params_sha256" and have[key] != want[key]:
            detail = params_differences(state.params, expected.params) or [
                f"params_sha256: checkpoint has {have[key]}, this run has {want[key]}"
            ]
            diffs += [f"params {d}" for d in detail]
        elif key == "world_size" and have.get(key) != want[key]:
            diffs.append(
                f"world_size: checkpoint was written by {have.get(key)} worker(s), this run has {want[key]}; a checkpoint resumes "
                f"only at its own world size (set runtime.nproc_per_node: {have.get(key)}, or launch that many workers)"
            )
        elif have.get(key) != want[key]:
            diffs.append(f"{key}: checkpoint has {have.get(key)!r}, this run has {want[key]!r}")
    if state.steps_total != expected.steps_total:
        diffs.append(f"steps_total: checkpoint has {state.steps_total}, this run has train.steps = {expected.steps_total}")
    return diffs


def shape_problems(what: str, have: dict[str, tuple[tuple[int, ...], str]], want: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """Every tensor of `have` that `want` lacks, every one of `want` that `have` lacks, and every name whose (shape, dtype)
    differs, each naming the tensor (`what` names the file)."""
    problems = [f"{what}: tensor {n!r} is not in this model" for n in sorted(set(have) - set(want))]
    problems += [f"{what}: tensor {n!r} of this model is missing" for n in sorted(set(want) - set(have))]
    for name in sorted(set(have) & set(want)):
        if have[name] != want[name]:
            problems.append(
                f"{what}: tensor {name!r} is {have[name][1]} {list(have[name][0])}, this model has {want[name][1]} {list(want[name][0])}"
            )
    return problems


def _content_problems(
    state: CheckpointState, expected: Expected, model: dict[str, torch.Tensor], optimizer: dict[str, torch.Tensor]
) -> list[str]:
    problems = []
    in_range = 1 <= state.step <= expected.steps_total
    if not in_range:
        problems.append(f"step {state.step} is outside 1..train.steps ({expected.steps_total})")
    problems += shape_problems(MODEL_FILE, tensor_specs(model), expected.model)
    problems += shape_problems(OPTIMIZER_FILE, tensor_specs(optimizer), expected.optimizer)
    groups = [(g.group_name, g.names) for g in state.optimizer_groups]
    if groups != expected.groups:
        problems.append(f"optimizer groups {groups} differ from this model's {expected.groups}")
    elif in_range:  # the schedule is defined on 1..train.steps
        problems += _hyper_problems(state, expected)
    problems += _state_problems(state)
    problems += _value_problems(state, model, optimizer)
    return problems


def _hyper_problems(state: CheckpointState, expected: Expected) -> list[str]:
    """Each group's hyper-parameters are this run's, and its lr is the schedule's at the checkpoint's step."""
    problems = []
    for saved, fresh in zip(state.optimizer_groups, expected.hyper, strict=True):
        where = f"{STATE_FILE} optimizer_groups[{saved.group_name}]"
        for key in ("initial_lr", "weight_decay", "betas", "eps"):
            have, want = getattr(saved, key), getattr(fresh, key)
            if have != want:
                problems.append(f"{where}.{key} = {have!r}, this run's is {want!r} (from train.lr / train.weight_decay)")
        lr = fresh.initial_lr * expected.lr_multiplier(state.step)
        if saved.lr != lr:
            problems.append(f"{where}.lr = {saved.lr!r}, the schedule's at step {state.step} is {lr!r}")
    return problems


def _state_problems(state: CheckpointState) -> list[str]:
    """Fields of state.json that no run writes: the sampler's increment is odd, losses and the baseline are finite."""
    problems = []
    if state.sampler.state.inc % 2 == 0:
        problems.append(f"{STATE_FILE} sampler.state.inc is even; a PCG64 increment is odd")
    baseline = state.monitor_baseline_pairwise
    if baseline is not None and not (math.isfinite(baseline) and baseline > 0):
        problems.append(f"{STATE_FILE} monitor_baseline_pairwise = {baseline!r}; it is a finite distance > 0")
    if state.last_train_loss is not None and not math.isfinite(state.last_train_loss):
        problems.append(f"{STATE_FILE} last_train_loss = {state.last_train_loss!r}; a checkpoint holds only finite steps")
    if set(state.logs) != set(LOG_FILES):
        problems.append(f"{STATE_FILE} logs name {sorted(state.logs)}, expected {sorted(LOG_FILES)}")
    return problems


def _value_problems(state: CheckpointState, model: dict[str, torch.Tensor], optimizer: dict[str, torch.Tensor]) -> list[str]:
    """Every weight and moment is finite, second moments are >= 0, and every parameter took `state.step` AdamW steps."""
    problems = []
    for file, tensors in ((MODEL_FILE, model), (OPTIMIZER_FILE, optimizer)):
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                problems.append(f"{file}: tensor {name!r} holds non-finite values")
            elif name.endswith(".exp_avg_sq") and bool((tensor < 0).any()):
                problems.append(f"{file}: tensor {name!r} holds negative second moments")
            elif name.endswith(".step") and tensor.numel() == 1 and float(tensor) != state.step:
                problems.append(f"{file}: tensor {name!r} counts {float(tensor):g} steps, the state says step {state.step}")
    return problems


def load_checkpoint(path: Path, *, expected: Expected) -> LoadedCheckpoint:
    """Verify and load a checkpoint; raise `TrainingCheckpointError` naming every difference.

    Checked, so that a checkpoint is accepted only if it agrees with itself, its folder and this run: no symbolic
    links; the SHA256SUMS; the state's schema (integers in range); the folder named for the state's step; the tensor
    files it names; the bindings (params key by key, dataset, package version, environment) and run id; the tensor
    files' step and run id metadata; the step range; every tensor's name, shape and dtype against this model and
    optimizer; the optimizer groups and their hyper-parameters (the lr the schedule gives at the step); finite weights
    and moments, AdamW step counts equal to the step; the sampler's odd increment, finite losses and baseline, and
    the logs it records (whose prefixes `RunLogs.truncate_to` checks end at the step).
    """
    path = Path(path)
    links = [p for p in (path, *(path / n for n in (STATE_FILE, SUMS_FILE, MODEL_FILE, OPTIMIZER_FILE))) if p.is_symlink()]
    if links:
        raise _fail(path, "checkpoint is not a plain directory of files", [f"{p} is a symbolic link, not a file of its own" for p in links])
    if not (path / STATE_FILE).is_file():
        raise TrainingCheckpointError(f"{path}: not a checkpoint (no {STATE_FILE}); fix: pass a step-NNNNNN directory or --resume auto")
    problems = check_sha256sums(path)
    if problems:
        raise _fail(path, "checkpoint files are corrupt or were edited", problems)
    state = _read_state(path)
    if path.name != checkpoint_dir_name(state.step):
        name = checkpoint_dir_name(state.step)
        raise _fail(path, f"{STATE_FILE} says step {state.step}", [f"the checkpoint of step {state.step} is {name}, not {path.name}"])
    if set(state.tensors) != {MODEL_FILE, OPTIMIZER_FILE}:
        raise _fail(
            path, f"{STATE_FILE} names tensor files {sorted(state.tensors)}", [f"expected exactly {MODEL_FILE} and {OPTIMIZER_FILE}"]
        )
    for name, digest in state.tensors.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise _fail(path, "tensor files differ from the state", [f"{name}: missing or its sha256 differs from the one in {STATE_FILE}"])
    diffs = _binding_problems(state, expected)
    if diffs:
        raise TrainingCheckpointError(
            f"{path}: checkpoint was made with different inputs:\n"
            + "\n".join(f"  - {d}" for d in diffs)
            + "\nfix: restore the original inputs, or train from scratch (without --resume)"
        )
    if state.run_id != expected.run_id:
        problem = f"run_id: checkpoint has {state.run_id!r}, this run is {expected.run_id!r}"
        raise _fail(path, "checkpoint belongs to another run", [problem])
    fix = "resume from another checkpoint or train from scratch (without --resume)"
    model, model_meta = read_tensors_with_metadata(path / MODEL_FILE, error=TrainingCheckpointError, fix=fix)
    optimizer, optimizer_meta = read_tensors_with_metadata(path / OPTIMIZER_FILE, error=TrainingCheckpointError, fix=fix)
    problems = [
        f"{name}: metadata {key} = {meta.get(key)!r}, {STATE_FILE} says {want!r}"
        for name, meta in ((MODEL_FILE, model_meta), (OPTIMIZER_FILE, optimizer_meta))
        for key, want in (("step", str(state.step)), ("run_id", state.run_id))
        if meta.get(key) != want
    ]
    problems += _content_problems(state, expected, model, optimizer)
    if problems:
        raise _fail(path, "checkpoint does not fit this run", problems)
    return LoadedCheckpoint(path=path, state=state, model=model, optimizer=optimizer)
