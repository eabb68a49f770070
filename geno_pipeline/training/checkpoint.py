"""Resume checkpoints: safetensors for tensors, a schema'd JSON state, SHA256SUMS over both.

Written to a staging directory, fsynced and renamed; loading never unpickles and raises
`TrainingCheckpointError` naming whatever differs.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError

from geno_pipeline.checksums import SumsEntry, check_sha256sums, format_sha256sums, sha256_bytes, sha256_file
from geno_pipeline.documents import Document
from geno_pipeline.errors import TrainingCheckpointError
from geno_pipeline.fsio import write_staged_bytes
from geno_pipeline.jsonio import document_text, read_json, replace_dir_atomically, staging_dir
from geno_pipeline.layout import LOG_FILES
from geno_pipeline.readers import read_tensors_with_metadata
from geno_pipeline.tensorfile import TensorBytes, serialize_tensors

__all__ = [
    "Bindings",
    "CheckpointState",
    "Expected",
    "LoadedCheckpoint",
    "LogRecord",
    "OptimizerGroupState",
    "SamplerState",
    "checkpoint_dir_name",
    "group_states",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer_tensors",
    "params_differences",
    "prune_checkpoints",
    "restore_optimizer",
    "save_checkpoint",
    "tensor_specs",
]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
SUMS_FILE = "SHA256SUMS"
_DIR = re.compile(r"^step-(\d{6,})$")


class Bindings(Document):
    """What the checkpoint is bound to; resuming under anything else is refused."""

    params_sha256: str
    """Hash of the runtime, train and collapse params."""
    dataset_manifest_sha256: str
    """SHA-256 of dataset_manifest.json."""
    package_version: str
    """geno-pipeline version."""
    environment_sha256: str
    """Hash of the environment fingerprint."""
    world_size: int = Field(ge=1)
    """Worker processes of the run; a resume must have the same."""


class LogRecord(Document):
    """Length and hash of a log file at checkpoint time (the prefix a resume keeps)."""

    bytes: int = Field(ge=0)
    """Size in bytes."""
    sha256: str
    """SHA-256 of those bytes."""


class PCG64Inner(Document):
    """PCG64 128-bit state."""

    state: int = Field(ge=0, lt=1 << 128)
    """State."""
    inc: int = Field(ge=0, lt=1 << 128)
    """Increment (odd: numpy stores it shifted left with the low bit set)."""


class SamplerState(Document):
    """numpy PCG64 bit-generator state of the tuple sampler."""

    bit_generator: Literal["PCG64"]
    """Bit generator name."""
    state: PCG64Inner
    """Generator state."""
    has_uint32: int = Field(ge=0, le=1)
    """Buffered 32-bit flag."""
    uinteger: int = Field(ge=0, lt=1 << 32)
    """Buffered 32-bit value."""


class OptimizerGroupState(Document):
    """Hyper-parameters of one AdamW param group."""

    group_name: str
    """`decay` or `no_decay`."""
    names: list[str]
    """Parameter names in the group, in order."""
    lr: float
    """Current lr."""
    initial_lr: float
    """Peak lr the schedule scales."""
    weight_decay: float
    """Decoupled weight decay."""
    betas: list[float]
    """Adam betas."""
    eps: float
    """Adam epsilon."""


class CheckpointState(Document):
    """state.json of a resume checkpoint."""

    schema_id: Literal["geno-pipeline/checkpoint-state"] = "geno-pipeline/checkpoint-state"
    """Identifies the document kind."""
    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    step: int = Field(ge=0)
    """Optimizer steps completed."""
    steps_total: int = Field(ge=1)
    """train.steps of the run."""
    run_id: str
    """Run id."""
    sampler: SamplerState
    """Tuple sampler RNG state."""
    monitor_baseline_pairwise: float | None
    """Collapse monitor's step-0 pairwise-distance baseline."""
    last_train_loss: float | None
    """Loss of the last step."""
    logs: dict[str, LogRecord]
    """metrics.jsonl, collapse.jsonl and train.log prefixes (the metric-history digests)."""
    tensors: dict[str, str]
    """sha256 of model.safetensors and optimizer.safetensors."""
    optimizer_groups: list[OptimizerGroupState]
    """AdamW param groups."""
    bindings: Bindings
    """Inputs the checkpoint is bound to."""
    params: dict[str, Any]
    """The runtime, train and collapse params of the run (to name a differing key on resume)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint."""

    path: Path
    state: CheckpointState
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


