"""Fake machines for preflight tests, injected through the API: an NVML module, torch's CUDA facts and the torch probe
process. Nothing here is used by the shipped code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from geno_pipeline.preflight.checks.dependencies import DependencySpec
from geno_pipeline.preflight.documents import DependencyProbe, KernelSmoke, TorchCudaProbe, TorchDevice
from geno_pipeline.preflight.torch_process import TorchDeterminismFlags, TorchProbePlan, TorchProcessFacts

GIB = 1024**3
NOT_SUPPORTED, GPU_IS_LOST, UNKNOWN = 3, 15, 999

_MESSAGES = {
    12: "NVML Shared Library Not Found",
    9: "Driver Not Loaded",
    18: "RM has detected an NVML/RM version mismatch",
    NOT_SUPPORTED: "Not Supported",
    GPU_IS_LOST: "GPU is lost",
}


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(_MESSAGES.get(value, "Unknown Error"))
        self.value = value


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None  # pynvml's field name


@dataclass
class FakeGpu:
    """A GPU and its health; `unsupported` names NVML functions that answer NotSupported, `raises` ones that fail."""

    uuid: str
    name: str
    total: int
    free: int
    mig: bool | None = False
    mig_uuids: list[str] = field(default_factory=list)
    capability: tuple[int, int] = (9, 0)
    ecc_mode: tuple[int, int] = (1, 1)
    ecc_volatile_uncorrected: int = 0
    ecc_volatile_corrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    retired_pending: int = 0
    remap: tuple[int, int, int, int] = (0, 0, 0, 0)  # correctable, uncorrectable, pending, failed
    clock_reasons: int = 0x1  # gpu_idle
    compute_mode: int = 0
    persistence: int = 1
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    raises: dict[str, int] = field(default_factory=dict)


@dataclass
class _Mem:
    total: int
    free: int
    used: int


@dataclass
class _Pci:
    busId: bytes  # pynvml's field name


class FakeNvml:
    """Mimics the pynvml functions the probe calls; `calls` records their order."""

    NVMLError = FakeNVMLError
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_GPU_IS_LOST = GPU_IS_LOST
    NVML_DEVICE_MIG_ENABLE = 1
    nvmlMemory_v2 = 0x2000028

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None, cuda_driver: int = 12040) -> None:
        self.gpus = gpus or []
        self.init_error = init_error
        self.cuda_driver = cuda_driver
        self.calls: list[str] = []

    def _check(self, h: FakeGpu, name: str) -> None:
        self.calls.append(name)
        if name in h.unsupported:
            raise FakeNVMLError(NOT_SUPPORTED)
        if name in h.raises:
            raise FakeNVMLError(h.raises[name])

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None: ...

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda_driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        self._check(self.gpus[i], "nvmlDeviceGetHandleByIndex")
        return self.gpus[i]

    def nvmlDeviceGetUUID(self, h: FakeGpu | str) -> str:
        return h if isinstance(h, str) else h.uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> bytes:
        return h.name.encode()

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu, version: int | None = None) -> _Mem:
        return _Mem(h.total, h.free, h.total - h.free)

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> tuple[int, int]:
        if h.mig is None:
            raise FakeNVMLError(NOT_SUPPORTED)
        return (1, 1) if h.mig else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return len(h.mig_uuids)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGpu, j: int) -> str:
        return h.mig_uuids[j]

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return h.capability

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> _Pci:
        self._check(h, "nvmlDeviceGetPciInfo")
        return _Pci(f"00000000:{self.gpus.index(h) + 0x18:02X}:00.0".encode())

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        self._check(h, "nvmlDeviceGetTemperature")
        return 45

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetEnforcedPowerLimit")
        return 700_000

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetPowerUsage")
        return 95_500

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        self._check(h, "nvmlDeviceGetClockInfo")
        return {1: 1980, 2: 2619}[clock]

    def nvmlDeviceGetMaxClockInfo(self, h: FakeGpu, clock: int) -> int:
        self._check(h, "nvmlDeviceGetMaxClockInfo")
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetCurrentClocksEventReasons")
        return h.clock_reasons

    def nvmlDeviceGetEccMode(self, h: FakeGpu) -> list[int]:
        self._check(h, "nvmlDeviceGetEccMode")
        return list(h.ecc_mode)

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter: int) -> int:
        self._check(h, "nvmlDeviceGetTotalEccErrors")
        if counter == 1:
            return h.ecc_aggregate_uncorrected if error_type == 1 else 0
        return h.ecc_volatile_uncorrected if error_type == 1 else h.ecc_volatile_corrected

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetRetiredPagesPendingStatus")
        return h.retired_pending

    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        self._check(h, "nvmlDeviceGetRemappedRows")
        return h.remap

    def nvmlDeviceGetComputeMode(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetComputeMode")
        return h.compute_mode

    def nvmlDeviceGetPersistenceMode(self, h: FakeGpu) -> int:
        self._check(h, "nvmlDeviceGetPersistenceMode")
        return h.persistence

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[FakeProcess]:
        self._check(h, "nvmlDeviceGetComputeRunningProcesses")
        return [FakeProcess(pid, mem) for pid, mem in h.processes]


def fake_torch(
    devices: list[tuple[str, int, int]] | None = None,
    *,
    available: bool | None = None,
    capability: str = "9.0",
    cuda_version: str = "12.4",
    arch_list: list[str] | None = None,
) -> TorchCudaProbe:
    """torch's CUDA facts for a list of (name, total, free) devices (none: a CPU build)."""
    devs = [
        TorchDevice(index=i, name=n, total_memory_bytes=t, free_memory_bytes=f, capability=capability)
        for i, (n, t, f) in enumerate(devices or [])
    ]
    avail = bool(devs) if available is None else available
    return TorchCudaProbe(
        torch_version="2.13.0",
        cuda_available=avail,
        device_count=len(devs) if avail else 0,
        cuda_version=cuda_version if avail else None,
        cudnn_version=90100 if avail else None,
        arch_list=(arch_list if arch_list is not None else ["sm_80", "sm_86", "sm_90"]) if avail else [],
        cuda_initialized_before_probe=False,
        devices=devs if avail else [],
        error=None,
    )


