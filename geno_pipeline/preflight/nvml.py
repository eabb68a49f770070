"""NVML (pynvml from nvidia-ml-py): the driver, every GPU, and each GPU's health and state.

The NVML module is an argument so tests can fake any machine. Every query has its own error handling, so one failing
call never hides the others: a query the GPU does not support, or that the driver's library lacks (pynvml raises
FUNCTION_NOT_FOUND for a symbol an older driver does not export), is recorded in `not_supported` (its check becomes
`skip`); any other failure in `query_errors`; GPU_IS_LOST marks the GPU lost; a GPU whose handle cannot be opened keeps
the error in `handle_error`. Nothing here raises for an NVML error.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from geno_pipeline.preflight.documents import ComputeMode, GpuProcess, MigInstance, NvmlDevice, NvmlProbe

__all__ = ["CLOCK_EVENT_REASONS", "SLOWDOWN_REASONS", "clock_event_names", "nvml_error_name", "nvml_init_error_code", "probe_nvml"]

_NVML_INIT_CODES = (
    ("NVML_ERROR_LIBRARY_NOT_FOUND", 12, "nvml.library_not_found"),
    ("NVML_ERROR_DRIVER_NOT_LOADED", 9, "nvml.driver_not_loaded"),
    ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", 18, "nvml.driver_library_mismatch"),
    ("NVML_ERROR_NO_PERMISSION", 4, "nvml.no_permission"),
)
_NOT_SUPPORTED, _FUNCTION_NOT_FOUND, _GPU_IS_LOST = 3, 13, 15  # nvmlReturn_t (NOT_SUPPORTED, FUNCTION_NOT_FOUND, GPU_IS_LOST)
_UNCORRECTED, _CORRECTED = 1, 0  # nvmlMemoryErrorType_t
_VOLATILE, _AGGREGATE = 0, 1  # nvmlEccCounterType_t
_CLOCK_SM, _CLOCK_MEM = 1, 2  # nvmlClockType_t
_TEMPERATURE_GPU = 0
_COMPUTE_MODES: dict[int, ComputeMode] = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}

# nvmlClocksEventReasons bits (nvml.h), in bit order
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# the reasons that mean the GPU is held down by heat, power delivery or a hardware fault, not by policy or idleness
SLOWDOWN_REASONS = frozenset({"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})


def clock_event_names(mask: int) -> list[str]:
    """Names of the clock-event reason bits set in `mask` (unknown bits as `bit_0x...`)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = sum(bit for bit, _ in CLOCK_EVENT_REASONS)
    rest = mask & ~known
    return names + [f"bit_{1 << i:#x}" for i in range(64) if rest & (1 << i)]


def nvml_init_error_code(nvml: Any, exc: BaseException) -> str:
    """Map an nvmlInit failure to a stable issue code."""
    value = getattr(exc, "value", None)
    for attr, default, code in _NVML_INIT_CODES:
        if value is not None and value == getattr(nvml, attr, default):
            return code
    return "nvml.init_failed"


def nvml_error_name(nvml: Any, value: Any) -> str | None:
    """`NO_PERMISSION` for nvmlReturn_t 4, from the module's NVML_ERROR_* constants (None when unknown)."""
    if not isinstance(value, int):
        return None
    for name in dir(nvml):
        if name.startswith("NVML_ERROR_") and getattr(nvml, name, None) == value:
            return name[len("NVML_ERROR_") :]
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _error_text(nvml: Any, exc: BaseException) -> str:
    """`NO_PERMISSION: Insufficient Permissions`, or the exception's type and text for anything else."""
    name = nvml_error_name(nvml, getattr(exc, "value", None))
    return f"{name}: {exc}" if name else f"{type(exc).__name__}: {exc}"


