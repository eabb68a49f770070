"""Memory check: the training run's estimated peak (`training.budget.train_memory`) against this machine's memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from geno_pipeline.config import Params
from geno_pipeline.distributed import planned_world_size
from geno_pipeline.hostmem import available_host_memory
from geno_pipeline.preflight.checks.base import Finding, passed, problem
from geno_pipeline.preflight.documents import AcceleratorProbe, MemoryProbe
from geno_pipeline.preflight.visibility import memory_of
from geno_pipeline.training.budget import GIB, MEMORY_REMEDY, MemoryEstimate, memory_shortfall, train_memory

__all__ = ["MemoryCheck", "probe_memory"]


def probe_memory(params: Params, accelerator: AcceleratorProbe, available: Callable[[], int | None] = available_host_memory) -> MemoryProbe:
    """The estimate for this node's workers (`runtime.nproc_per_node`, already the launcher's share) and what it has."""
    data, runtime = params.data, params.runtime
    device = "cuda" if accelerator.resolved_device.startswith("cuda") else "cpu"
    estimate = train_memory(
        params.train, params.collapse, window_length=data.window_length, slot_length=data.window_length + data.flank_length,
        train_windows=data.train_windows, valid_windows=data.valid_windows, world_size=planned_world_size(runtime.nproc_per_node),
        workers_here=runtime.nproc_per_node, device=device,
    )  # fmt: skip
    frees = [memory_of(o, accelerator.visible, accelerator.nvml, accelerator.torch.devices).free for o in accelerator.selected_ordinals]
    known = [f for f in frees if f is not None]
    return MemoryProbe(
        workers=estimate.workers,
        device=device,
        parts_bytes=estimate.parts,
        host_need_bytes=estimate.host,
        host_available_bytes=available(),
        device_need_bytes=estimate.device_per_worker,
        device_free_bytes=min(known) if device == "cuda" and known else None,
    )


@dataclass(frozen=True)
class MemoryCheck:
    """`memory`: the run fits in this machine's memory (and each worker's GPU)."""

    params: Params  # with this node's share of the job in runtime.nproc_per_node
    accelerator: AcceleratorProbe
    path: str  # the params file, named in the issue
    name: str = "memory"
    available: Callable[[], int | None] = available_host_memory

    def probe(self) -> MemoryProbe:
        return probe_memory(self.params, self.accelerator, self.available)

    def assess(self, facts: MemoryProbe) -> list[Finding]:
        estimate = MemoryEstimate(parts=facts.parts_bytes, workers=facts.workers, device=facts.device)
        short = memory_shortfall(estimate, host_available=facts.host_available_bytes, device_free=facts.device_free_bytes)
        if short is not None:
            return [problem(self.name, "error", "memory.insufficient", self.path, short, MEMORY_REMEDY)]
        have = "unknown" if facts.host_available_bytes is None else f"{facts.host_available_bytes / GIB:.1f} GiB"
        text = f"training needs about {facts.host_need_bytes / GIB:.1f} GiB of memory, {have} available"
        if facts.device == "cuda":
            free = "unknown" if facts.device_free_bytes is None else f"{facts.device_free_bytes / GIB:.1f} GiB"
            text += f"; about {facts.device_need_bytes / GIB:.1f} GiB per GPU, {free} free"
        return [passed(self.name, text)]
