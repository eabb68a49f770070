"""Typed, validated params.yaml: one frozen pydantic model per stage section."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geno_pipeline.canonical import canonical_json
from geno_pipeline.checksums import sha256_bytes
from geno_pipeline.data.edits import EDIT_TYPE_NAMES, MAX_EDIT_BASES
from geno_pipeline.documents import Document, FiniteFloat
from geno_pipeline.errors import ConfigError

__all__ = [
    "EDIT_TYPE_NAMES",
    "CollapseParams",
    "DataParams",
    "LoadedParams",
    "ModelParams",
    "Params",
    "PreflightParams",
    "ReleaseParams",
    "RuntimeParams",
    "SweepParams",
    "SweepStageParams",
    "TrainParams",
    "TrainStageParams",
    "cross_section_problems",
    "load_params",
    "params_from_mapping",
    "section_keys",
    "stage_params",
    "sweep_gate_problems",
    "world_size_problems",
]

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Section(Document):
    model_config = ConfigDict(strict=True)


class _Problem(ValueError):
    """A cross-field problem: carries (dotted key relative to the section, value, message, fix)."""

    def __init__(self, problems: list[tuple[str, Any, str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, _, m, _ in problems))
        self.problems = problems


def _raise_if(problems: list[tuple[str, Any, str, str]]) -> None:
    if problems:
        raise _Problem(problems)


def record_list_problems(source: str, records: list[str] | None, valid_records: list[str] | None) -> list[tuple[str, Any, str, str]]:
    """Problems of `data.records` / `data.valid_records` that need no FASTA to see, as (key, value, what, fix)."""
    problems: list[tuple[str, Any, str, str]] = []
    for key, names in (("records", records), ("valid_records", valid_records)):
        if names is None:
            continue
        if source != "fasta":
            problems.append((key, names, "selects FASTA records, but source is not 'fasta'", f"set data.{key}: null or use source: fasta"))
        elif not names:
            problems.append((key, names, "is an empty list", f"name at least one record, or set data.{key}: null"))
        elif len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            problems.append((key, names, f"names {', '.join(repeated)} more than once", "list each record once"))
        elif any(not n or n != n.strip() or len(n.split()) != 1 for n in names):
            problems.append(
                (key, names, "holds an empty name or one with white space", "use record names as the first word of each '>' line")
            )
    if source == "fasta" and records and valid_records:
        outside = [n for n in valid_records if n not in set(records)]
        if outside:
            problems.append(
                (
                    "valid_records",
                    valid_records,
                    f"names {', '.join(outside)}, not in data.records",
                    "add them to data.records or drop them here",
                )
            )
        elif set(valid_records) == set(records):
            problems.append(
                (
                    "valid_records",
                    valid_records,
                    "holds every record of data.records, leaving none for training",
                    "keep at least one record for training",
                )
            )
    return problems


SEED_MAX = 2**32 - 1  # seeds are 32-bit: numpy and torch generators, and the seeds derived from them


class DataParams(_Section):
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
        _raise_if(problems)
        return self


class RuntimeParams(_Section):
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
        _raise_if(problems)
        return self


class PreflightParams(_Section):
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


class ModelParams(_Section):
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


def _weight_problems(items: dict[Any, Any], known: tuple[Any, ...] | None) -> list[tuple[str, Any, str, str]]:
    """Problems of a weights mapping, keyed by entry (relative to the field)."""
    problems: list[tuple[str, Any, str, str]] = []
    if not items:
        problems.append(("", items, "must not be empty", "give at least one entry with a positive weight"))
    for name, weight in items.items():
        if known is not None and name not in known:
            problems.append((str(name), weight, f"unknown entry {name!r}", f"use one of {', '.join(map(str, known))}"))
        elif known is None and name < 1:
            problems.append((str(name), name, "rollout length K must be >= 1", "use K = 1, 2, 3, ..."))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            problems.append((str(name), weight, "weight must be a finite number > 0", "use a positive weight or drop the entry"))
    return problems


class TrainParams(_Section):
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
        _raise_if(_weight_problems(value, EDIT_TYPE_NAMES))
        return value

    @field_validator("rollout_step_mix")
    @classmethod
    def _rollout_mix(cls, value: dict[int, float]) -> dict[int, float]:
        _raise_if(_weight_problems(value, None))
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
        _raise_if(problems)
        return self


class CollapseParams(_Section):
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


class SweepParams(_Section):
    """The seed sweep (`geno-pipeline sweep`): the train stage rerun with other seeds, everything else fixed."""

    seeds: int = Field(0, ge=0, le=1000)
    """Train this many further seeds, train.seed + 1 .. train.seed + N, each in artifacts/sweep/seed-<S>/; 0: no sweep."""


class ReleaseParams(_Section):
    """Inputs of the `release` stage."""

    allow_collapse_alerts: bool = False
    """Release even when the final collapse observation raised alerts."""
    sweep_max_ratio: FiniteFloat | None = Field(None, gt=0)
    """Seed-sweep gate, on when set: every sweep seed's held-out / identity-baseline ratio must be under this, and the
    released run's ratio within the sweep's spread. Needs sweep.seeds >= 2. null: no sweep gate."""
    sweep_spread_sigmas: FiniteFloat = Field(3.0, gt=0)
    """The sweep's spread: its mean ratio +/- this many sample standard deviations."""


