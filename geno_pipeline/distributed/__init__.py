"""Multi-process training on torch.distributed: the job a process belongs to, and how the batch is split.

The rules that make the bytes independent of the world size live here as small pure functions:

- the global batch is cut into `train.micro_batches` equal, contiguous micro-batches (`micro_batch_slices`);
- rank r of W takes the contiguous run of micro-batches `shard_range(M, W, r)`, so gathering the ranks in rank order
  lists the micro-batches in micro-batch order;
- per-micro-batch statistics (a few numbers each) are gathered in one exchange and summed left to right in that order
  (`ordered_sum`);
- per-micro-batch gradients are summed along one fixed balanced binary tree over the micro-batches (`tree_sum`: the
  left half's sum plus the right half's, split at half the count). When the world size W is a power of two dividing
  M, each rank's micro-batches form whole subtrees (`tree_fits`): a rank sums its own (`lazy_tree_sum`), and the W
  partial sums are combined shard by shard along the tree's top W leaves (`group.TorchGroup.tree_reduce`: an
  all-to-all and an all-gather, ~2(W-1)/W of the gradient received per rank, like a ring all-reduce). A backend's
  all-reduce only at W = 2, where each element is one commutative addition: with three or more terms its order would
  be the backend's.

This module imports no torch at import time: preflight and the launcher parse the job without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
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
    "launcher_problems",
    "lazy_tree_sum",
    "local_world_size",
    "micro_batch_slices",
    "ordered_sum",
    "planned_world_size",
    "port_is_free",
    "rendezvous_port",
    "resolve_backend",
    "shard_range",
    "tree_fits",
    "tree_sum",
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


def local_world_size(nproc_per_node: int, environ: Mapping[str, str] | None = None) -> int:
    """The workers a job runs on this node: LOCAL_WORLD_SIZE when set (torchrun sets it; set it yourself for a
    per-node preflight of a job across nodes), else the launcher's WORLD_SIZE (one node), else runtime.nproc_per_node."""
    env = os.environ if environ is None else environ
    text = env.get("LOCAL_WORLD_SIZE", "")
    if text.isdigit() and int(text) >= 1:
        return int(text)
    return planned_world_size(nproc_per_node, env)


def launcher_problems(environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(variable, value, what is wrong, fix) for each launcher variable preflight reads that cannot describe a job:
    WORLD_SIZE and LOCAL_WORLD_SIZE must be positive integers, and a node cannot run more workers than the job has."""
    found: list[tuple[str, str, str, str]] = []
    for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        text = environ.get(key)
        if text is not None and not (text.isdigit() and int(text) >= 1):
            found.append(
                (
                    key,
                    text,
                    "is not a positive integer",
                    f"set {key} to the job's number of workers{' on this node' if key.startswith('LOCAL') else ''}, or unset it",
                )
            )
    world, local = environ.get("WORLD_SIZE", ""), environ.get("LOCAL_WORLD_SIZE", "")
    if not found and world and local and int(local) > int(world):
        found.append(
            (
                "LOCAL_WORLD_SIZE",
                local,
                f"is more than WORLD_SIZE ({world})",
                "set LOCAL_WORLD_SIZE to the workers on this node, at most WORLD_SIZE",
            )
        )
    return found


def port_is_free(port: int) -> bool:
    """Whether a TCP listener could bind 127.0.0.1:`port` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def lazy_tree_sum(count: int, leaf: Callable[[int], Tensor], start: int = 0) -> Tensor:
    """The sum of `leaf(start) .. leaf(start + count - 1)` along the fixed balanced binary tree: the first `count // 2`
    leaves' tree sum plus the rest's. Leaves are asked for in order, each once, and at most about log2(count) sums are
    held at a time. The result is a new tensor unless `count` is 1 (then it is `leaf(start)` itself)."""
    if count < 1:
        raise ValueError(f"a tree sum needs at least one leaf, not {count}")
    if count == 1:
        return leaf(start)
    half = count // 2
    left = lazy_tree_sum(half, leaf, start)
    return left + lazy_tree_sum(count - half, leaf, start + half)


def tree_sum(rows: Tensor | Sequence[Tensor]) -> Tensor:
    """`rows` summed along the fixed balanced binary tree (`lazy_tree_sum`): the same bits for any split of the rows
    into whole subtrees summed apart and then combined along the tree."""
    total = lazy_tree_sum(len(rows), lambda i: rows[i])
    return total.clone() if len(rows) == 1 else total


def tree_fits(micro_batches: int, world_size: int) -> bool:
    """Each rank's contiguous micro-batches form whole subtrees of the tree over `micro_batches` leaves: true when the
    world size is a power of two dividing the micro-batch count (halving M keeps splitting on rank boundaries)."""
    return world_size >= 1 and world_size & (world_size - 1) == 0 and micro_batches % world_size == 0
