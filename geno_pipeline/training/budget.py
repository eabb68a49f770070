"""The memory a training run needs, estimated from its params and the dataset's shape before anything is built.

One function of the params (`train_memory`) and one comparison (`memory_shortfall`): preflight reports a shortfall as
`memory.insufficient`, and the train stage refuses to start (before it builds the model or removes a previous run's
outputs). The estimate counts what a worker holds at its peak: the dataset's windows, the cached source states, the
weights with their gradients, AdamW moments and temporaries, the checkpoint copies (the snapshot, and the writer
process's copy and serialised bytes), one step's batch (the encoder's one-hot and conv features of one micro-batch,
the predictor's saved activations of this worker's micro-batches) and the held-out batch, encoded in one call. Sizes
are float32 (4 bytes) and uint8 windows. Measured against peak RSS on CPU it is 1.0-1.7x the parent process's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from geno_pipeline.config import CollapseParams, TrainParams
from geno_pipeline.data.edits import ACTION_FEATURES

__all__ = [
    "MEMORY_REMEDY",
    "PROCESS_BASELINE",
    "SOURCE_CACHE_MAX_BYTES",
    "MemoryEstimate",
    "caches_source_states",
    "memory_shortfall",
    "model_parameter_counts",
    "train_memory",
]

FLOAT = 4
PROCESS_BASELINE = 400 * 2**20
"""What a training worker holds before any of its data: the interpreter, torch's libraries and allocator pools (a
tiny run peaks at 340 MiB resident on CPU with torch 2.13)."""
GIB = 2**30
MEMORY_REMEDY = (
    "lower train.batch_size (or raise train.micro_batches), collapse.valid_batch_size or the train.model sizes, "
    "run fewer workers per machine, or use a machine with more memory"
)
SOURCE_CACHE_MAX_BYTES = 1 << 30
"""The most memory the cached source states may take (float32 states); above it sources are encoded per step."""


def caches_source_states(windows: int, draws: int, state_dim: int) -> bool:
    """Whether training encodes every one of `windows` training windows once, up front, instead of the `draws` sources
    (steps x batch size) it draws: when that is no more encoder work and the states fit in `SOURCE_CACHE_MAX_BYTES`.
    A function of the params and the dataset only, so a resumed run and every worker decide alike."""
    return 0 < windows <= draws and windows * state_dim * 4 <= SOURCE_CACHE_MAX_BYTES


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training worker, by part, and how many workers share the machine."""

    parts: dict[str, int]
    workers: int
    device: str  # "cpu": every part is host memory; "cuda": the model's parts are device memory

    @property
    def per_worker(self) -> int:
        return sum(self.parts.values())

    @property
    def host(self) -> int:
        """Host bytes of every worker on this machine."""
        on_device = DEVICE_PARTS if self.device == "cuda" else ()
        return self.workers * sum(v for k, v in self.parts.items() if k not in on_device)

    @property
    def device_per_worker(self) -> int:
        """Device bytes of one worker (0 on CPU): each worker has its own GPU."""
        return sum(v for k, v in self.parts.items() if k in DEVICE_PARTS) if self.device == "cuda" else 0

    def largest(self, count: int = 3) -> str:
        """The biggest parts, for a message: `batch activations 12.0 GiB, held-out batch 3.1 GiB, ...`."""
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:count]
        return ", ".join(f"{name} {value / GIB:.1f} GiB" for name, value in top)


DEVICE_PARTS = ("weights and optimizer", "source cache", "batch activations", "held-out batch")


def model_parameter_counts(train: TrainParams) -> tuple[int, int]:
    """(trainable parameters, frozen encoder buffer elements) of `build_world_model` for these params."""
    m = train.model
    h, d = m.hidden_dim, m.state_dim
    action = ACTION_FEATURES * h + h + h * h + h
    predictor = (d + h) * h + h + 2 * h + h * h + h + h * d + d
    encoder = m.conv_channels * 4 * m.kernel_size + m.conv_channels + m.conv_channels * m.segments * d
    return action + predictor, encoder


def train_memory(
    train: TrainParams,
    collapse: CollapseParams,
    *,
    window_length: int,
    slot_length: int,
    train_windows: int,
    valid_windows: int,
    world_size: int = 1,
    workers_here: int = 1,
    device: str = "cpu",
) -> MemoryEstimate:
    """Peak memory of one training worker (`world_size` workers in the job, `workers_here` of them on this machine).

    `slot_length` is a stored window's length with its flank (the dataset arrays' row length)."""
    trainable, buffers = model_parameter_counts(train)
    m = train.model
    h, d, c = m.hidden_dim, m.state_dim, m.conv_channels
    k = max(train.rollout_step_mix, default=1)
    micro = train.batch_size // train.micro_batches
    rows_here = train.batch_size // world_size  # this worker's micro-batches, all held until the gradient is reduced
    # encoder, one call: codes (1 byte/base) -> one-hot (4 floats/base) -> conv features and their tanh (c floats/base each)
    encode_per_window = window_length * (1 + FLOAT * (4 + 2 * c))
    # predictor and action encoder, per rollout step: activations kept for backward and their gradients
    step_activations = 2 * FLOAT * (ACTION_FEATURES + 3 * h + 3 * d + 6 * h)
    cached = caches_source_states(train_windows, train.steps * train.batch_size, d)
    valid = collapse.valid_batch_size
    parts = {
        "process": PROCESS_BASELINE,
        "dataset": (train_windows + valid_windows) * slot_length,
        "source cache": train_windows * d * FLOAT if cached else 0,
        "weights and optimizer": FLOAT * (6 * trainable + buffers),  # weights, gradients, AdamW's moments and its temporaries
        "checkpoint copies": 4 * FLOAT * (3 * trainable + buffers),  # snapshot, pickled to the writer, its copy, serialised
        "batch": train.batch_size * (k + 1) * slot_length + train.batch_size * k * ACTION_FEATURES * FLOAT,
        "batch activations": micro * k * encode_per_window + rows_here * k * (step_activations + 2 * d * FLOAT),
        "held-out batch": valid * k * encode_per_window + valid * k * (step_activations // 2 + 2 * d * FLOAT),
    }
    return MemoryEstimate(parts=parts, workers=workers_here, device=device)


def memory_shortfall(estimate: MemoryEstimate, *, host_available: int | None, device_free: int | None = None) -> str | None:
    """What the run lacks, as one sentence naming the need, the machine's amount and the largest parts; None if it fits
    (or the amount is unknown)."""
    workers = f" for {estimate.workers} workers" if estimate.workers > 1 else ""
    if host_available is not None and estimate.host > host_available:
        return (
            f"training needs about {estimate.host / GIB:.1f} GiB of memory{workers}, but this machine has "
            f"{host_available / GIB:.1f} GiB available (largest parts per worker: {estimate.largest()})"
        )
    if device_free is not None and estimate.device_per_worker > device_free:
        return (
            f"training needs about {estimate.device_per_worker / GIB:.1f} GiB of GPU memory per worker, but its GPU has "
            f"{device_free / GIB:.1f} GiB free (largest parts: {estimate.largest()})"
        )
    return None