def cross_section_problems(window_length: int, flank_length: int, train: TrainParams) -> list[tuple[str, Any, str, str]]:
    """Every problem between the data shape and the train params, as (dotted key, value, message, fix).

    The same function checks params.yaml (every stage, preflight included) and the built dataset (train).
    """
    problems: list[tuple[str, Any, str, str]] = []
    segments = train.model.segments
    if window_length % segments:
        divisors = [d for d in range(1, min(window_length, 64) + 1) if window_length % d == 0]
        problems.append(
            (
                "train.model.segments",
                segments,
                f"must divide data.window_length ({window_length})",
                f"choose segments that divide the window length, e.g. one of {', '.join(map(str, divisors[-6:]))}",
            )
        )
    k_max = max(train.rollout_step_mix, default=1)
    if flank_length < MAX_EDIT_BASES * k_max:
        problems.append(
            (
                "data.flank_length",
                flank_length,
                f"is too short for rollouts of K = {k_max} (train.rollout_step_mix): each edit may delete up to "
                f"{MAX_EDIT_BASES} bases, which the flank must refill",
                f"set data.flank_length >= {MAX_EDIT_BASES * k_max} or drop the longer rollouts",
            )
        )
    return problems


def world_size_problems(world_size: int, train: TrainParams, *, key: str = "runtime.nproc_per_node") -> list[tuple[str, Any, str, str]]:
    """Problems of running `train` on `world_size` workers: each takes a whole number of micro-batches."""
    if train.micro_batches % world_size == 0:
        return []
    return [
        (
            key,
            world_size,
            f"does not divide train.micro_batches ({train.micro_batches}); every worker takes the same number of micro-batches",
            f"set train.micro_batches to a multiple of {world_size} (it must also divide train.batch_size {train.batch_size})",
        )
    ]


