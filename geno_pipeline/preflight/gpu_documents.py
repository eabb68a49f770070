"""JSON documents of preflight's GPU probes: what NVML and torch see of each CUDA device, which of them this job's
workers use, and the kernel smoke test on each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.documents import Document, FiniteFloat

__all__ = [
    "AcceleratorProbe",
    "ComputeMode",
    "GpuProcess",
    "KernelSmoke",
    "MigInstance",
    "NvmlDevice",
    "NvmlProbe",
    "TorchCudaProbe",
    "TorchDevice",
    "VisibleDevice",
]


ComputeMode = Literal["default", "exclusive_thread", "prohibited", "exclusive_process", "unknown"]


class GpuProcess(Document):
    """A compute process on a GPU, as NVML lists it."""

    pid: int
    """Process id (in NVML's PID namespace: the host's, inside a container)."""
    used_memory_bytes: int | None
    """GPU memory it holds (null when NVML cannot say, e.g. without permission)."""


class MigInstance(Document):
    """A MIG device (a compute instance inside a GPU instance) on a MIG-enabled GPU, as NVML reports it."""

    uuid: str
    """MIG device UUID (MIG-...), the form CUDA_VISIBLE_DEVICES takes."""
    gpu_instance_id: int | None = Field(ge=0)
    """GPU instance id (the `<GI>` of `MIG-GPU-<uuid>/<GI>/<CI>`); null when NVML could not read it."""
    compute_instance_id: int | None = Field(ge=0)
    """Compute instance id (the `<CI>`); null when NVML could not read it."""
    total_memory_bytes: int | None = Field(ge=0)
    """The instance's memory."""
    free_memory_bytes: int | None = Field(ge=0)
    """The instance's free memory, read before any CUDA context of the job or of preflight existed."""


class NvmlDevice(Document):
    """A physical GPU as NVML reports it: identity, memory, and the health and state preflight checks.

    A field is null when NVML could not read it; `not_supported` and `query_errors` say why.
    """

    index: int = Field(ge=0)
    """NVML index (ignores CUDA_VISIBLE_DEVICES)."""
    uuid: str
    """GPU UUID (GPU-...); empty when NVML could not read it."""
    name: str
    """Product name; empty when NVML could not read it."""
    total_memory_bytes: int | None = Field(ge=0)
    """Total memory."""
    free_memory_bytes: int | None = Field(ge=0)
    """Free memory, read before any CUDA context of preflight existed."""
    used_memory_bytes: int | None = Field(ge=0)
    """Used memory."""
    mig_enabled: bool | None
    """MIG mode currently enabled (null when not supported)."""
    mig_instances: list[MigInstance]
    """The MIG devices when MIG is enabled."""
    compute_capability: str | None
    """e.g. `9.0`."""
    driver_version: str | None = None
    """NVIDIA driver version (the same for every GPU of the machine)."""
    cuda_driver_version: str | None = None
    """Newest CUDA version the driver supports, e.g. `12.4` (the same for every GPU of the machine)."""
    pci_bus_id: str | None = None
    """PCI bus id, e.g. `00000000:18:00.0`."""
    temperature_c: int | None = None
    """GPU core temperature (°C)."""
    power_draw_w: float | None = None
    """Power draw now (W)."""
    power_limit_w: float | None = None
    """Enforced power limit (W)."""
    sm_clock_mhz: int | None = None
    """SM clock now (MHz)."""
    memory_clock_mhz: int | None = None
    """Memory clock now (MHz)."""
    max_sm_clock_mhz: int | None = None
    """Highest SM clock (MHz)."""
    clock_event_reasons: list[str] | None = None
    """Clock-event (throttle) reasons active now, e.g. `hw_thermal_slowdown`, `gpu_idle`."""
    ecc_enabled: bool | None = None
    """ECC mode now."""
    ecc_pending_enabled: bool | None = None
    """ECC mode after the next reset."""
    ecc_volatile_uncorrected: int | None = Field(None, ge=0)
    """Uncorrectable ECC errors since the driver loaded (XID 48)."""
    ecc_volatile_corrected: int | None = Field(None, ge=0)
    """Corrected ECC errors since the driver loaded."""
    ecc_aggregate_uncorrected: int | None = Field(None, ge=0)
    """Uncorrectable ECC errors over the GPU's life."""
    retired_pages_pending: bool | None = None
    """Pages with errors wait to be retired at the next reset (pre-Ampere GPUs; XID 63/64)."""
    remapped_rows_correctable: int | None = Field(None, ge=0)
    """Memory rows remapped for correctable errors (Ampere and later)."""
    remapped_rows_uncorrectable: int | None = Field(None, ge=0)
    """Memory rows remapped for uncorrectable errors (Ampere and later)."""
    row_remap_pending: bool | None = None
    """A row remap waits for the next reset (XID 94/95)."""
    row_remap_failed: bool | None = None
    """A row remap failed: the GPU cannot hide a bad row."""
    compute_mode: ComputeMode | None = None
    """Compute mode (`prohibited` refuses CUDA contexts; `exclusive_process` allows one)."""
    persistence_mode: bool | None = None
    """The driver stays loaded with no client (faster start); recorded, not judged."""
    processes: list[GpuProcess] | None = None
    """Compute processes on the GPU before preflight touched it."""
    not_supported: dict[str, str] = Field(default_factory=dict)
    """Queries this GPU or driver does not support, with NVML's text (their checks are `skip`)."""
    query_errors: dict[str, str] = Field(default_factory=dict)
    """Queries that failed for another reason, with the error."""
    lost: bool = False
    """NVML answered GPU_IS_LOST: the GPU fell off the bus or hangs."""
    handle_error: str | None = None
    """nvmlDeviceGetHandleByIndex failed (e.g. `NO_PERMISSION: Insufficient Permissions`): NVML counts the GPU but cannot
    open it, so nothing else about it is known and every health check of it fails."""


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
    """CUDA version the driver supports, e.g. `12.4` (null when NVML could not say: see `query_errors`)."""
    devices: list[NvmlDevice]
    """Every GPU NVML sees."""
    query_errors: dict[str, str] = Field(default_factory=dict)
    """Machine-wide queries that failed (`driver_version`, `cuda_driver_version`, `device_count`), each with the error;
    every other query still ran."""