def checkpoint_dir_name(step: int) -> str:
    """`step-000250`."""
    return f"step-{step:06d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoint directories, ascending."""
    if not Path(directory).is_dir():
        return []
    out = []
    for path in Path(directory).iterdir():
        match = _DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            out.append((int(match.group(1)), path))
    return sorted(out)


def save_checkpoint(
    directory: Path,
    *,
    state: CheckpointState,
    model_tensors: Mapping[str, torch.Tensor | TensorBytes],
    optimizer_tensors: Mapping[str, torch.Tensor | TensorBytes],
) -> Path:
    """Write checkpoint `step-NNNNNN` atomically; `state.tensors` is filled in here.

    The files go into a staging directory that `replace_dir_atomically` fsyncs and renames into place, so each file is
    written once, hashed from the bytes in memory, and synced once."""
    final = Path(directory) / checkpoint_dir_name(state.step)
    stage = staging_dir(final)
    try:
        digests = {}
        for name, tensors in ((MODEL_FILE, model_tensors), (OPTIMIZER_FILE, optimizer_tensors)):
            data = serialize_tensors(tensors, {"step": str(state.step), "run_id": state.run_id})
            write_staged_bytes(stage / name, data)
            digests[name] = sha256_bytes(data)
        text = document_text(stage / STATE_FILE, state.model_copy(update={"tensors": digests}), schema="checkpoint_state")
        write_staged_bytes(stage / STATE_FILE, text.encode("utf-8"))
        entries = [SumsEntry(digest, name) for name, digest in {**digests, STATE_FILE: sha256_bytes(text.encode("utf-8"))}.items()]
        write_staged_bytes(stage / SUMS_FILE, format_sha256sums(entries).encode("utf-8"))
        replace_dir_atomically(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return final


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


def _shape_problems(what: str, have: dict[str, tuple[tuple[int, ...], str]], want: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
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
    problems += _shape_problems(MODEL_FILE, tensor_specs(model), expected.model)
    problems += _shape_problems(OPTIMIZER_FILE, tensor_specs(optimizer), expected.optimizer)
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


def prune_checkpoints(directory: Path, *, keep: int, every: int, steps_total: int) -> None:
    """Keep the last `keep` scheduled checkpoints (multiples of `every`, or the final step) and the newest one."""
    found = list_checkpoints(directory)
    if not found:
        return
    scheduled = [(s, p) for s, p in found if s % every == 0 or s == steps_total]
    kept = {p for _, p in scheduled[-keep:]} | {found[-1][1]}
    for _, path in found:
        if path not in kept:
            if path.is_symlink():  # a link put there by hand: removed, never followed
                path.unlink()
            else:
                shutil.rmtree(path)


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW state as flat named tensors: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`."""
    out: dict[str, torch.Tensor] = {}
    for param, pstate in optimizer.state.items():
        name = names[id(param)]
        for key, value in pstate.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{name}.{key}"] = tensor
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    groups: list[OptimizerGroupState],
    params_by_name: dict[str, torch.nn.Parameter],
) -> None:
    """Load `optimizer_tensors` output and group hyper-parameters back into a fresh optimizer."""
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        if group.get("group_name") != saved.group_name:
            raise TrainingCheckpointError(f"optimizer group {saved.group_name!r} does not match this model's groups")
        group["lr"] = saved.lr
        group["initial_lr"] = saved.initial_lr
    for key, tensor in tensors.items():
        name, _, slot = key.rpartition(".")
        param = params_by_name.get(name)
        if param is None:
            raise TrainingCheckpointError(f"optimizer state names unknown parameter {name!r}")
        optimizer.state[param][slot] = tensor.to(param.device) if slot != "step" else tensor


def group_states(optimizer: torch.optim.Optimizer) -> list[OptimizerGroupState]:
    """Hyper-parameters of every group, for state.json."""
    out = []
    for group in optimizer.param_groups:
        out.append(
            OptimizerGroupState(
                group_name=group["group_name"],
                names=list(group["names"]),
                lr=group["lr"],
                initial_lr=group["initial_lr"],
                weight_decay=group["weight_decay"],
                betas=list(group["betas"]),
                eps=group["eps"],
            )
        )
    return out
