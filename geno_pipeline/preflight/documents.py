"""JSON documents of the preflight stage: the report and its parts, and the deterministic outcome (the GPU probes' parts
are in `gpu_documents`, re-exported here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.preflight.gpu_documents import (
    AcceleratorProbe,
    ComputeMode,
    GpuProcess,
    KernelSmoke,
    MigInstance,
    NvmlDevice,
    NvmlProbe,
    TorchCudaProbe,
    TorchDevice,
    VisibleDevice,
)

__all__ = [
    "MIN_CUDA_VRAM_GB",
    "AcceleratorProbe",
    "CheckStatus",
    "ComputeMode",
    "CpuProbe",
    "DependencyProbe",
    "DeterminismProbe",
    "DiskProbe",
    "DistributedProbe",
    "EnvironmentInfo",
    "GpuProcess",
    "KernelSmoke",
    "MigInstance",
    "NvmlDevice",
    "NvmlProbe",
    "PreflightCheck",
    "PreflightOutcome",
    "PreflightReport",
    "Severity",
    "SmokeTest",
    "TorchCudaProbe",
    "TorchDevice",
    "TrainingPreflightIssue",
    "TrainingPreflightReport",
    "VisibleDevice",
]

MIN_CUDA_VRAM_GB = 2.0

CheckStatus = Literal["pass", "warn", "fail", "skip"]
Severity = Literal["error", "warning"]


class TrainingPreflightIssue(Document):
    """One preflight issue with a stable code and a remedy."""

    severity: Severity
    """`error` makes the report not ok; `warning` does not."""
    code: str = Field(pattern=r"^[a-z_]+(\.[a-z0-9_]+)+$")
    """Stable machine-readable code, e.g. `accelerator.insufficient_vram`."""
    path: str | None
    """File, params key or device the issue is about."""
    message: str
    """What is wrong."""
    remedy: str
    """How to fix it."""


class PreflightCheck(Document):
    """One line of the preflight table."""

    name: str
    """Check name, e.g. `dependency.torch`."""
    status: CheckStatus
    """pass, warn, fail or skip."""
    code: str | None
    """Issue code behind a non-pass status."""
    message: str
    """What was seen."""
    remedy: str | None
    """How to fix a warn/fail."""
    duration_ms: float = Field(ge=0)
    """Time the check took."""


class DependencyProbe(Document):
    """Importability and version of one dependency."""

    import_name: str
    """Module imported, e.g. `yaml`."""
    package: str
    """Distribution name, e.g. `PyYAML`."""
    required: bool
    """Whether a failure is an error (else a warning)."""
    available: bool
    """The import succeeded."""
    version: str | None
    """Installed version from importlib.metadata."""
    minimum_version: str | None
    """Minimum version declared in pyproject.toml."""
    version_ok: bool | None
    """version >= minimum_version (null when either is unknown)."""
    reason: str
    """`ok`, or why the import or version check failed."""
    duration_ms: float = Field(ge=0)
    """Import time."""


class DeterminismProbe(Document):
    """The determinism settings train applies, applied in preflight's torch probe process and read back from torch."""

    deterministic: bool
    """runtime.deterministic."""
    cublas_workspace_config_env: str | None
    """CUBLAS_WORKSPACE_CONFIG in the environment now."""
    cublas_workspace_config_applied: str | None
    """Value train will use (CUDA and deterministic only)."""
    deterministic_algorithms_supported: bool
    """torch reports deterministic algorithms on (not warn-only) exactly when runtime.deterministic asks for them."""
    tf32_allowed: bool
    """cuBLAS or cuDNN may use TF32 after the settings, as torch reports it through the API it has (fp32_precision on
    torch >= 2.9, allow_tf32 before), or through TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 on CUDA (false when deterministic)."""
    tf32_cublas_override: bool = False
    """TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 is set: torch lets cuBLAS use TF32 whatever the settings say."""
    cudnn_benchmark: bool
    """torch.backends.cudnn.benchmark after the settings."""
    can_take_effect: bool
    """False when CUDA was already initialised before the settings were applied (the workspace setting may not apply)."""
    cpu_class: str
    """`<CPU vendor>/<instruction set torch's CPU kernels use>`, e.g. `AuthenticAMD/AVX512`, as the probe process read it:
    part of the environment class (CPU float results are bit-identical only within one)."""


class DiskProbe(Document):
    """Free space and writability where artifacts/ lives."""

    path: str
    """Directory checked."""
    free_bytes: int = Field(ge=0)
    """Free bytes."""
    min_free_bytes: int = Field(ge=0)
    """preflight.min_free_disk_gib in bytes."""
    writable: bool
    """A real file write and delete succeeded."""


class CpuProbe(Document):
    """This machine's recent load against the threads training asks for."""

    cores: int = Field(ge=1)
    """CPUs this process may run on."""
    load_1m: float | None = Field(ge=0)
    """1-minute load average: tasks running or waiting to run (null where the platform has none)."""
    threads: int = Field(ge=1)
    """runtime.nproc_per_node x runtime.cpu_threads on this node."""


