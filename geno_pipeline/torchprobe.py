"""Preflight's torch probe process: `python -m geno_pipeline.torchprobe PLAN_JSON`.

Preflight runs everything that needs torch here, in a fresh interpreter, while the preflight process itself (which
never imports torch) probes the other dependencies, NVML, the disk and the dataset. Why a separate process:
- the trainer applies its determinism settings before CUDA and cuBLAS start; a CUDA context or cuBLAS handle left by
  preflight in the same process would make them not take effect (CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts);
- a kernel that hangs on a sick GPU cannot be interrupted inside a process, but a process can be killed, so the time
  bound is real; a crash (a segfault in a driver) cannot take the report with it;
- importing torch here runs in parallel with the rest of preflight, and is the same real import the trainer does.

Protocol: one JSON object per stdout line. `imported` (the import of torch), then the process waits for a line on
stdin, so that NVML can list the other processes on each GPU before this one creates a CUDA context; then `cuda`
(devices, architectures, the determinism settings train applies, as torch reports them after applying them, and the
CPU class), one `kernel` per selected device (a seeded matmul compared with the CPU), and `done`. Only stdlib and
torch are imported.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from geno_pipeline.devices import resolve_device, selected_cuda_ordinals
from geno_pipeline.torchflags import apply_torch_determinism, cpu_kernel_class, cublas_tf32, torch_determinism_flags

__all__ = ["KERNEL_SEED", "KERNEL_SIZE", "kernel_smoke", "kernel_tolerance", "main", "not_finite", "torch_cuda_facts"]

KERNEL_SEED = 20240229
KERNEL_SIZE = 256  # a 256 x 256 by 256 x 256 fp32 matmul: milliseconds on any GPU, enough to run real cuBLAS kernels


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _pci_bus_id(props: Any) -> str | None:
    """`domain:bus:device` as NVML writes it (`00000000:18:00`), from the properties torch exposes (None if it has none)."""
    parts = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if not all(isinstance(p, int) for p in parts):
        return None
    return f"{parts[0]:08X}:{parts[1]:02X}:{parts[2]:02X}"


def _free_after_context(index: int) -> int | None:
    """torch.cuda.mem_get_info on one device: creates a CUDA context there first, and counts it as used."""
    import torch

    try:
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:
        return None


def torch_cuda_facts(measure: Sequence[int] = ()) -> dict[str, Any]:
    """What torch says about CUDA (fields of `TorchCudaProbe`).

    Device properties come from cudaGetDeviceProperties, which creates no CUDA context. Free memory is NVML's, read
    before anything here touched a GPU; torch is asked for it only on the devices in `measure` (the ones the job uses,
    which the kernel smoke test is about to touch anyway), as the fallback where NVML cannot read a device:
    torch.cuda.mem_get_info creates a context on the device it asks about and counts that context as used.
    """
    import torch

    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
        devices = []
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            uuid = getattr(props, "uuid", None)
            devices.append(
                {
                    "index": index,
                    "name": str(props.name),
                    "total_memory_bytes": int(props.total_memory),
                    "capability": f"{props.major}.{props.minor}",
                    "uuid": None if uuid is None else str(uuid),
                    "pci_bus_id": _pci_bus_id(props),
                    "free_memory_bytes": _free_after_context(index) if index in measure else None,
                }
            )
        cudnn = torch.backends.cudnn.version() if available else None
        arch_list = list(torch.cuda.get_arch_list()) if available else []
        error = None
    except Exception as exc:
        available, count, devices, cudnn, arch_list, error = False, 0, [], None, [], f"{type(exc).__name__}: {exc}"
    return {
        "torch_version": str(torch.__version__),
        "cuda_available": available,
        "device_count": count,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "arch_list": arch_list,
        "devices": devices,
        "error": error,
    }


def not_finite(error: float) -> str:
    """Why a smoke result's relative error is recorded as null."""
    return f"the result is not finite: max rel. error {error}"