class _Reader:
    """Runs NVML queries for one GPU, sorting failures into not supported, lost and other errors."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.not_supported: dict[str, str] = {}
        self.query_errors: dict[str, str] = {}
        self.lost = False

    def _code(self, name: str, default: int) -> Any:
        return getattr(self.nvml, name, default)

    def get(self, group: str, names: tuple[str, ...], *args: Any) -> Any:
        """The first of `names` this nvidia-ml-py has and the driver exports, called with `args`; None when it fails.

        A name the driver's library lacks (FUNCTION_NOT_FOUND: the symbol is newer than the driver) falls through to
        the next name, the older call for the same fact; when none is there, the query is not supported here.
        """
        lacking = []
        for name in names:
            fn = getattr(self.nvml, name, None)
            if fn is None:
                lacking.append(f"{name} is not in this nvidia-ml-py")
                continue
            try:
                return fn(*args)
            except Exception as exc:
                value = getattr(exc, "value", None)
                if value == self._code("NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND):
                    lacking.append(f"the driver lacks {name} ({exc})")
                    continue
                if value == self._code("NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED):
                    self.not_supported[group] = str(exc) or "Not Supported"
                else:
                    self.lost = self.lost or value == self._code("NVML_ERROR_GPU_IS_LOST", _GPU_IS_LOST)
                    self.query_errors[group] = _error_text(self.nvml, exc)
                return None
        self.not_supported[group] = "; ".join(lacking)
        return None


def _memory(read: _Reader, handle: Any) -> tuple[int | None, int | None, int | None]:
    """(total, free, used); the v2 API first, which reports reserved memory apart, so `free` is what can be used."""
    version = getattr(read.nvml, "nvmlMemory_v2", None)
    if version is not None:
        probe = _Reader(read.nvml)
        info = probe.get("memory", ("nvmlDeviceGetMemoryInfo",), handle, version)
        if info is not None:
            return int(info.total), int(info.free), int(info.used)
        read.lost = read.lost or probe.lost
    info = read.get("memory", ("nvmlDeviceGetMemoryInfo",), handle)
    return (None, None, None) if info is None else (int(info.total), int(info.free), int(info.used))


def _mig(read: _Reader, handle: Any) -> tuple[bool | None, list[MigInstance]]:
    """MIG mode and, when enabled, every MIG device with its instance ids and memory (empty slots are skipped)."""
    nvml = read.nvml
    mode = read.get("mig_mode", ("nvmlDeviceGetMigMode",), handle)
    if mode is None:
        return None, []
    enabled = mode[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
    if not enabled:
        return False, []
    count = read.get("mig_devices", ("nvmlDeviceGetMaxMigDeviceCount",), handle) or 0
    instances = []
    for j in range(int(count)):
        try:  # NOT_FOUND: no MIG device in this slot
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except Exception:
            continue
        sub = _Reader(nvml)
        uuid = sub.get("uuid", ("nvmlDeviceGetUUID",), mig)
        if uuid is None:
            read.query_errors.setdefault("mig_devices", f"MIG device {j}: {next(iter(sub.query_errors.values()), 'no UUID')}")
            continue
        total, free, _used = _memory(sub, mig)
        gi = sub.get("gi", ("nvmlDeviceGetGpuInstanceId",), mig)
        ci = sub.get("ci", ("nvmlDeviceGetComputeInstanceId",), mig)
        instances.append(MigInstance(uuid=_text(uuid), gpu_instance_id=gi, compute_instance_id=ci, total_memory_bytes=total,
                                     free_memory_bytes=free))  # fmt: skip
    return True, instances


def _processes(read: _Reader, handle: Any) -> list[GpuProcess] | None:
    listed = read.get("processes", ("nvmlDeviceGetComputeRunningProcesses",), handle)
    if listed is None:
        return None
    mine = os.getpid()
    out = []
    for p in listed:
        memory = getattr(p, "usedGpuMemory", None)
        if int(p.pid) != mine:
            out.append(GpuProcess(pid=int(p.pid), used_memory_bytes=int(memory) if isinstance(memory, int) and memory >= 0 else None))
    return out


def _health(read: _Reader, handle: Any) -> dict[str, Any]:
    """Temperature, power, clocks and their reasons, ECC, retired pages, row remapping, modes and processes."""
    g = read.get
    ecc_mode = g("ecc_mode", ("nvmlDeviceGetEccMode",), handle)
    remap = g("row_remap", ("nvmlDeviceGetRemappedRows",), handle)
    reasons = g("clock_events", ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), handle)
    pending = g("retired_pages", ("nvmlDeviceGetRetiredPagesPendingStatus",), handle)
    mode = g("compute_mode", ("nvmlDeviceGetComputeMode",), handle)
    persistence = g("persistence", ("nvmlDeviceGetPersistenceMode",), handle)
    limit = g("power_limit", ("nvmlDeviceGetEnforcedPowerLimit",), handle)
    draw = g("power_draw", ("nvmlDeviceGetPowerUsage",), handle)
    pci = g("pci", ("nvmlDeviceGetPciInfo",), handle)
    return {
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "temperature_c": g("temperature", ("nvmlDeviceGetTemperature",), handle, _TEMPERATURE_GPU),
        "power_draw_w": None if draw is None else draw / 1000.0,
        "power_limit_w": None if limit is None else limit / 1000.0,
        "sm_clock_mhz": g("clocks", ("nvmlDeviceGetClockInfo",), handle, _CLOCK_SM),
        "memory_clock_mhz": g("clocks", ("nvmlDeviceGetClockInfo",), handle, _CLOCK_MEM),
        "max_sm_clock_mhz": g("max_clocks", ("nvmlDeviceGetMaxClockInfo",), handle, _CLOCK_SM),
        "clock_event_reasons": None if reasons is None else clock_event_names(int(reasons)),
        "ecc_enabled": None if ecc_mode is None else bool(ecc_mode[0]),
        "ecc_pending_enabled": None if ecc_mode is None else bool(ecc_mode[1]),
        "ecc_volatile_uncorrected": g("ecc_volatile", ("nvmlDeviceGetTotalEccErrors",), handle, _UNCORRECTED, _VOLATILE),
        "ecc_volatile_corrected": g("ecc_volatile", ("nvmlDeviceGetTotalEccErrors",), handle, _CORRECTED, _VOLATILE),
        "ecc_aggregate_uncorrected": g("ecc_aggregate", ("nvmlDeviceGetTotalEccErrors",), handle, _UNCORRECTED, _AGGREGATE),
        "retired_pages_pending": None if pending is None else bool(pending),
        "remapped_rows_correctable": None if remap is None else int(remap[0]),
        "remapped_rows_uncorrectable": None if remap is None else int(remap[1]),
        "row_remap_pending": None if remap is None else bool(remap[2]),
        "row_remap_failed": None if remap is None else bool(remap[3]),
        "compute_mode": None if mode is None else _COMPUTE_MODES.get(int(mode), "unknown"),
        "persistence_mode": None if persistence is None else bool(persistence),
        "processes": _processes(read, handle),
    }


def _device(nvml: Any, index: int, driver: str | None, cuda: str | None) -> NvmlDevice:
    read = _Reader(nvml)
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:  # NO_PERMISSION, INSUFFICIENT_POWER, IRQ_ISSUE, GPU_IS_LOST, UNKNOWN: counted, not openable
        lost = getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_GPU_IS_LOST", _GPU_IS_LOST)
        return NvmlDevice(
            index=index, uuid="", name="", total_memory_bytes=None, free_memory_bytes=None, used_memory_bytes=None,
            mig_enabled=None, mig_instances=[], compute_capability=None, driver_version=driver, cuda_driver_version=cuda,
            lost=lost, handle_error=_error_text(nvml, exc),
        )  # fmt: skip
    uuid = read.get("uuid", ("nvmlDeviceGetUUID",), handle)
    name = read.get("name", ("nvmlDeviceGetName",), handle)
    total, free, used = _memory(read, handle)
    mig_enabled, instances = _mig(read, handle)
    capability = read.get("compute_capability", ("nvmlDeviceGetCudaComputeCapability",), handle)
    health = _health(read, handle)
    return NvmlDevice(
        index=index,
        uuid="" if uuid is None else _text(uuid),
        name="" if name is None else _text(name),
        total_memory_bytes=total,
        free_memory_bytes=free,
        used_memory_bytes=used,
        mig_enabled=mig_enabled,
        mig_instances=instances,
        compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
        driver_version=driver,
        cuda_driver_version=cuda,
        **health,
        not_supported=read.not_supported,
        query_errors=read.query_errors,
        lost=read.lost,
    )


def _cuda_version(raw: Any) -> str:
    """nvmlSystemGetCudaDriverVersion's 12040 -> `12.4`."""
    value = int(raw)
    return f"{value // 1000}.{(value % 1000) // 10}"


