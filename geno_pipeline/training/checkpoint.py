"""Resume checkpoints: safetensors for tensors, a schema'd JSON state, SHA256SUMS over both.

Written to a staging directory, fsynced and renamed; loading never unpickles and raises
`TrainingCheckpointError` naming whatever differs.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from geno_pipeline.checksums import SumsEntry, format_sha256sums, sha256_bytes
from geno_pipeline.documents import Document
from geno_pipeline.errors import TrainingCheckpointError
from geno_pipeline.fsio import write_staged_bytes
from geno_pipeline.jsonio import document_text, replace_dir_atomically, staging_dir
from geno_pipeline.tensorfile import TensorBytes, serialize_tensors

if TYPE_CHECKING:  # torch is loaded only where tensors are converted: the release reads logs without it
    import torch

    from geno_pipeline.training.adamw import AdamW

__all__ = [
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "SUMS_FILE",
    "Bindings",
    "CheckpointState",
    "LogRecord",
    "OptimizerGroupState",
    "SamplerState",
    "checkpoint_dir_name",
    "group_states",
    "list_checkpoints",
    "optimizer_tensors",
    "prune_checkpoints",
    "restore_optimizer",
    "save_checkpoint",
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


def optimizer_tensors(optimizer: AdamW, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW state as flat named tensors: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for param, pstate in optimizer.state.items():
        name = names[id(param)]
        for key, value in pstate.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{name}.{key}"] = tensor
    return out


def restore_optimizer(
    optimizer: AdamW,
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


def group_states(optimizer: AdamW) -> list[OptimizerGroupState]:
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