def kernel_tolerance(tf32: bool) -> float:
    """Largest accepted |device - CPU| / max |CPU| for the smoke matmul: fp32 rounding, or TF32's 10-bit mantissa."""
    return 1e-2 if tf32 else 1e-4


def kernel_smoke(
    device: str, *, seed: int = KERNEL_SEED, size: int = KERNEL_SIZE, matmul: Callable[[Any, Any], Any] | None = None
) -> dict[str, Any]:
    """Multiply two seeded matrices on `device` twice; compare with a float64 CPU product and with each other.

    Returns `outcome` (ok, mismatch, nondeterministic or failed), the relative error, the tolerance and the time.
    `matmul` is injectable for tests (default `torch.matmul`).
    """
    import torch

    mm = matmul or torch.matmul
    start = time.perf_counter()
    flags = torch_determinism_flags()
    tolerance = kernel_tolerance(cublas_tf32(flags["tf32_matmul"], flags["tf32_cublas_override"], cuda=device.startswith("cuda")))
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    reference = a.double() @ b.double()
    result: dict[str, Any] = {"device": device, "seed": seed, "size": size, "tolerance": tolerance}
    try:
        da, db = a.to(device), b.to(device)
        first, second = mm(da, db), mm(da, db)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        error = float(((first.cpu().double() - reference).abs().max() / reference.abs().max()).item())
        identical = bool(torch.equal(first, second))
    except Exception as exc:
        ms = (time.perf_counter() - start) * 1000.0
        return {**result, "outcome": "failed", "max_rel_error": None, "repeat_identical": None, "duration_ms": ms,
                "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
    ms = (time.perf_counter() - start) * 1000.0
    if not math.isfinite(error):  # a GPU that computes NaN or inf: JSON has no such number, so null and the reason
        why = not_finite(error)
        return {**result, "outcome": "mismatch", "max_rel_error": None, "repeat_identical": identical, "duration_ms": ms, "error": why}
    outcome = "ok" if error <= tolerance else "mismatch"
    if outcome == "ok" and not identical:
        outcome = "nondeterministic"
    return {**result, "outcome": outcome, "max_rel_error": error, "repeat_identical": identical, "duration_ms": ms, "error": None}


def _import_torch() -> bool:
    start = time.perf_counter()
    try:
        importlib.import_module("torch")
    except BaseException as exc:  # ImportError, OSError from a missing shared library, anything raised at import
        _emit("imported", ok=False, error=f"import failed: {type(exc).__name__}: {exc}".strip(), version=_version(),
              duration_ms=(time.perf_counter() - start) * 1000.0)  # fmt: skip
        return False
    _emit("imported", ok=True, error=None, version=_version(), duration_ms=(time.perf_counter() - start) * 1000.0)
    return True


def _version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the probe for the plan in argv[0] (JSON: requested_device, nproc_per_node, deterministic)."""
    plan = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if not _import_torch():
        return 0
    sys.stdin.readline()  # the go-ahead: NVML has listed the processes on each GPU (EOF also means go)
    import torch

    initialised = bool(torch.cuda.is_initialized())
    usable = bool(torch.cuda.is_available())
    resolved = resolve_device(plan["requested_device"], cuda_usable=usable)
    apply_torch_determinism(deterministic=bool(plan["deterministic"]), cuda=resolved.startswith("cuda"))
    flags = torch_determinism_flags()
    ordinals = selected_cuda_ordinals(plan["requested_device"], cuda_usable=usable, nproc_per_node=int(plan["nproc_per_node"]))
    facts = torch_cuda_facts(measure=ordinals)
    ordinals = [o for o in ordinals if o < facts["device_count"]]
    determinism = {**flags, "cuda_initialized_before": initialised, "cpu_class": cpu_kernel_class()}
    _emit("cuda", cuda=facts, determinism=determinism, ordinals=ordinals)
    for ordinal in ordinals:
        _emit("kernel", ordinal=ordinal, **kernel_smoke(f"cuda:{ordinal}"))
    _emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
