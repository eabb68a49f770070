"""A fake NVML shared library at the ctypes boundary, for tests.

The real `pynvml` module (nvidia-ml-py) runs unchanged: its `nvmlLib` points at a `FakeNvmlLib` whose attributes are
ctypes callbacks with the C signatures of `nvml.h`, so pynvml's own symbol lookup (a missing symbol raises
FUNCTION_NOT_FOUND), argument and struct marshalling through pointers, and error mapping (`nvmlReturn_t` codes to
`NVMLError_*` classes, `nvmlErrorString`) all run as on a node. Structs are declared here from `nvml.h`, not borrowed
from pynvml, and pointers cross the boundary as addresses, as they do in C.

Each `GpuSpec` scripts one physical GPU; `errors` makes a C function return an `nvmlReturn_t` for that GPU, and a
field set to None makes its query answer NOT_SUPPORTED, as the driver does on GPUs without the feature. `Driver`
scripts the library itself: version, CUDA version, missing symbols (an older driver), init failures. Nothing here is
used by the shipped code.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from ctypes import CFUNCTYPE, POINTER, Structure, c_char, c_int, c_uint, c_ulonglong, c_void_p
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pynvml

GIB = 1024**3

# nvmlReturn_t (nvml.h)
SUCCESS = 0
NO_PERMISSION, NOT_FOUND, INSUFFICIENT_SIZE, INSUFFICIENT_POWER, DRIVER_NOT_LOADED = 4, 6, 7, 8, 9
IRQ_ISSUE, LIBRARY_NOT_FOUND, GPU_IS_LOST, ARGUMENT_VERSION_MISMATCH, UNKNOWN = 11, 12, 15, 25, 999
INVALID_ARGUMENT, NOT_SUPPORTED, LIB_RM_VERSION_MISMATCH = 2, 3, 18

ERROR_STRINGS = {  # what nvmlErrorString returns
    1: "Uninitialized", INVALID_ARGUMENT: "Invalid Argument", NOT_SUPPORTED: "Not Supported", NO_PERMISSION: "Insufficient Permissions",
    NOT_FOUND: "Not Found", INSUFFICIENT_SIZE: "Insufficient Size", INSUFFICIENT_POWER: "Insufficient External Power",
    DRIVER_NOT_LOADED: "Driver Not Loaded", IRQ_ISSUE: "Interrupt Request Issue", LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    GPU_IS_LOST: "GPU is lost", LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    ARGUMENT_VERSION_MISMATCH: "Argument version mismatch", UNKNOWN: "Unknown Error",
}  # fmt: skip


class Memory(Structure):  # nvmlMemory_t
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class MemoryV2(Structure):  # nvmlMemory_v2_t
    _fields_ = [("version", c_uint), ("total", c_ulonglong), ("reserved", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class PciInfo(Structure):  # nvmlPciInfo_t (v3)
    _fields_ = [
        ("busIdLegacy", c_char * 16), ("domain", c_uint), ("bus", c_uint), ("device", c_uint), ("pciDeviceId", c_uint),
        ("pciSubSystemId", c_uint), ("busId", c_char * 32),
    ]  # fmt: skip


class ProcessInfo(Structure):  # nvmlProcessInfo_t (v2 layout, which _v3 uses)
    _fields_ = [("pid", c_uint), ("usedGpuMemory", c_ulonglong), ("gpuInstanceId", c_uint), ("computeInstanceId", c_uint)]


NVML_MEMORY_V2 = ctypes.sizeof(MemoryV2) | (2 << 24)  # NVML_STRUCT_VERSION(Memory, 2) in nvml.h


@dataclass
class MigSpec:
    """A MIG device (GPU instance `gpu_instance`, compute instance `compute_instance`) on a MIG-enabled GPU."""

    uuid: str  # MIG-...
    gpu_instance: int
    compute_instance: int
    total: int
    free: int


@dataclass
class GpuSpec:
    """One physical GPU. None for a health field: the query answers NOT_SUPPORTED on this GPU."""

    uuid: str
    name: str
    total: int
    free: int
    pci_bus: int = 0x18
    reserved: int = 512 * 1024**2  # the v2 memory API reports reserved memory apart from used
    capability: tuple[int, int] = (9, 0)
    ecc_mode: tuple[int, int] | None = (1, 1)
    ecc_volatile_uncorrected: int = 0
    ecc_volatile_corrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    retired_pending: int | None = None  # pre-Ampere GPUs only
    remap: tuple[int, int, int, int] | None = (0, 0, 0, 0)  # correctable, uncorrectable, pending, failed (Ampere and later)
    clock_reasons: int = 0x1  # gpu_idle
    compute_mode: int = 0
    persistence: int | None = 1
    temperature: int = 45
    power_mw: int = 95_500
    power_limit_mw: int = 700_000
    clocks_mhz: tuple[int, int] = (1980, 2619)  # SM, memory
    max_sm_clock_mhz: int = 1980
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    mig: bool | None = False  # None: MIG not supported
    mig_devices: list[MigSpec] = field(default_factory=list)
    max_mig_devices: int = 7
    handle_error: int | None = None  # nvmlDeviceGetHandleByIndex_v2 fails with this code
    errors: dict[str, int] = field(default_factory=dict)  # C function name -> nvmlReturn_t for this GPU


@dataclass
class Driver:
    """The NVML library and the driver behind it."""

    version: str = "550.54.15"
    cuda: int = 12040  # nvmlSystemGetCudaDriverVersion: 1000 * major + 10 * minor
    cuda_error: int | None = None  # e.g. LIBRARY_NOT_FOUND when libcuda.so.1 is missing
    init_error: int | None = None
    count_error: int | None = None
    missing: frozenset[str] = frozenset()  # C symbols this driver's library lacks


R525_MISSING = frozenset({"nvmlDeviceGetCurrentClocksEventReasons"})  # added in R535; R525 has only the throttle-reasons name

_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE for unsigned long long

H = c_void_p  # nvmlDevice_t: an opaque pointer
P = c_void_p  # any other pointer argument: an address, as C passes it
U = c_uint


def _write(address: int, ctype: Any, value: Any) -> None:
    ctypes.cast(address, POINTER(ctype))[0] = value


def _struct(address: int, ctype: type[Structure]) -> Any:
    return ctypes.cast(address, POINTER(ctype)).contents


def _string(address: int, length: int, text: str) -> int:
    data = text.encode()
    if len(data) + 1 > length:
        return INSUFFICIENT_SIZE
    ctypes.memmove(address, data + b"\0", len(data) + 1)
    return SUCCESS


class FakeNvmlLib:
    """The NVML C library for one scripted machine; `calls` records each C function called, in order."""

    def __init__(self, gpus: list[GpuSpec] | None = None, driver: Driver | None = None) -> None:
        self.gpus = gpus or []
        self.driver = driver or Driver()
        self.calls: list[str] = []
        self._strings: dict[int, ctypes.Array[c_char]] = {}
        self._handles: dict[int, tuple[GpuSpec, MigSpec | None]] = {}
        for name, prototype, impl in self._functions():
            if name not in self.driver.missing:
                setattr(self, name, prototype(self._recorded(name, impl)))

    # ------------------------------------------------------------------ plumbing

    def _recorded(self, name: str, impl: Callable[..., int]) -> Callable[..., int]:
        def call(*args: Any) -> int:
            self.calls.append(name)
            return impl(*args)

        return call

    def _handle(self, gpu: GpuSpec, mig: MigSpec | None = None) -> int:
        index = self.gpus.index(gpu)
        address = 0x10000 * (index + 1) + (0x100 * (gpu.mig_devices.index(mig) + 1) if mig is not None else 0)
        self._handles[address] = (gpu, mig)
        return address

    def _device(self, name: str, handle: int | None) -> tuple[GpuSpec, MigSpec | None, int]:
        """The GPU behind a handle and this function's scripted error for it (INVALID_ARGUMENT for a bad handle)."""
        if handle not in self._handles:
            return GpuSpec("", "", 0, 0), None, INVALID_ARGUMENT
        gpu, mig = self._handles[handle]
        return gpu, mig, gpu.errors.get(name, SUCCESS)

    def _gpu_query(self, name: str, value: Callable[[GpuSpec], Any], ctype: Any) -> Callable[..., int]:
        """`nvmlReturn_t fn(nvmlDevice_t, T *out)` on a physical GPU (NOT_SUPPORTED on a MIG device or when None)."""

        def impl(handle: int | None, out: int) -> int:
            gpu, mig, error = self._device(name, handle)
            if error:
                return error
            result = value(gpu)
            if mig is not None or result is None:
                return NOT_SUPPORTED
            _write(out, ctype, result)
            return SUCCESS

        return impl

    # ------------------------------------------------------------------ the C functions (nvml.h signatures)

    def _functions(self) -> list[tuple[str, Any, Callable[..., int]]]:
        R = c_int  # nvmlReturn_t
        return [
            ("nvmlInitWithFlags", CFUNCTYPE(R, U), self._init),
            ("nvmlInit_v2", CFUNCTYPE(R), lambda: self._init(0)),
            ("nvmlShutdown", CFUNCTYPE(R), lambda: SUCCESS),
            ("nvmlErrorString", CFUNCTYPE(c_void_p, c_int), self._error_string),
            ("nvmlSystemGetDriverVersion", CFUNCTYPE(R, P, U), lambda out, n: _string(out, n, self.driver.version)),
            ("nvmlSystemGetCudaDriverVersion", CFUNCTYPE(R, P), self._cuda_version),
            ("nvmlSystemGetCudaDriverVersion_v2", CFUNCTYPE(R, P), self._cuda_version),
            ("nvmlDeviceGetCount_v2", CFUNCTYPE(R, P), self._count),
            ("nvmlDeviceGetHandleByIndex_v2", CFUNCTYPE(R, U, P), self._handle_by_index),
            ("nvmlDeviceGetUUID", CFUNCTYPE(R, H, P, U), self._uuid),
            ("nvmlDeviceGetName", CFUNCTYPE(R, H, P, U), self._name),
            ("nvmlDeviceGetMemoryInfo", CFUNCTYPE(R, H, P), self._memory_v1),
            ("nvmlDeviceGetMemoryInfo_v2", CFUNCTYPE(R, H, P), self._memory_v2),
            ("nvmlDeviceGetMigMode", CFUNCTYPE(R, H, P, P), self._mig_mode),
            ("nvmlDeviceGetMaxMigDeviceCount", CFUNCTYPE(R, H, P), self._max_mig),
            ("nvmlDeviceGetMigDeviceHandleByIndex", CFUNCTYPE(R, H, U, P), self._mig_handle),
            ("nvmlDeviceGetGpuInstanceId", CFUNCTYPE(R, H, P), self._mig_id("nvmlDeviceGetGpuInstanceId", "gpu_instance")),
            ("nvmlDeviceGetComputeInstanceId", CFUNCTYPE(R, H, P), self._mig_id("nvmlDeviceGetComputeInstanceId", "compute_instance")),
            ("nvmlDeviceGetCudaComputeCapability", CFUNCTYPE(R, H, P, P), self._capability),
            ("nvmlDeviceGetPciInfo_v3", CFUNCTYPE(R, H, P), self._pci),
            ("nvmlDeviceGetTemperature", CFUNCTYPE(R, H, U, P), self._by_kind("nvmlDeviceGetTemperature", lambda g, k: g.temperature)),
            ("nvmlDeviceGetEnforcedPowerLimit", CFUNCTYPE(R, H, P),
             self._gpu_query("nvmlDeviceGetEnforcedPowerLimit", lambda g: g.power_limit_mw, c_uint)),
            ("nvmlDeviceGetPowerUsage", CFUNCTYPE(R, H, P), self._gpu_query("nvmlDeviceGetPowerUsage", lambda g: g.power_mw, c_uint)),
            ("nvmlDeviceGetClockInfo", CFUNCTYPE(R, H, U, P), self._by_kind("nvmlDeviceGetClockInfo", lambda g, k: g.clocks_mhz[k - 1])),
            ("nvmlDeviceGetMaxClockInfo", CFUNCTYPE(R, H, U, P),
             self._by_kind("nvmlDeviceGetMaxClockInfo", lambda g, k: g.max_sm_clock_mhz)),
            ("nvmlDeviceGetCurrentClocksEventReasons", CFUNCTYPE(R, H, P),
             self._gpu_query("nvmlDeviceGetCurrentClocksEventReasons", lambda g: g.clock_reasons, c_ulonglong)),
            ("nvmlDeviceGetCurrentClocksThrottleReasons", CFUNCTYPE(R, H, P),
             self._gpu_query("nvmlDeviceGetCurrentClocksThrottleReasons", lambda g: g.clock_reasons, c_ulonglong)),
            ("nvmlDeviceGetEccMode", CFUNCTYPE(R, H, P, P), self._ecc_mode),
            ("nvmlDeviceGetTotalEccErrors", CFUNCTYPE(R, H, U, U, P), self._ecc_errors),
            ("nvmlDeviceGetRetiredPagesPendingStatus", CFUNCTYPE(R, H, P),
             self._gpu_query("nvmlDeviceGetRetiredPagesPendingStatus", lambda g: g.retired_pending, c_uint)),
            ("nvmlDeviceGetRemappedRows", CFUNCTYPE(R, H, P, P, P, P), self._remapped_rows),
            ("nvmlDeviceGetComputeMode", CFUNCTYPE(R, H, P), self._gpu_query("nvmlDeviceGetComputeMode", lambda g: g.compute_mode, c_uint)),
            ("nvmlDeviceGetPersistenceMode", CFUNCTYPE(R, H, P),
             self._gpu_query("nvmlDeviceGetPersistenceMode", lambda g: g.persistence, c_uint)),
            ("nvmlDeviceGetComputeRunningProcesses_v3", CFUNCTYPE(R, H, P, P), self._processes),
        ]  # fmt: skip

    def _init(self, flags: int) -> int:
        return self.driver.init_error or SUCCESS

    def _error_string(self, code: int) -> int:
        if code not in self._strings:
            self._strings[code] = ctypes.create_string_buffer(ERROR_STRINGS.get(code, "Unknown Error").encode())
        return ctypes.addressof(self._strings[code])

    def _cuda_version(self, out: int) -> int:
        if self.driver.cuda_error:
            return self.driver.cuda_error
        _write(out, c_int, self.driver.cuda)
        return SUCCESS

    def _count(self, out: int) -> int:
        if self.driver.count_error:
            return self.driver.count_error
        _write(out, c_uint, len(self.gpus))  # counts GPUs the caller may not open too
        return SUCCESS

    def _handle_by_index(self, index: int, out: int) -> int:
        if index >= len(self.gpus):
            return INVALID_ARGUMENT
        gpu = self.gpus[index]
        if gpu.handle_error:
            return gpu.handle_error
        _write(out, c_void_p, self._handle(gpu))
        return SUCCESS

    def _uuid(self, handle: int | None, out: int, length: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetUUID", handle)
        return error or _string(out, length, mig.uuid if mig is not None else gpu.uuid)

    def _name(self, handle: int | None, out: int, length: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetName", handle)
        suffix = f" MIG {mig.compute_instance}c.{mig.gpu_instance}g" if mig is not None else ""
        return error or _string(out, length, gpu.name + suffix)

    def _memory_v1(self, handle: int | None, out: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetMemoryInfo", handle)
        if error:
            return error
        total, free = (mig.total, mig.free) if mig is not None else (gpu.total, gpu.free)
        memory = _struct(out, Memory)
        memory.total, memory.free, memory.used = total, free, total - free  # v1 counts reserved memory as used
        return SUCCESS

    def _memory_v2(self, handle: int | None, out: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetMemoryInfo_v2", handle)
        if error:
            return error
        memory = _struct(out, MemoryV2)
        if memory.version != NVML_MEMORY_V2:
            return ARGUMENT_VERSION_MISMATCH
        total, free = (mig.total, mig.free) if mig is not None else (gpu.total, gpu.free)
        reserved = 0 if mig is not None else gpu.reserved
        memory.total, memory.reserved, memory.free, memory.used = total, reserved, free, total - free - reserved
        return SUCCESS

    def _mig_mode(self, handle: int | None, current: int, pending: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetMigMode", handle)
        if error:
            return error
        if gpu.mig is None or mig is not None:
            return NOT_SUPPORTED
        _write(current, c_uint, int(gpu.mig))
        _write(pending, c_uint, int(gpu.mig))
        return SUCCESS

    def _max_mig(self, handle: int | None, out: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetMaxMigDeviceCount", handle)
        if error:
            return error
        if gpu.mig is None or mig is not None:
            return NOT_SUPPORTED
        _write(out, c_uint, gpu.max_mig_devices)
        return SUCCESS

    def _mig_handle(self, handle: int | None, index: int, out: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if error:
            return error
        if not gpu.mig or mig is not None:
            return INVALID_ARGUMENT
        if index >= gpu.max_mig_devices:
            return INVALID_ARGUMENT
        if index >= len(gpu.mig_devices):
            return NOT_FOUND  # an empty slot
        _write(out, c_void_p, self._handle(gpu, gpu.mig_devices[index]))
        return SUCCESS

    def _mig_id(self, name: str, attribute: str) -> Callable[..., int]:
        def impl(handle: int | None, out: int) -> int:
            _gpu, mig, error = self._device(name, handle)
            if error:
                return error
            if mig is None:
                return INVALID_ARGUMENT  # only MIG device handles have instance ids
            _write(out, c_uint, getattr(mig, attribute))
            return SUCCESS

        return impl

    def _capability(self, handle: int | None, major: int, minor: int) -> int:
        gpu, _mig, error = self._device("nvmlDeviceGetCudaComputeCapability", handle)
        if error:
            return error
        _write(major, c_int, gpu.capability[0])
        _write(minor, c_int, gpu.capability[1])
        return SUCCESS

    def _pci(self, handle: int | None, out: int) -> int:
        gpu, _mig, error = self._device("nvmlDeviceGetPciInfo_v3", handle)
        if error:
            return error
        info = _struct(out, PciInfo)
        info.domain, info.bus, info.device, info.pciDeviceId = 0, gpu.pci_bus, 0, 0x233010DE
        info.busId = f"00000000:{gpu.pci_bus:02X}:00.0".encode()
        info.busIdLegacy = f"0000:{gpu.pci_bus:02X}:00.0".encode()
        return SUCCESS

    def _by_kind(self, name: str, value: Callable[[GpuSpec, int], int]) -> Callable[..., int]:
        """`nvmlReturn_t fn(nvmlDevice_t, enum kind, unsigned int *out)`."""

        def impl(handle: int | None, kind: int, out: int) -> int:
            gpu, mig, error = self._device(name, handle)
            if error:
                return error
            if mig is not None:
                return NOT_SUPPORTED
            _write(out, c_uint, value(gpu, kind))
            return SUCCESS

        return impl

    def _ecc_mode(self, handle: int | None, current: int, pending: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetEccMode", handle)
        if error:
            return error
        if gpu.ecc_mode is None or mig is not None:
            return NOT_SUPPORTED
        _write(current, c_uint, gpu.ecc_mode[0])
        _write(pending, c_uint, gpu.ecc_mode[1])
        return SUCCESS

    def _ecc_errors(self, handle: int | None, error_type: int, counter: int, out: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetTotalEccErrors", handle)
        if error:
            return error
        if gpu.ecc_mode is None or mig is not None:
            return NOT_SUPPORTED
        if error_type not in (0, 1) or counter not in (0, 1):
            return INVALID_ARGUMENT
        if counter == 1:  # NVML_AGGREGATE_ECC
            count = gpu.ecc_aggregate_uncorrected if error_type == 1 else 0
        else:
            count = gpu.ecc_volatile_uncorrected if error_type == 1 else gpu.ecc_volatile_corrected
        _write(out, c_ulonglong, count)
        return SUCCESS

    def _remapped_rows(self, handle: int | None, corr: int, unc: int, pending: int, failed: int) -> int:
        gpu, mig, error = self._device("nvmlDeviceGetRemappedRows", handle)
        if error:
            return error
        if gpu.remap is None or mig is not None:
            return NOT_SUPPORTED
        for address, value in zip((corr, unc, pending, failed), gpu.remap, strict=True):
            _write(address, c_uint, value)
        return SUCCESS

    def _processes(self, handle: int | None, count: int, infos: int | None) -> int:
        gpu, _mig, error = self._device("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        if error:
            return error
        capacity = ctypes.cast(count, POINTER(c_uint))[0]
        _write(count, c_uint, len(gpu.processes))
        if not gpu.processes:
            return SUCCESS
        if infos is None or capacity < len(gpu.processes):
            return INSUFFICIENT_SIZE
        array = ctypes.cast(infos, POINTER(ProcessInfo))
        for i, (pid, memory) in enumerate(gpu.processes):
            array[i].pid, array[i].usedGpuMemory = pid, _NOT_AVAILABLE if memory is None else memory
            array[i].gpuInstanceId = array[i].computeInstanceId = 0xFFFFFFFF
        return SUCCESS

    # ------------------------------------------------------------------ installing it under the real pynvml

    @contextlib.contextmanager
    def installed(self) -> Iterator[ModuleType]:
        """The real pynvml with this library loaded (its function-pointer cache emptied, and restored after)."""
        saved = (pynvml.nvmlLib, dict(pynvml._nvmlGetFunctionPointer_cache), pynvml._nvmlLib_refcount)
        pynvml.nvmlLib = self
        pynvml._nvmlGetFunctionPointer_cache.clear()
        try:
            yield pynvml
        finally:
            pynvml.nvmlLib = saved[0]
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlGetFunctionPointer_cache.update(saved[1])
            pynvml._nvmlLib_refcount = saved[2]

    def c_calls(self, name: str) -> int:
        """How many times the C function `name` was called."""
        return self.calls.count(name)


@contextlib.contextmanager
def no_nvml_library() -> Iterator[ModuleType]:
    """The real pynvml on a machine without libnvidia-ml.so.1: its loader's CDLL fails as the dynamic linker does."""

    def missing(name: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    saved_lib, saved_cdll = pynvml.nvmlLib, pynvml.CDLL
    pynvml.nvmlLib, pynvml.CDLL = None, missing
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield pynvml
    finally:
        pynvml.nvmlLib, pynvml.CDLL = saved_lib, saved_cdll
        pynvml._nvmlGetFunctionPointer_cache.clear()
