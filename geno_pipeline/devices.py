"""Which device a job uses: `runtime.device` resolved against what torch can use, and the CUDA ordinals its workers take.

Pure functions with no heavy imports: preflight's torch probe process, preflight itself and train all call these,
so the three agree on the device.
"""

from __future__ import annotations

__all__ = ["requested_cuda_index", "resolve_device", "selected_cuda_ordinals", "worker_device"]


def requested_cuda_index(device: str) -> int | None:
    """`cuda:N` -> N, `cuda` -> 0, anything else -> None."""
    if device.startswith("cuda"):
        return int(device.split(":", 1)[1]) if ":" in device else 0
    return None


def resolve_device(requested: str, *, cuda_usable: bool) -> str:
    """The device training uses: `auto` -> `cuda:0` when CUDA is usable, else `cpu`; `cuda[:N]` -> `cuda:N`."""
    if requested == "auto":
        return "cuda:0" if cuda_usable else "cpu"
    index = requested_cuda_index(requested)
    return "cpu" if index is None else f"cuda:{index}"


def selected_cuda_ordinals(requested: str, *, cuda_usable: bool, nproc_per_node: int) -> list[int]:
    """CUDA ordinals the job will run on: `[N]` for one process on `cuda:N`, `0..nproc_per_node-1` for several workers
    on CUDA (each uses `cuda:LOCAL_RANK`), none on the CPU.

    A CUDA device asked for explicitly is selected even when torch cannot use it, so that preflight can still say
    what is wrong with it.
    """
    index = requested_cuda_index(resolve_device(requested, cuda_usable=cuda_usable))
    if index is None:
        return []
    return list(range(nproc_per_node)) if nproc_per_node > 1 else [index]


def worker_device(requested: str, *, cuda_usable: bool, local_rank: int | None) -> str:
    """The device one training process uses.

    Without a launcher (`local_rank` None) it is `resolve_device`. Under one (LOCAL_RANK set, rank 0 included) a CUDA
    job's worker uses `cuda:LOCAL_RANK`, the GPU the launcher gave it; an explicit `cuda:N` naming another GPU is an
    error (ValueError naming both), never silently replaced or kept.
    """
    device = resolve_device(requested, cuda_usable=cuda_usable)
    if local_rank is None or not device.startswith("cuda"):
        return device
    asked = requested_cuda_index(requested) if ":" in requested else None
    if asked is not None and asked != local_rank:
        raise ValueError(f"runtime.device is {requested} but this worker's LOCAL_RANK is {local_rank}, which gives it cuda:{local_rank}")
    return f"cuda:{local_rank}"
