"""The process group a training run talks through: one process (`LocalGroup`) or a torch.distributed job (`TorchGroup`).

The trainer gathers rows, exchanges gradient shards (all-to-all) and broadcasts small integers: these collectives copy
bytes and do no arithmetic, so the result does not depend on the algorithm a backend picks (gloo's all-reduce is not
deterministic, pytorch#36871); every sum of three or more terms is ours, in a fixed order. The one all-reduce is of
two partial sums (W = 2): each element is then one IEEE addition, which is commutative, so every algorithm gives the
bits of the tree's `left + right`. Each group counts the payload bytes it sends and receives (`Traffic`).
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from geno_pipeline.distributed import JobEnv, tree_sum
from geno_pipeline.errors import EXIT_DISTRIBUTED, DistributedError

__all__ = ["Collective", "LocalGroup", "TorchGroup", "Traffic", "joined", "rendezvous_deadline", "rendezvous_message", "shard_length"]

T = TypeVar("T")


@dataclass
class Traffic:
    """Payload bytes this rank sent to and received from other ranks through collectives, since the group was made."""

    sent: int = 0
    received: int = 0

    def add(self, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received


def shard_length(numel: int, world_size: int) -> int:
    """Elements per shard when a flat vector of `numel` is cut into `world_size` equal shards (the last zero-padded)."""
    return -(-numel // world_size)


class Collective(Protocol):
    """What training needs from the process group."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def backend(self) -> str | None: ...

    @property
    def traffic(self) -> Traffic: ...

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Every rank's `[m, X]` rows stacked in rank order: `[size * m, X]` on every rank."""
        ...

    def tree_reduce(self, partial: Tensor) -> Tensor:
        """The tree sum (`distributed.tree_sum`) of every rank's `partial` in rank order, on every rank."""
        ...

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        ...


class LocalGroup:
    """A single process: gathering returns the rows, the tree of one partial is that partial, broadcasting returns the
    value; nothing is sent."""

    rank = 0
    size = 1
    backend: str | None = None

    def __init__(self) -> None:
        self.traffic = Traffic()

    def gather_rows(self, rows: Tensor) -> Tensor:
        return rows

    def tree_reduce(self, partial: Tensor) -> Tensor:
        return partial

    def broadcast_int(self, value: int) -> int:
        return value


class TorchGroup:
    """A joined torch.distributed job; a failed or timed-out collective becomes a `DistributedError`."""

    def __init__(self, job: JobEnv, backend: str, device: str, timeout_s: int) -> None:
        self.job = job
        self.backend = backend
        self.timeout_s = timeout_s
        # gloo gathers CPU tensors; NCCL gathers on the worker's device
        self.comm_device = torch.device(device if backend == "nccl" else "cpu")
        self.traffic = Traffic()

    @property
    def rank(self) -> int:
        return self.job.rank

    @property
    def size(self) -> int:
        return self.job.world_size

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (RuntimeError, ValueError) as exc:  # DistBackendError and DistNetworkError are RuntimeErrors
            text = " ".join(str(exc).split())[:300]
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed ({type(exc).__name__}: {text}); another worker died, or hung longer "
                f"than runtime.dist_timeout_s ({self.timeout_s} s); fix: find the worker's error above, then resume with "
                "`geno-pipeline train --resume auto`"
            ) from None

    def gather_rows(self, rows: Tensor) -> Tensor:
        import torch.distributed as dist

        send = rows.detach().to(self.comm_device).contiguous()
        parts = [torch.empty_like(send) for _ in range(self.size)]
        self._guard("all_gather", lambda: dist.all_gather(parts, send))
        payload = send.numel() * send.element_size() * (self.size - 1)
        self.traffic.add(payload, payload)
        return torch.cat(parts).to(rows.device)

    def tree_reduce(self, partial: Tensor) -> Tensor:
        """Shard q of every rank's partial goes to rank q (all-to-all), which sums the W pieces along the tree in rank
        order; every rank then gathers the W summed shards. Element by element this is the tree sum of the partials,
        so the bits do not depend on the sharding; each rank receives about 2(W-1)/W of the vector. At W = 2 the tree
        is one addition per element, which is commutative: the backend's all-reduce gives the same bits and moves the
        same bytes in one collective instead of two."""
        import torch.distributed as dist

        flat = partial.detach().reshape(-1).to(self.comm_device)
        world, shard = self.size, shard_length(flat.numel(), self.size)
        if world == 2:  # two partials: one addition per element, the same bits in any order, in one collective
            summed = flat.clone()
            self._guard("all_reduce", lambda: dist.all_reduce(summed))
            payload = shard * flat.element_size()  # a ring all-reduce: half the vector each way, twice
            self.traffic.add(2 * payload, 2 * payload)
            return summed.view_as(partial).to(partial.device)
        padded = torch.zeros(world * shard, dtype=flat.dtype, device=flat.device)
        padded[: flat.numel()] = flat
        pieces = torch.empty_like(padded)
        self._guard("all_to_all", lambda: dist.all_to_all_single(pieces, padded))
        mine = tree_sum(pieces.view(world, shard))  # shard `rank` of rank 0's partial, of rank 1's, ... summed along the tree
        shards = [torch.empty_like(mine) for _ in range(world)]
        self._guard("all_gather", lambda: dist.all_gather(shards, mine))
        payload = shard * flat.element_size() * (world - 1)
        self.traffic.add(2 * payload, 2 * payload)
        return torch.cat(shards)[: flat.numel()].view_as(partial).to(partial.device)

    def broadcast_int(self, value: int) -> int:
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        self._guard("broadcast", lambda: dist.broadcast(tensor, src=0))
        size = tensor.element_size()
        self.traffic.add(size * (self.size - 1) if self.rank == 0 else 0, 0 if self.rank == 0 else size)
        return int(tensor.item())