class Params(_Section):
    """The whole params.yaml: one section per stage."""

    data: DataParams = Field(default_factory=DataParams)
    """Dataset construction."""
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    preflight: PreflightParams = Field(default_factory=PreflightParams)
    """Preflight thresholds."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""
    sweep: SweepParams = Field(default_factory=SweepParams)
    """Seed sweep."""
    release: ReleaseParams = Field(default_factory=ReleaseParams)
    """Release gates."""

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        problems = cross_section_problems(self.data.window_length, self.data.flank_length, self.train)
        problems += sweep_gate_problems(self.sweep, self.release)
        _raise_if(problems + world_size_problems(self.runtime.nproc_per_node, self.train))
        return self


def sweep_gate_problems(sweep: SweepParams, release: ReleaseParams) -> list[tuple[str, Any, str, str]]:
    """The sweep gate needs a spread: at least two seeds."""
    if release.sweep_max_ratio is None or sweep.seeds >= 2:
        return []
    return [
        (
            "sweep.seeds",
            sweep.seeds,
            f"must be at least 2 when release.sweep_max_ratio is set ({release.sweep_max_ratio}): the gate compares with a spread",
            "set sweep.seeds: 3 (or more), or release.sweep_max_ratio: null",
        )
    ]


class TrainStageParams(_Section):
    """The sections the `train` stage reads (and nothing else)."""

    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""

    @model_validator(mode="after")
    def _world(self) -> TrainStageParams:
        _raise_if(world_size_problems(self.runtime.nproc_per_node, self.train))
        return self

    @classmethod
    def from_params(cls, params: Params) -> TrainStageParams:
        """Narrow the whole params to the train stage's sections."""
        return cls(runtime=params.runtime, train=params.train, collapse=params.collapse)

    def sha256(self) -> str:
        """Hash of exactly the params the train stage reads (checkpoints and the release bind to it)."""
        return sha256_bytes(canonical_json(self).encode())


