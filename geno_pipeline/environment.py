"""The deterministic environment fingerprint (artifacts/preflight/environment.json).

It holds only what can change numerical results: library versions, CPU class, device kind, dtype,
determinism flags and thread count. No hostnames, paths or times, so it is stable across runs
on the same class of machine and `train` (which depends on it) reruns only when it changes.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Literal

from pydantic import Field

from geno_pipeline.config import RuntimeParams
from geno_pipeline.devices import requested_cuda_index, worker_device
from geno_pipeline.documents import Document
from geno_pipeline.errors import TrainingError
from geno_pipeline.torchflags import CUBLAS_WORKSPACE_CONFIG

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "EnvironmentFingerprint",
    "build_fingerprint",
    "device_kind",
    "package_version",
    "torch_training_device",
]


class EnvironmentFingerprint(Document):
    """Everything about the environment that can change training results."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    python: str
    """Python major.minor."""
    machine: str
    """CPU architecture (platform.machine())."""
    cpu_class: str | None
    """`<CPU vendor>/<instruction set torch's CPU kernels use>`, e.g. `AuthenticAMD/AVX512` (torchflags.cpu_kernel_class):
    torch's kernels and the BLAS take different code paths, hence round differently, on different CPU classes. Read
    from torch by train in its own process and by preflight in its torch probe process (null when that did not report)."""
    torch_version: str | None
    """Installed torch version."""
    numpy_version: str | None
    """Installed numpy version."""
    device_kind: str
    """`cpu`, or `cuda:<device name>:sm_<capability>` for the resolved CUDA device."""
    dtype: Literal["float32"] = "float32"
    """Training dtype."""
    deterministic: bool
    """Deterministic algorithms requested (runtime.deterministic)."""
    cpu_threads: int = Field(ge=1)
    """torch intra-op threads."""
    cublas_workspace_config: str | None
    """CUBLAS_WORKSPACE_CONFIG train applies (CUDA and deterministic only)."""
    tf32: bool
    """Whether TF32 is allowed (torch's fp32_precision of cuBLAS matmuls or cuDNN is `tf32`, or
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 on CUDA), as torch reports it after the determinism settings: train reads it in
    its own process, preflight in its torch probe process (off when runtime.deterministic is true, on otherwise)."""
    world_size: int = Field(ge=1)
    """Worker processes in the job (the launcher's WORLD_SIZE, else runtime.nproc_per_node); the bytes do not depend on it
    (train.micro_batches fixes the reduction order), but the run identity names it."""
    nproc_per_node: int = Field(ge=1)
    """runtime.nproc_per_node."""
    dist_backend: Literal["gloo", "nccl"] | None
    """torch.distributed backend of a multi-process run (runtime.dist_backend resolved); null for one process."""
    dist_timeout_s: int = Field(ge=1)
    """runtime.dist_timeout_s."""


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def build_fingerprint(
    runtime: RuntimeParams, *, device_kind: str, world_size: int, tf32: bool, cpu_class: str | None
) -> EnvironmentFingerprint:
    """The fingerprint for the resolved device kind and world size under `runtime` params; `tf32` and `cpu_class` are
    what torch reported after the determinism settings were applied."""
    from geno_pipeline.distributed import resolve_backend

    cuda = device_kind.startswith("cuda")
    return EnvironmentFingerprint(
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        machine=platform.machine(),
        cpu_class=cpu_class,
        torch_version=package_version("torch"),
        numpy_version=package_version("numpy"),
        device_kind=device_kind,
        deterministic=runtime.deterministic,
        cpu_threads=runtime.cpu_threads,
        cublas_workspace_config=CUBLAS_WORKSPACE_CONFIG if (cuda and runtime.deterministic) else None,
        tf32=tf32,
        world_size=world_size,
        nproc_per_node=runtime.nproc_per_node,
        dist_backend=resolve_backend(runtime.dist_backend, device_kind) if world_size > 1 else None,  # type: ignore[arg-type]
        dist_timeout_s=runtime.dist_timeout_s,
    )


def device_kind(device: str, *, name: str | None, capability: str | None) -> str:
    """The fingerprint's device kind: `cpu`, or `cuda:<name>:sm_<capability>` (preflight and train both call this)."""
    if not device.startswith("cuda"):
        return "cpu"
    if name is None or capability is None:
        return "cuda"
    return f"cuda:{name}:sm_{capability.replace('.', '')}"


def torch_training_device(requested: str, *, local_rank: int | None = None) -> tuple[str, str]:
    """(device, device kind) for training, asking torch; raises `TrainingError` when a CUDA device is not usable.

    A worker of a launched job (`local_rank` from LOCAL_RANK) on CUDA uses `cuda:<local_rank>` (`devices.worker_device`)."""
    import torch

    usable = bool(torch.cuda.is_available())
    try:
        device = worker_device(requested, cuda_usable=usable, local_rank=local_rank)
    except ValueError as exc:
        raise TrainingError(
            f"{exc}; fix: set runtime.device: cuda (each worker then uses cuda:LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        ) from None
    index = requested_cuda_index(device)
    if index is None:
        return device, device_kind(device, name=None, capability=None)
    if not usable or index >= torch.cuda.device_count():
        raise TrainingError(
            f"runtime.device is {requested} but torch cannot use that CUDA device; "
            "fix: run preflight to see why, or set runtime.device: auto or cpu"
        )
    props = torch.cuda.get_device_properties(torch.device(device))
    return device, device_kind(device, name=str(props.name), capability=f"{props.major}.{props.minor}")
