"""The params sections: one frozen, strict pydantic model per stage section."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from geno_pipeline.config.checks import raise_if, record_list_problems, weight_problems
from geno_pipeline.data.edits import EDIT_TYPE_NAMES
from geno_pipeline.documents import Document, FiniteFloat

__all__ = [
    "SEED_MAX",
    "CollapseParams",
    "DataParams",
    "ModelParams",
    "PreflightParams",
    "ReleaseParams",
    "RuntimeParams",
    "Section",
    "SweepParams",
    "TrainParams",
]

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class Section(Document):
    """A params section: strict types (no coercion), unknown keys refused, frozen."""

    model_config = ConfigDict(strict=True)


SEED_MAX = 2**32 - 1  # seeds are 32-bit: numpy and torch generators, and the seeds derived from them


class DataParams(Section):
    """Inputs of the `data` stage."""

    seed: int = Field(17, ge=0, le=SEED_MAX)
    """Seed of the synthetic genome and of the window draw (0 .. 2^32 - 1)."""
    source: Literal["synthetic", "fasta"] = "synthetic"
    """Where the reference comes from: a seeded synthetic genome or a user FASTA."""
    fasta_path: str | None = None
    """FASTA file (plain or .gz) used when `source: fasta`; relative paths are from the project root."""
    genome_length: int = Field(8_000_000, gt=0, le=10**11)
    """Length in bases of the synthetic genome (ignored for FASTA; at most 10^11)."""
    window_length: int = Field(256, gt=0, le=1 << 20)
    """Bases per window (the model's input length L; at most 2^20)."""
    flank_length: int = Field(64, ge=0, le=1 << 20)
    """Reference bases stored after each window, used to refill the window after deletions."""
    train_windows: int = Field(20000, gt=0, le=10**9)
    """Number of training windows (at most 10^9)."""
    valid_windows: int = Field(1024, gt=0, le=10**8)
    """Number of held-out validation windows (disjoint from training windows; at most 10^8)."""
    records: list[str] | None = None
    """FASTA records to use, by name (the first word of the '>' line), e.g. chr1..chr22; null keeps every record."""
    valid_records: list[str] | None = None
    """Chromosome hold-out: validation windows only from these records, training windows only from the others; null draws a random split."""

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        problems: list[tuple[str, Any, str, str]] = []
        if self.source == "fasta" and not self.fasta_path:
            problems.append(
                (
                    "fasta_path",
                    self.fasta_path,
                    "is required when source is 'fasta'",
                    "set data.fasta_path to a FASTA file or use source: synthetic",
                )
            )
        if self.window_length < 16:
            problems.append(("window_length", self.window_length, "must be >= 16", "use a window of 16 bases or more"))
        problems += record_list_problems(self.source, self.records, self.valid_records)
        if self.source == "synthetic":
            slot = self.window_length + self.flank_length
            need = slot * (self.train_windows + self.valid_windows)
            if self.window_length > self.genome_length:
                problems.append(
                    (
                        "window_length",
                        self.window_length,
                        f"is larger than genome_length ({self.genome_length})",
                        "use a window_length no larger than genome_length",
                    )
                )
            elif need > self.genome_length:
                problems.append(
                    (
                        "genome_length",
                        self.genome_length,
                        f"is too short for {self.train_windows + self.valid_windows} non-overlapping "
                        f"windows of {slot} bases (window + flank), which need {need}",
                        f"set genome_length >= {need} or ask for fewer windows",
                    )
                )
        raise_if(problems)
        return self


class RuntimeParams(Section):
    """Where and how training runs."""

    device: str = "auto"
    """`auto` (CUDA when usable, else CPU), `cpu`, `cuda` or `cuda:N`."""
    deterministic: bool = True
    """Apply deterministic algorithms, disable TF32 and cuDNN benchmarking."""
    cpu_threads: int = Field(2, ge=1, le=1024)
    """torch intra-op threads of each worker process (1 .. 1024); part of the environment fingerprint."""
    nproc_per_node: int = Field(1, ge=1, le=256)
    """Worker processes on this node (1 .. 256); above 1, `geno-pipeline train` launches them itself (torch.distributed.run)."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend of a multi-process run: `auto` is NCCL on CUDA and gloo on the CPU."""
    dist_timeout_s: int = Field(300, ge=1, le=7 * 86400)
    """Seconds a collective (or the rendezvous) waits for a peer before the whole job stops with a message (at most a
    week)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N")
        return value

    @model_validator(mode="after")
    def _check(self) -> RuntimeParams:
        problems: list[tuple[str, Any, str, str]] = []
        if self.nproc_per_node > 1 and ":" in self.device:
            problems.append(
                (
                    "device",
                    self.device,
                    f"names one CUDA device, but nproc_per_node is {self.nproc_per_node} (each worker uses cuda:LOCAL_RANK)",
                    "set runtime.device: cuda or auto, and choose GPUs with CUDA_VISIBLE_DEVICES",
                )
            )
        if self.dist_backend == "nccl" and self.device == "cpu":
            problems.append(
                ("dist_backend", self.dist_backend, "NCCL needs CUDA devices, but runtime.device is cpu", "use dist_backend: gloo or auto")
            )
        raise_if(problems)
        return self


class PreflightParams(Section):
    """Thresholds the preflight stage checks."""

    require_accelerator: bool = False
    """Fail preflight when no usable CUDA device is found."""
    min_vram_gib: FiniteFloat = Field(2.0, ge=0, le=1e6)
    """Free memory (GiB) the selected CUDA device must have."""
    min_free_disk_gib: FiniteFloat = Field(1.0, ge=0, le=1e9)
    """Free disk space (GiB) where artifacts/ lives."""
    cuda_timeout_s: FiniteFloat = Field(60.0, gt=0, le=86400)
    """Seconds torch may take to start CUDA, and then to run the kernel smoke test on each selected device; past it the
    probe process is killed and preflight reports cuda.kernel_timeout."""


class ModelParams(Section):
    """Shape of the frozen encoder, the action encoder and the predictor."""

    state_dim: int = Field(64, ge=2, le=1 << 16)
    """Dimension D of the latent state."""
    hidden_dim: int = Field(256, ge=1, le=1 << 16)
    """Hidden width of the action encoder and the predictor MLP."""
    conv_channels: int = Field(32, ge=1, le=1 << 16)
    """Channels of the frozen encoder's convolution."""
    kernel_size: int = Field(9, ge=1, le=1 << 16)
    """Kernel width (bases) of the frozen encoder's convolution; odd."""
    segments: int = Field(16, ge=1, le=1 << 16)
    """Segments the window is pooled into, so the state keeps position information."""
    residual: bool = True
    """Predict the change of state (next = state + f(state, action)) instead of the state itself."""

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


def _default_edit_weights() -> dict[str, float]:
    return {"SNV": 0.40, "INS": 0.20, "DEL": 0.20, "MNV": 0.10, "INDEL": 0.10}


def _default_rollout_mix() -> dict[int, float]:
    return {1: 0.90, 2: 0.05, 3: 0.05}


class TrainParams(Section):
    """Inputs of the `train` stage."""

    seed: int = Field(1234, ge=0, le=SEED_MAX)
    """Base seed (0 .. 2^32 - 1); per-purpose seeds (model init, sampler, validation) are derived from it by hashing."""
    steps: int = Field(1500, ge=1, le=10**9)
    """Total optimizer steps (at most 10^9)."""
    batch_size: int = Field(64, ge=1, le=1 << 20)
    """Tuples per optimizer step (the global batch, whatever the number of workers)."""
    micro_batches: int = Field(1, ge=1, le=1 << 20)
    """Fixed split of the batch whose gradients are summed in this order: the bytes depend on it, not on the world size,
    which must divide it."""
    lr: FiniteFloat = Field(0.001, gt=0)
    """Peak learning rate."""
    weight_decay: FiniteFloat = Field(0.05, ge=0)
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    warmup_steps: int = Field(100, ge=0, le=10**9)
    """Linear warmup steps of the schedule."""
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    """Learning-rate schedule: warmup-stable-decay, cosine or constant."""
    grad_clip_norm: FiniteFloat = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    kl_weight: FiniteFloat = Field(0.01, ge=0)
    """Weight of the Gaussian KL regulariser on predicted states' batch statistics."""
    checkpoint_every_steps: int = Field(250, ge=1, le=10**9)
    """Write a resume checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = Field(2, ge=1, le=10**4)
    """Number of most recent checkpoints kept."""
    edit_type_weights: dict[str, float] = Field(default_factory=_default_edit_weights)
    """Sampling weight of each edit type (SNV, INS, DEL, MNV, INDEL); normalised by their sum."""
    rollout_step_mix: dict[int, float] = Field(default_factory=_default_rollout_mix)
    """Sampling weight of each rollout length K >= 1; normalised by their sum."""
    model: ModelParams = Field(default_factory=ModelParams)
    """Model shape."""

    @field_validator("edit_type_weights")
    @classmethod
    def _edit_weights(cls, value: dict[str, float]) -> dict[str, float]:
        raise_if(weight_problems(value, EDIT_TYPE_NAMES))
        return value

    @field_validator("rollout_step_mix")
    @classmethod
    def _rollout_mix(cls, value: dict[int, float]) -> dict[int, float]:
        raise_if(weight_problems(value, None))
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        problems: list[tuple[str, Any, str, str]] = []
        if self.batch_size % self.micro_batches:
            problems.append(
                (
                    "micro_batches",
                    self.micro_batches,
                    f"must divide batch_size ({self.batch_size})",
                    "choose micro_batches that divides batch_size, e.g. 1, 2 or 4",
                )
            )
        if self.schedule == "wsd" and self.warmup_steps >= self.steps:
            problems.append(
                (
                    "warmup_steps",
                    self.warmup_steps,
                    f"must be < steps ({self.steps}) for the wsd schedule",
                    "lower warmup_steps or raise steps",
                )
            )
        raise_if(problems)
        return self


class CollapseParams(Section):
    """Collapse diagnostics on the fixed held-out batch."""

    log_every_steps: int = Field(100, ge=1, le=10**9)
    """Observe collapse metrics every this many steps (and always at the final step)."""
    valid_batch_size: int = Field(512, ge=2, le=1 << 20)
    """Held-out tuples in the fixed collapse batch."""
    pred_var_to_target_var: FiniteFloat = Field(0.5, gt=0)
    """Alert when prediction variance per dim < this x target variance per dim."""
    pairwise_to_initial: FiniteFloat = Field(0.5, gt=0)
    """Alert when mean pairwise prediction distance < this x its step-0 baseline."""
    kl_reg_max: FiniteFloat = Field(10.0, gt=0)
    """Alert when the KL regulariser exceeds this."""
    on_alert: Literal["warn", "halt"] = "warn"
    """`warn` logs alerts and continues; `halt` stops the run with status `collapsed`."""


class SweepParams(Section):
    """The seed sweep (`geno-pipeline sweep`): the train stage rerun with other seeds, everything else fixed."""

    seeds: int = Field(0, ge=0, le=1000)
    """Train this many further seeds, train.seed + 1 .. train.seed + N, each in artifacts/sweep/seed-<S>/; 0: no sweep."""


class ReleaseParams(Section):
    """Inputs of the `release` stage."""

    allow_collapse_alerts: bool = False
    """Release even when the final collapse observation raised alerts."""
    sweep_max_ratio: FiniteFloat | None = Field(None, gt=0)
    """Seed-sweep gate, on when set: every sweep seed's held-out / identity-baseline ratio must be under this, and the
    released run's ratio within the sweep's spread. Needs sweep.seeds >= 2. null: no sweep gate."""
    sweep_spread_sigmas: FiniteFloat = Field(3.0, gt=0)
    """The sweep's spread: its mean ratio +/- this many sample standard deviations."""