class SweepStageParams(_Section):
    """The sections the `sweep` stage reads: the train stage's, and the sweep's."""

    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training (train.seed is the released run's seed; the sweep trains the next ones)."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""
    sweep: SweepParams = Field(default_factory=SweepParams)
    """How many seeds."""

    @classmethod
    def from_params(cls, params: Params) -> SweepStageParams:
        """Narrow the whole params to the sweep stage's sections."""
        return cls(runtime=params.runtime, train=params.train, collapse=params.collapse, sweep=params.sweep)

    def train_stage(self, seed: int | None = None) -> TrainStageParams:
        """The train stage's params, with train.seed replaced by `seed` when given."""
        train = self.train if seed is None else self.train.model_copy(update={"seed": seed})
        return TrainStageParams(runtime=self.runtime, train=train, collapse=self.collapse)


def section_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """Dotted top-level keys of a section model, as listed under `params:` in dvc.yaml."""
    return [f"{prefix}.{name}" for name in model.model_fields]


def stage_params() -> dict[str, list[str]]:
    """The params keys each DVC stage reads, derived from the models each stage's `run` takes."""
    whole = list(Params.model_fields)  # preflight validates, release embeds the whole file
    return {
        "data": section_keys(DataParams, "data"),
        "preflight": whole,
        # train also checks that the dataset was built from the `data` section (cli's train command)
        "train": section_keys(DataParams, "data")
        + [key for name, info in TrainStageParams.model_fields.items() for key in section_keys(info.annotation, name)],  # type: ignore[arg-type]
        "sweep": [key for name, info in SweepStageParams.model_fields.items() for key in section_keys(info.annotation, name)],  # type: ignore[arg-type]
        "release": whole,
    }


_FIXES = {
    "missing": "add the key",
    "extra_forbidden": "remove the key or fix its spelling",
    "int_type": "use an integer",
    "float_type": "use a number",
    "bool_type": "use true or false",
    "string_type": "use a string",
    "dict_type": "use a mapping",
    "model_type": "use a mapping of the section's keys",
    "literal_error": "use one of the allowed values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "finite_number": "use a finite number",
}


def _exponent_string(value: Any) -> bool:
    """`3e-3` and friends: YAML 1.1 (PyYAML, DVC) reads an exponent without a dot as a string."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return "e" in value.lower()


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _fix_for(kind: str, value: Any) -> str:
    if _non_finite(value):
        return "use a finite number (not .nan or .inf)"
    if kind in ("float_type", "int_type") and _exponent_string(value):
        number = float(value)
        if kind == "int_type":
            return f"YAML reads {value!r} as text; write the integer {int(number)}" if number.is_integer() else "use an integer"
        return f"YAML reads {value!r} as text; write {number:.10g} or {_with_dot(value)}"
    return _FIXES.get(kind, "correct the value")


def _with_dot(value: str) -> str:
    """`3e-3` -> `3.0e-3`, `6.0e1` -> `6.0e+1`: the forms YAML 1.1 (PyYAML, DVC) reads as a float, which needs both a dot
    and a signed exponent."""
    mantissa, _, exponent = value.lower().partition("e")
    sign = "" if exponent.startswith(("+", "-")) else "+"
    return (mantissa if "." in mantissa else f"{mantissa}.0") + "e" + sign + exponent


def _fmt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems_from(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, _Problem):
            for key, value, message, fix in inner.problems:
                full = ".".join(part for part in (loc, key) if part)
                out.append(f"{full} = {_fmt_value(value)}: {message}; fix: {fix}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        fix = _fix_for(err["type"], err.get("input"))
        if err["type"] == "extra_forbidden":
            out.append(f"{loc}: unknown key; fix: {fix}")
        elif err["type"] == "missing":
            out.append(f"{loc}: missing; fix: {fix}")
        else:
            value = err.get("input")
            message = "is not a finite number" if _non_finite(value) else message
            out.append(f"{loc} = {_fmt_value(value)}: {message}; fix: {fix}")
    return out


def params_from_mapping(raw: Any, *, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise `ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = tuple(_problems_from(exc))
        body = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: {len(problems)} {noun}:\n{body}", problems) from None


@dataclass(frozen=True)
class LoadedParams:
    """A params file as read once per command: valid params, or the defaults plus every problem."""

    path: Path
    params: Params
    error: ConfigError | None = None

    @property
    def valid(self) -> bool:
        """The file validated."""
        return self.error is None

    @classmethod
    def read(cls, path: Path | str) -> LoadedParams:
        """Read `path`; an invalid file is kept as its error (preflight reports it as findings)."""
        try:
            return cls(Path(path), load_params(path))
        except ConfigError as exc:
            return cls(Path(path), Params(), exc)

    def require(self) -> Params:
        """The params, or raise the file's `ConfigError`."""
        if self.error is not None:
            raise self.error
        return self.params


def load_params(path: Path | str) -> Params:
    """Read and validate a params file; raise `ConfigError` listing every problem.

    The file must hold every section (an empty file or a missing section is refused, not defaulted),
    and a repeated key is refused, as DVC refuses it.
    """
    from geno_pipeline.readers import read_yaml

    path = Path(path)
    raw = read_yaml(path, error=ConfigError, fix="run from the project root or pass --params PATH to a UTF-8 YAML params file")
    if raw is None:
        raise ConfigError(f"{path}: empty params file; fix: write every section ({', '.join(Params.model_fields)}), as in the README")
    if isinstance(raw, dict):
        missing = [name for name in Params.model_fields if name not in raw]
        if missing:
            problems = tuple(f"{name}: missing section; fix: add the `{name}:` section (see the README's params table)" for name in missing)
            body = "\n".join(f"  - {p}" for p in problems)
            raise ConfigError(f"{path}: {len(problems)} missing section(s):\n{body}", problems)
    params = params_from_mapping(raw, source=str(path))
    problems = tuple(
        f"{key}: missing; fix: add the `{key.rpartition('.')[2]}:` mapping with its keys" if isinstance(default, BaseModel)
        else f"{key}: missing; fix: add the key (its default is {_fmt_value(default)})"
        for key, default in missing_keys(Params, raw)
    )  # fmt: skip
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} missing key(s); every stage reads its keys from the file:\n{body}", problems)
    return params


def missing_keys(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, default) of every field of `model` and its nested sections that the parsed mapping `raw` lacks (a
    stage run outside DVC reads the same complete file DVC's params lists demand; nothing silently takes a default)."""
    out: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            out.append((key, info.get_default(call_default_factory=True)))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) and isinstance(raw[name], dict):
            out += missing_keys(info.annotation, raw[name], f"{key}.")
    return out
