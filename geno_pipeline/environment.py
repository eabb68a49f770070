"""The deterministic environment fingerprint (artifacts/preflight/environment.json).

It holds only what can change numerical results: library versions, device kind, dtype,
determinism flags and thread count. No hostnames, paths or times, so it is stable across runs
on the same class of machine and `train` (which depends on it) reruns only when it changes.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from geno_pipeline.config import RuntimeParams

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "EnvironmentFingerprint", "build_fingerprint", "package_version"]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"


class EnvironmentFingerprint(BaseModel):
    """Everything about the environment that can change training results."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    python: str
    """Python major.minor."""
    machine: str
    """CPU architecture (platform.machine())."""
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
    """Whether TF32 matmuls are allowed."""


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def build_fingerprint(runtime: RuntimeParams, *, device_kind: str) -> EnvironmentFingerprint:
    """The fingerprint for the resolved device kind under `runtime` params."""
    cuda = device_kind.startswith("cuda")
    return EnvironmentFingerprint(
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        machine=platform.machine(),
        torch_version=package_version("torch"),
        numpy_version=package_version("numpy"),
        device_kind=device_kind,
        deterministic=runtime.deterministic,
        cpu_threads=runtime.cpu_threads,
        cublas_workspace_config=CUBLAS_WORKSPACE_CONFIG if (cuda and runtime.deterministic) else None,
        tf32=False,
    )