class TorchDevice(Document):
    """A CUDA device as torch sees it (after CUDA_VISIBLE_DEVICES)."""

    index: int = Field(ge=0)
    """torch device ordinal."""
    name: str
    """Device name."""
    total_memory_bytes: int = Field(ge=0)
    """Total memory."""
    capability: str
    """Compute capability, e.g. `9.0`."""
    uuid: str | None = None
    """The device's UUID as CUDA reports it (`xxxxxxxx-xxxx-...`, no `GPU-`/`MIG-` prefix): how preflight finds the NVML
    device behind each CUDA ordinal."""
    pci_bus_id: str | None = None
    """`domain:bus:device` in NVML's form (`00000000:18:00`), the fallback for that mapping."""
    free_memory_bytes: int | None = Field(None, ge=0)
    """Free memory torch reports on a device the job uses, read after the probe process's own CUDA context exists (so
    lower than NVML's reading by that context): the VRAM gate's fallback where NVML cannot read the device; null
    elsewhere."""


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
    arch_list: list[str] = Field(default_factory=list)
    """torch.cuda.get_arch_list(): the GPU architectures this build has kernels (sm_XY) or PTX (compute_XY) for."""
    cuda_initialized_before_probe: bool
    """CUDA was initialised by `import torch` alone, before anything asked for it (something in the environment does it,
    and it would do it in train too, before the determinism settings)."""
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
    """MIG instance UUID when the ordinal is one."""
    mapped_by: Literal["uuid", "pci_bus_id", "cuda_visible_devices", "only_gpu"] | None = None
    """How the NVML device was found: the UUID CUDA reports (`uuid`), its PCI bus id, a UUID entry of
    CUDA_VISIBLE_DEVICES, or the machine's only GPU; never by position, since NVML's index need not be CUDA's ordinal."""


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
    """Total memory of the selected device (its MIG instance's, for a MIG device)."""
    free_memory_bytes: int | None
    """Free memory of the selected device, from NVML before any CUDA context existed (null when unknown)."""
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
    selected_ordinals: list[int] = Field(default_factory=list)
    """CUDA ordinals the job will run on (its worker on `cuda:N`, or one per worker); the GPU checks look at these."""
    nvml: NvmlProbe
    """NVML view."""
    torch: TorchCudaProbe
    """torch view."""


class KernelSmoke(Document):
    """The kernel smoke test on one CUDA device: a seeded fp32 matmul, run twice, against a float64 CPU product."""

    ordinal: int = Field(ge=0)
    """CUDA ordinal (cuda:N)."""
    outcome: Literal["ok", "mismatch", "nondeterministic", "failed", "timeout"]
    """ok; mismatch (error above tolerance, or not finite); nondeterministic (the two runs differ); failed (raised, or the
    probe process died); timeout (no answer within preflight.cuda_timeout_s)."""
    size: int = Field(ge=1)
    """Matrix side."""
    seed: int = Field(ge=0)
    """Seed of the CPU generator that drew both matrices."""
    max_rel_error: FiniteFloat | None
    """max |device - CPU| / max |CPU| (null when it did not finish, or when it is not finite: `error` then says so)."""
    tolerance: float = Field(gt=0)
    """Largest accepted max_rel_error (fp32; wider when TF32 is allowed)."""
    repeat_identical: bool | None
    """The two device results are bitwise identical."""
    duration_ms: float | None = Field(ge=0)
    """Wall time on the device, CUDA start-up included (null after a timeout)."""
    timeout_s: float = Field(gt=0)
    """The bound it ran under."""
    error: str | None
    """Exception text, what stopped it, or why `max_rel_error` is null (a NaN or infinite result)."""