FAKE_CPU_CLASS = "GenuineIntel/AVX2"
"""The CPU class the fakes report (vendor/instruction set): not the class of the machines that run the tests."""

DETERMINISTIC = TorchDeterminismFlags(
    deterministic_algorithms=True,
    deterministic_warn_only=False,
    cudnn_benchmark=False,
    cudnn_deterministic=True,
    tf32_matmul=False,
    tf32_cudnn=False,
    cuda_initialized_before=False,
    cpu_class=FAKE_CPU_CLASS,
)


def kernel(ordinal: int, outcome: str = "ok", *, error: float | None = 2.5e-7, identical: bool | None = True) -> KernelSmoke:
    """A kernel smoke result as the probe process reports it."""
    return KernelSmoke(
        ordinal=ordinal, outcome=outcome, size=256, seed=20240229, max_rel_error=error, tolerance=1e-4,  # type: ignore[arg-type]
        repeat_identical=identical, duration_ms=None if outcome == "timeout" else 12.0, timeout_s=60.0,
        error=None if outcome in ("ok", "mismatch", "nondeterministic") else f"{outcome} on cuda:{ordinal}",
    )  # fmt: skip


@dataclass
class FixedTorchProcess:
    """A torch probe process that answers fixed facts; records the plan and when CUDA was released."""

    cuda: TorchCudaProbe | None = None
    determinism: TorchDeterminismFlags | None = DETERMINISTIC
    kernels: list[KernelSmoke] = field(default_factory=list)
    imported: bool = True
    failure: str | None = None
    nvml: FakeNvml | None = None  # when given, release_cuda records how many NVML calls came before it
    plan: TorchProbePlan | None = None
    released_after_nvml_calls: int | None = None
    closed: bool = False

    def __call__(self, plan: TorchProbePlan) -> FixedTorchProcess:
        self.plan = plan
        return self

    def release_cuda(self) -> None:
        if self.released_after_nvml_calls is None:
            self.released_after_nvml_calls = len(self.nvml.calls) if self.nvml is not None else 0

    def facts(self) -> TorchProcessFacts:
        self.release_cuda()
        return TorchProcessFacts(
            imported=self.imported, import_error=None if self.imported else "import failed: ImportError: libtorch_cpu.so",
            version="2.13.0", import_ms=900.0, cuda=self.cuda if self.imported else None,
            determinism=self.determinism if self.imported else None, kernels=self.kernels, failure=self.failure,
        )  # fmt: skip

    def close(self) -> None:
        self.closed = True


def ok_dependency(spec: DependencySpec) -> DependencyProbe:
    return DependencyProbe(
        import_name=spec.import_name,
        package=spec.package,
        required=spec.required,
        available=True,
        version="99.0",
        minimum_version=spec.minimum_version,
        version_ok=True,
        reason="ok",
        duration_ms=0.0,
    )


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_of(root: Path) -> list[int]:
    """Live processes working on project `root`: its path on their command line or as their working directory (a
    forked child keeps both of its parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(root) in cmdline or cwd == str(root)) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
