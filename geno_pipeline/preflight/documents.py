"""JSON documents of the preflight stage: the report and its parts, and the deterministic outcome."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.documents import Document

__all__ = [
    "MIN_CUDA_VRAM_GB",
    "AcceleratorProbe",
    "CheckStatus",
    "DependencyProbe",
    "DeterminismProbe",
    "DiskProbe",
    "DistributedProbe",
    "EnvironmentInfo",
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


class NvmlDevice(Document):
    """A physical GPU (or MIG instance) as NVML reports it."""

    index: int = Field(ge=0)
    """NVML index (ignores CUDA_VISIBLE_DEVICES)."""
    uuid: str
    """GPU UUID (GPU-...)."""
    name: str
    """Product name."""
    total_memory_bytes: int = Field(ge=0)
    """Total memory."""
    free_memory_bytes: int = Field(ge=0)
    """Free memory."""
    used_memory_bytes: int = Field(ge=0)
    """Used memory."""
    mig_enabled: bool | None
    """MIG mode currently enabled (null when not supported)."""
    mig_instances: list[str]
    """UUIDs of MIG instances (MIG-...) when MIG is enabled."""
    compute_capability: str | None
    """e.g. `9.0`."""


class NvmlProbe(Document):
    """What NVML (pynvml from nvidia-ml-py) says about the machine."""

    available: bool
    """nvmlInit succeeded."""
    error_code: str | None
    """Issue code of an nvmlInit failure."""
    error: str | None
    """The NVML error text."""
    driver_version: str | None
    """NVIDIA driver version."""
    cuda_driver_version: str | None
    """CUDA version the driver supports, e.g. `12.4`."""
    devices: list[NvmlDevice]
    """Every GPU NVML sees."""


class TorchDevice(Document):
    """A CUDA device as torch sees it (after CUDA_VISIBLE_DEVICES)."""

    index: int = Field(ge=0)
    """torch device ordinal."""
    name: str
    """Device name."""
    total_memory_bytes: int = Field(ge=0)
    """Total memory."""
    free_memory_bytes: int | None
    """Free memory from torch.cuda.mem_get_info."""
    capability: str
    """Compute capability, e.g. `9.0`."""


class TorchCudaProbe(Document):
    """What torch says about CUDA."""

    torch_version: str | None
    """torch.__version__."""
    cuda_available: bool
    """torch.cuda.is_available()."""
    device_count: int = Field(ge=0)
    """torch.cuda.device_count()."""
    cuda_version: str | None
    """torch.version.cuda (null for a CPU build)."""
    cudnn_version: int | None
    """torch.backends.cudnn.version()."""
    cuda_initialized_before_probe: bool
    """CUDA was already initialised in this process before preflight looked."""
    devices: list[TorchDevice]
    """Visible devices."""
    error: str | None
    """Error text if probing failed."""


class VisibleDevice(Document):
    """A CUDA ordinal mapped to the NVML device behind it."""

    ordinal: int = Field(ge=0)
    """CUDA/torch ordinal (cuda:N)."""
    selector: str
    """The CUDA_VISIBLE_DEVICES entry (or the index when unset)."""
    nvml_index: int | None
    """NVML index of the physical GPU (null when it matches none)."""
    mig_uuid: str | None
    """MIG instance UUID when the entry selects one."""


class AcceleratorProbe(Document):
    """CUDA readiness: NVML, torch, visibility mapping and the VRAM gate."""

    requested_device: str
    """runtime.device as given."""
    resolved_device: str
    """Device training will use: `cpu` or `cuda:N`."""
    required: bool
    """preflight.require_accelerator, or a CUDA device was requested explicitly."""
    available: bool
    """A usable CUDA device was found."""
    device_count: int = Field(ge=0)
    """Usable CUDA devices."""
    device_name: str | None
    """Name of the selected device."""
    total_memory_bytes: int | None
    """Total memory of the selected device."""
    free_memory_bytes: int | None
    """Free memory of the selected device."""
    min_memory_bytes: int = Field(ge=0)
    """preflight.min_vram_gib in bytes."""
    reason: str
    """One sentence: why this device was resolved."""
    issue_code: str | None = None
    """Code of the accelerator's own issue, if any."""
    cuda_visible_devices: str | None
    """CUDA_VISIBLE_DEVICES as set (NVML ignores it; we map it)."""
    visible: list[VisibleDevice]
    """CUDA ordinals mapped to NVML devices."""
    nvml: NvmlProbe
    """NVML view."""
    torch: TorchCudaProbe
    """torch view."""


class DeterminismProbe(Document):
    """The determinism settings train will apply and whether they can take effect."""

    deterministic: bool
    """runtime.deterministic."""
    cublas_workspace_config_env: str | None
    """CUBLAS_WORKSPACE_CONFIG in the environment now."""
    cublas_workspace_config_applied: str | None
    """Value train will use (CUDA and deterministic only)."""
    deterministic_algorithms_supported: bool
    """torch.use_deterministic_algorithms(True) was accepted."""
    tf32_allowed: bool
    """Whether train will allow TF32 (never, when deterministic)."""
    cudnn_benchmark: bool
    """Whether train will enable cuDNN benchmarking (never, when deterministic)."""
    can_take_effect: bool
    """False when CUDA was already initialised before the workspace setting could apply."""


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
    """The multi-process setup train will use (present when runtime.nproc_per_node > 1)."""

    world_size: int = Field(ge=1)
    """Workers of the job (the launcher's WORLD_SIZE, else runtime.nproc_per_node)."""
    nproc_per_node: int = Field(ge=1)
    """runtime.nproc_per_node."""
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
    distributed: DistributedProbe | None = None
    """Multi-process setup (null for one process, or if the probe failed)."""
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
