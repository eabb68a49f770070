"""Multi-process training on torch.distributed: the job a process belongs to, and how the batch is split.

The rules that make the bytes independent of the world size live here as small pure functions:

- the global batch is cut into `train.micro_batches` equal, contiguous micro-batches (`micro_batch_slices`);
- rank r of W takes the contiguous run of micro-batches `shard_range(M, W, r)`, so gathering the ranks in rank order
  lists the micro-batches in micro-batch order;
- per-micro-batch results are summed left to right in that order (`ordered_sum`), never by a backend's all-reduce.

This module imports no torch at import time: preflight and the launcher parse the job without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geno_pipeline.errors import DistributedError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_MASTER_PORT",
    "JOB_VARIABLES",
    "JobEnv",
    "job_from_env",
    "micro_batch_slices",
    "ordered_sum",
    "planned_world_size",
    "rendezvous_port",
    "resolve_backend",
    "shard_range",
]

DEFAULT_MASTER_PORT = 29500  # torchrun's default
JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class JobEnv:
    """The distributed job this process belongs to, as `torchrun` (or a scheduler) describes it in the environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _int(environ: Mapping[str, str], key: str) -> int:
    text = environ[key]
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {key}={text!r} is not an integer; fix: launch with torchrun, which sets it") from None


def job_from_env(environ: Mapping[str, str]) -> JobEnv | None:
    """The job described by RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or None when WORLD_SIZE and RANK are unset."""
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return None
    missing = [key for key in JOB_VARIABLES if not environ.get(key)]
    if missing:
        raise DistributedError(
            f"the environment describes a distributed job but lacks {', '.join(missing)}; "
            "fix: launch with `torchrun ... -m geno_pipeline train`, or unset WORLD_SIZE and RANK to let "
            "`geno-pipeline train` launch runtime.nproc_per_node workers itself"
        )
    job = JobEnv(
        rank=_int(environ, "RANK"),
        world_size=_int(environ, "WORLD_SIZE"),
        local_rank=_int(environ, "LOCAL_RANK"),
        master_addr=environ["MASTER_ADDR"],
        master_port=_int(environ, "MASTER_PORT"),
    )
    if job.world_size < 1 or not 0 <= job.rank < job.world_size or job.local_rank < 0:
        raise DistributedError(
            f"inconsistent job: RANK={job.rank}, WORLD_SIZE={job.world_size}, LOCAL_RANK={job.local_rank}; "
            "fix: launch with torchrun, which sets them"
        )
    if not 0 < job.master_port < 65536:
        raise DistributedError(f"MASTER_PORT={job.master_port} is not a TCP port; fix: use a port in 1..65535")
    return job


def planned_world_size(nproc_per_node: int, environ: Mapping[str, str] | None = None) -> int:
    """The world size a `train` run will have: the launcher's WORLD_SIZE when set, else runtime.nproc_per_node."""
    env = os.environ if environ is None else environ
    text = env.get("WORLD_SIZE", "")
    return int(text) if text.isdigit() and int(text) >= 1 else nproc_per_node


def rendezvous_port(environ: Mapping[str, str] | None = None) -> int:
    """The port a self-launched job rendezvouses on: MASTER_PORT when set, else 29500 (torchrun's default)."""
    env = os.environ if environ is None else environ
    text = env.get("MASTER_PORT", "")
    if not text:
        return DEFAULT_MASTER_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DistributedError(f"MASTER_PORT={text!r} is not a TCP port; fix: set MASTER_PORT to a free port in 1..65535 or unset it")
    return int(text)


def resolve_backend(requested: str, device: str) -> str:
    """`auto` -> `nccl` on a CUDA device, `gloo` on the CPU; `gloo`/`nccl` as asked."""
    if requested == "auto":
        return "nccl" if device.startswith("cuda") else "gloo"
    if requested not in ("gloo", "nccl"):
        raise DistributedError(f"runtime.dist_backend {requested!r} is not one of auto, gloo, nccl")
    return requested


def micro_batch_slices(batch_size: int, micro_batches: int) -> list[slice]:
    """`micro_batches` equal contiguous row ranges covering `batch_size` rows in order."""
    if micro_batches < 1 or batch_size % micro_batches:
        raise ValueError(f"micro_batches {micro_batches} must be >= 1 and divide batch_size {batch_size}")
    size = batch_size // micro_batches
    return [slice(j * size, (j + 1) * size) for j in range(micro_batches)]


def shard_range(micro_batches: int, world_size: int, rank: int) -> range:
    """The micro-batches rank `rank` of `world_size` computes: a contiguous run, so rank order is micro-batch order."""
    if world_size < 1 or micro_batches % world_size or not 0 <= rank < world_size:
        raise ValueError(f"world size {world_size} must divide micro_batches {micro_batches}, and 0 <= rank {rank} < world size")
    per = micro_batches // world_size
    return range(rank * per, (rank + 1) * per)


def ordered_sum(rows: Tensor | Sequence[Tensor]) -> Tensor:
    """rows[0] + rows[1] + ... added left to right: the same bits whoever computed the rows and however many there were."""
    total = rows[0].clone()
    for row in rows[1:]:
        total += row
    return total