RENDEZVOUS_GRACE_S = 5.0
"""How long past runtime.dist_timeout_s the rendezvous deadline waits, so torch's own timeout error comes first where
torch has one."""


def rendezvous_message(job: JobEnv, timeout_s: float) -> str:
    """What a worker says when joining the job outlived its deadline."""
    where = f"{job.master_addr}:{job.master_port}"
    return (
        f"geno-pipeline train: error: rank {job.rank} of {job.world_size}: joining the job at {where} did not finish within "
        f"runtime.dist_timeout_s ({timeout_s} s): something at that address accepted the connection but never answered as the "
        f"job's store (another program, or another job's rendezvous on port {job.master_port}); fix: stop what holds port "
        f"{job.master_port} (see `ss -ltnp 'sport = :{job.master_port}'`) or set MASTER_PORT to a free port, then run again"
    )


@contextmanager
def rendezvous_deadline(
    job: JobEnv, timeout_s: float, *, grace_s: float = RENDEZVOUS_GRACE_S, exit_process: Callable[[int], None] = os._exit
) -> Iterator[None]:
    """Bound the block (the rendezvous) by `timeout_s` + `grace_s`: past it, print one line naming the address
    and the fix and end the process with exit 9. torch's TCPStore client waits for the store's answer without a
    deadline when a listener that is not the store accepts its connection; that wait releases the GIL, so a thread can
    end the process (an exception cannot reach the blocked call)."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(timeout_s + grace_s):
            print(rendezvous_message(job, timeout_s), file=sys.stderr, flush=True)
            exit_process(EXIT_DISTRIBUTED)

    watcher = threading.Thread(target=watch, name="rendezvous-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextmanager
def joined(job: JobEnv | None, *, backend: str, device: str, timeout_s: int) -> Iterator[Collective]:
    """Join `job` (init_process_group from the environment) for the block; a `LocalGroup` when `job` is None."""
    if job is None:
        yield LocalGroup()
        return
    import torch.distributed as dist

    available = {"gloo": dist.is_available() and dist.is_gloo_available(), "nccl": dist.is_available() and dist.is_nccl_available()}
    if not available.get(backend, False):
        raise DistributedError(
            f"torch.distributed backend {backend!r} is not available in this torch build; fix: set runtime.dist_backend: "
            f"{'gloo' if backend == 'nccl' else 'auto'} (NCCL needs a CUDA build of torch and CUDA devices)"
        )
    device_id = None
    if backend == "nccl":
        # NCCL's watchdog ends a worker whose collective times out or fails with SIGABRT, on its own thread: Python
        # never sees an exception there, so have the abort print where each of this worker's threads was
        faulthandler.enable(all_threads=True)
        torch.cuda.set_device(job.local_rank)
        device_id = torch.device(f"cuda:{job.local_rank}")
    group = TorchGroup(job, backend, device, timeout_s)
    with rendezvous_deadline(job, timeout_s):
        group._guard(
            f"joining the job at {job.master_addr}:{job.master_port}",
            lambda: dist.init_process_group(
                backend,
                init_method="env://",
                rank=job.rank,
                world_size=job.world_size,
                timeout=dt.timedelta(seconds=timeout_s),
                device_id=device_id,
            ),
        )
    yield group  # on an error the process exits: tearing down a group whose peer is gone can block for the timeout
    try:
        dist.destroy_process_group()
    except Exception as exc:
        print(f"train: rank {job.rank}: process group teardown: {type(exc).__name__}", file=sys.stderr)