class MemoryProbe(Document):
    """The memory the training run needs (estimated from the params) against what this machine has."""

    workers: int = Field(ge=1)
    """Training workers on this machine."""
    device: str
    """`cpu` (every part in host memory) or `cuda` (the model's parts on each worker's GPU)."""
    parts_bytes: dict[str, int]
    """Estimated peak bytes of one worker, by part."""
    host_need_bytes: int = Field(ge=0)
    """Host bytes every worker on this machine needs together."""
    host_available_bytes: int | None
    """MemAvailable, or less under a cgroup limit (null: unknown)."""
    device_need_bytes: int = Field(ge=0)
    """GPU bytes one worker needs (0 on the CPU)."""
    device_free_bytes: int | None
    """Least free memory of the job's GPUs on this node (null: CPU, or unknown)."""


class SmokeTest(Document):
    """A bounded two-process loopback all-reduce and all-gather on the chosen backend."""

    ran: bool
    """False when it could not run (the backend is unavailable)."""
    ok: bool
    """Both processes joined, all-reduced [1] + [2] to [3] and gathered [0, 1]."""
    seconds: float = Field(ge=0)
    """Wall time, process start-up included."""
    timeout_s: float = Field(gt=0)
    """Bound on the whole test."""
    error: str | None
    """What failed: a worker's last error line, or the timeout."""


class DistributedProbe(Document):
    """The multi-process setup train will use (present when the job has more than one worker)."""

    world_size: int = Field(ge=1)
    """Workers of the job (the launcher's WORLD_SIZE, else runtime.nproc_per_node)."""
    nproc_per_node: int = Field(ge=1)
    """Workers on this node: LOCAL_WORLD_SIZE, else the launcher's WORLD_SIZE, else runtime.nproc_per_node."""
    launcher: bool = False
    """An external launcher runs the job (WORLD_SIZE is set): it picks the rendezvous and the workers per node."""
    backend: str
    """runtime.dist_backend resolved for the device: gloo or nccl."""
    backend_available: bool
    """torch.distributed and the backend are built into this torch."""
    device: str
    """Device kind the workers use: cpu or cuda."""
    devices_visible: int = Field(ge=0)
    """CUDA devices torch sees (CUDA only; 0 on the CPU)."""
    cpu_cores: int | None
    """os.cpu_count()."""
    cpu_threads_per_worker: int = Field(ge=1)
    """runtime.cpu_threads."""
    port: int | None
    """Rendezvous port of a self-launched job (MASTER_PORT, else 29500); null when a launcher already set up the job."""
    port_free: bool | None
    """The port could be bound on 127.0.0.1."""
    smoke: SmokeTest
    """Loopback smoke test."""


class EnvironmentInfo(Document):
    """Where preflight ran (volatile: this report is not a DVC output)."""

    python: str
    """Python version."""
    platform: str
    """platform.platform()."""
    machine: str
    """platform.machine()."""
    packages: dict[str, str | None]
    """Installed versions of the pipeline's dependencies."""


class PreflightReport(Document):
    """Machine-readable readiness evidence for a training run (reports/preflight.json)."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    generated_by: str
    """Tool and version."""
    generated_at: str
    """UTC time of the report."""
    ok: bool
    """True when there is no error-severity issue."""
    resolved_device: str
    """Device training will use."""
    params_path: str
    """Params file checked."""
    params_valid: bool
    """params.yaml validated."""
    dataset_dir: str
    """Dataset directory checked."""
    dataset_id: str | None
    """Dataset id from its manifest, when readable."""
    environment: EnvironmentInfo
    """Python, platform and package versions."""
    accelerator: AcceleratorProbe
    """CUDA readiness."""
    dependencies: list[DependencyProbe]
    """Dependency probes."""
    determinism: DeterminismProbe | None
    """Determinism settings (null if the probe failed)."""
    disk: DiskProbe | None
    """Disk probe (null if the probe failed)."""
    cpu: CpuProbe | None = None
    """This machine's recent load against the threads training asks for (null if the probe failed)."""
    memory: MemoryProbe | None = None
    """Memory the training run needs against the machine's (null if the probe failed)."""
    distributed: DistributedProbe | None = None
    """Multi-process setup (null for one process, or if the probe failed)."""
    kernel_smoke: list[KernelSmoke] = Field(default_factory=list)
    """Kernel smoke test per selected CUDA device (empty on the CPU)."""
    checks: list[PreflightCheck]
    """One row per check."""
    issues: list[TrainingPreflightIssue]
    """Every problem found, errors first."""


class PreflightOutcome(Document):
    """Deterministic summary of the preflight run (artifacts/preflight/outcome.json)."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    ok: bool
    """Preflight found no error."""
    resolved_device: str
    """Device training will use."""
    error_codes: list[str]
    """Codes of error-severity issues (sorted)."""
    warning_codes: list[str]
    """Codes of warnings (sorted)."""


TrainingPreflightReport = PreflightReport