def probe_nvml(nvml: Any | None = None) -> NvmlProbe:
    """Query NVML: driver, CUDA driver version and every device with its health. Never raises for NVML errors.

    Each machine-wide query is asked on its own: a missing libcuda.so.1 (nvmlSystemGetCudaDriverVersion answers
    LIBRARY_NOT_FOUND) loses the CUDA version only, not the GPUs.
    """
    if nvml is None:
        try:
            import pynvml as nvml_module
        except Exception as exc:
            return NvmlProbe(
                available=False, error_code="nvml.module_missing", error=f"{type(exc).__name__}: {exc}", driver_version=None,
                cuda_driver_version=None, devices=[],
            )  # fmt: skip
        nvml = nvml_module
    error_type = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error_type as exc:
        code = nvml_init_error_code(nvml, exc)
        return NvmlProbe(available=False, error_code=code, error=str(exc), driver_version=None, cuda_driver_version=None, devices=[])
    system = _Reader(nvml)  # each machine-wide query on its own, as every device query is
    try:
        raw_driver = system.get("driver_version", ("nvmlSystemGetDriverVersion",))
        driver = None if raw_driver is None else _text(raw_driver)
        raw_cuda = system.get("cuda_driver_version", ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"))
        cuda = None if raw_cuda is None else _cuda_version(raw_cuda)
        count = system.get("device_count", ("nvmlDeviceGetCount",))
        devices = [_device(nvml, index, driver, cuda) for index in range(int(count or 0))]
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    errors = {**system.not_supported, **system.query_errors}
    return NvmlProbe(
        available=True, error_code=None, error=None, driver_version=driver, cuda_driver_version=cuda, devices=devices, query_errors=errors
    )
