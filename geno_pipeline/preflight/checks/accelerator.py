"""Accelerator check: NVML (pynvml from nvidia-ml-py) and torch probes, CUDA_VISIBLE_DEVICES mapping,
device resolution, cross-checks and the free-VRAM gate.

The probes take their NVML module, torch probe and environment as arguments so tests can fake any
machine; `assess_accelerator` turns a probe into findings as a pure function.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from geno_pipeline.config import PreflightParams, RuntimeParams
from geno_pipeline.devices import requested_cuda_index, resolve_device, selected_cuda_ordinals
from geno_pipeline.environment import device_kind
from geno_pipeline.preflight.checks.base import Finding, passed, problem, skipped
from geno_pipeline.preflight.documents import AcceleratorProbe, NvmlProbe, TorchCudaProbe
from geno_pipeline.preflight.nvml import probe_nvml
from geno_pipeline.preflight.visibility import map_cuda_devices, map_visible_devices, memory_of
from geno_pipeline.torchprobe import torch_cuda_facts

__all__ = [
    "AcceleratorCheck",
    "AcceleratorProbeFn",
    "assess_accelerator",
    "empty_accelerator",
    "fingerprint_device_kind",
    "map_cuda_devices",
    "map_visible_devices",
    "probe_accelerator",
    "probe_torch_cuda",
]

GIB = 1024**3
AcceleratorProbeFn = Callable[[RuntimeParams, PreflightParams], AcceleratorProbe]

# NVML states that simply mean "no NVIDIA GPU here": not worth a warning unless CUDA is required
_NO_GPU_CODES = {"nvml.library_not_found", "nvml.driver_not_loaded", "nvml.module_missing"}

_NVML_REMEDY = {
    "nvml.module_missing": "pip install nvidia-ml-py (it provides the pynvml module)",
    "nvml.library_not_found": "install the NVIDIA driver (libnvidia-ml.so), or run on CPU with runtime.device: cpu",
    "nvml.driver_not_loaded": "load the NVIDIA kernel driver (nvidia-smi should work), or run on CPU",
    "nvml.driver_library_mismatch": "the user-space NVML library and the kernel driver differ: reboot or reinstall the driver",
    "nvml.no_permission": "grant access to /dev/nvidia* (e.g. the video group or container device flags)",
    "nvml.init_failed": "check `nvidia-smi`; reinstall the NVIDIA driver if it fails too",
    "nvml.query_failed": (
        "check `nvidia-smi`; in a container, NVIDIA_DRIVER_CAPABILITIES must include compute (libcuda.so.1) and utility (NVML)"
    ),
}


def probe_torch_cuda() -> TorchCudaProbe:
    """Ask torch about CUDA in this process (this initialises CUDA here; preflight itself asks in its probe process)."""
    import torch

    before = bool(torch.cuda.is_initialized())
    return TorchCudaProbe(**torch_cuda_facts(), cuda_initialized_before_probe=before)


def probe_accelerator(
    runtime: RuntimeParams,
    preflight: PreflightParams,
    *,
    nvml: Any | None = None,
    torch_probe: Callable[[], TorchCudaProbe] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AcceleratorProbe:
    """Probe NVML and torch, map visibility and resolve the device training will use."""
    env = os.environ if environ is None else environ
    nv = probe_nvml(nvml)  # first: it lists each GPU's processes and free memory before anything creates a CUDA context
    th = (torch_probe or probe_torch_cuda)()
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    visible = map_cuda_devices(th.devices, nv.devices, cvd, env.get("CUDA_DEVICE_ORDER")) if nv.available else []
    usable = th.cuda_available and th.device_count > 0
    requested = runtime.device
    required = preflight.require_accelerator or requested_cuda_index(requested) is not None
    resolved = resolve_device(requested, cuda_usable=usable)
    if requested == "auto":
        reason = "auto: a usable CUDA device was found" if usable else "auto: no usable CUDA device, using the CPU"
    else:
        reason = f"runtime.device is {requested}"
    selected = requested_cuda_index(resolved)
    memory = memory_of(selected, visible, nv, th.devices) if selected is not None else None
    return AcceleratorProbe(
        requested_device=requested,
        resolved_device=resolved,
        required=required,
        available=usable,
        device_count=th.device_count if usable else 0,
        device_name=memory.name if memory else None,
        total_memory_bytes=memory.total if memory else None,
        free_memory_bytes=memory.free if memory else None,
        min_memory_bytes=int(preflight.min_vram_gib * GIB),
        reason=reason,
        cuda_visible_devices=cvd,
        visible=visible,
        selected_ordinals=selected_cuda_ordinals(requested, cuda_usable=usable, nproc_per_node=runtime.nproc_per_node),
        nvml=nv,
        torch=th,
    )


def _nvml_finding(probe: AcceleratorProbe, wants_cuda: bool) -> Finding:
    nv = probe.nvml
    if nv.available and nv.query_errors:
        failed = "; ".join(f"{key}: {error}" for key, error in nv.query_errors.items())
        message = f"NVML answered, but could not read {failed}"
        return problem("nvml", "warning", "nvml.query_failed", "nvml", message, _NVML_REMEDY["nvml.query_failed"])
    if nv.available:
        return passed("nvml", f"driver {nv.driver_version}, CUDA driver {nv.cuda_driver_version}, {len(nv.devices)} GPU(s)")
    code = nv.error_code or "nvml.init_failed"
    remedy = _NVML_REMEDY.get(code, _NVML_REMEDY["nvml.init_failed"])
    message = f"NVML unavailable: {nv.error}"
    if wants_cuda:
        return problem("nvml", "error", code, "nvml", message, remedy)
    if code in _NO_GPU_CODES:  # simply no NVIDIA GPU here
        return Finding("nvml", "skip", message, code, remedy)
    return problem("nvml", "warning", code, "nvml", message, remedy)


def _torch_finding(probe: AcceleratorProbe, wants_cuda: bool) -> Finding:
    th = probe.torch
    if th.cuda_available:
        return passed(
            "torch_cuda", f"torch {th.torch_version}, CUDA {th.cuda_version or 'none (CPU build)'}, {th.device_count} device(s) available"
        )
    message = f"torch {th.torch_version}: CUDA not available ({th.cuda_version or 'CPU build'})"
    return Finding("torch_cuda", "fail", message, "accelerator.not_found") if wants_cuda else passed("torch_cuda", message)


def _cross_checks(probe: AcceleratorProbe) -> list[Finding]:
    """NVML sees GPUs that torch cannot use; device counts disagree (issues without rows of their own)."""
    nv, th = probe.nvml, probe.torch
    mapped = map_visible_devices(probe.cuda_visible_devices, nv.devices)  # what CUDA_VISIBLE_DEVICES leaves visible, by NVML
    out = []
    if nv.available and mapped and not th.cuda_available and probe.requested_device != "cpu":
        message = (
            f"NVML sees {len(mapped)} visible GPU(s) but torch {th.torch_version} cannot use CUDA "
            f"(torch.version.cuda={th.cuda_version}){': ' + th.error if th.error else ''}"
        )
        remedy = (
            f"install a CUDA build of torch that supports driver CUDA {nv.cuda_driver_version}, "
            "or set runtime.device: cpu to train on the CPU"
        )
        out.append(problem("accelerator", "error", "accelerator.torch_cuda_unavailable", "torch", message, remedy, row=False))
    unopened = any(d.handle_error is not None for d in nv.devices)  # its UUID is unknown: gpu.unreadable says so
    if nv.available and th.cuda_available and len(mapped) != th.device_count and not unopened:
        message = (
            f"NVML finds {len(mapped)} device(s) visible (CUDA_VISIBLE_DEVICES={probe.cuda_visible_devices!r}) "
            f"but torch sees {th.device_count}"
        )
        remedy = "check CUDA_VISIBLE_DEVICES: entries after an unknown index or UUID are ignored by CUDA"
        out.append(problem("accelerator", "warning", "accelerator.device_count_mismatch", "CUDA_VISIBLE_DEVICES", message, remedy,
                           row=False))  # fmt: skip
    return out


def _cpu_resolution(probe: AcceleratorProbe) -> Finding:
    if not probe.required:
        return skipped("accelerator", f"{probe.reason}; no VRAM gate")
    why = "runtime.device is cpu" if probe.requested_device == "cpu" else "no usable CUDA device was found"
    return problem(
        "accelerator", "error", "accelerator.not_found", "preflight.require_accelerator", probe.reason,
        "run on a machine with an NVIDIA GPU and a CUDA build of torch, or set preflight.require_accelerator: false",
        detail=f"preflight.require_accelerator is true but {why}",
    )  # fmt: skip


def _mig_warning(probe: AcceleratorProbe, ordinal: int) -> list[Finding]:
    sel = probe.visible[ordinal] if ordinal < len(probe.visible) else None
    ndev = next((d for d in probe.nvml.devices if sel is not None and d.index == sel.nvml_index), None)
    if ndev is None or not ndev.mig_enabled or (sel is not None and sel.mig_uuid is not None):
        return []
    message = f"cuda:{ordinal}: MIG is enabled on {ndev.name} ({ndev.uuid}); CUDA can only use its MIG devices"
    remedy = "set CUDA_VISIBLE_DEVICES to MIG device UUIDs (MIG-...) listed in the report, or disable MIG"
    return [problem("accelerator", "warning", "accelerator.mig_enabled", f"nvml:{ndev.index}", message, remedy, row=False)]


def _gib(b: int | None) -> str:
    return "unknown" if b is None else f"{b / GIB:.2f} GiB"


def _vram_gate(probe: AcceleratorProbe) -> list[Finding]:
    """Every selected ordinal has `preflight.min_vram_gib` free (NVML's reading, taken before any CUDA context)."""
    need = probe.min_memory_bytes
    lines, findings = [], []
    for ordinal in probe.selected_ordinals:
        m = memory_of(ordinal, probe.visible, probe.nvml, probe.torch.devices)
        free = f"free {_gib(m.free)}" + (f" ({m.note})" if m.note else "")
        detail = f"cuda:{ordinal} {m.name}: {free} of {_gib(m.total)}, need {_gib(need)} free"
        lines.append(detail)
        if m.free is not None and m.free >= need:
            continue
        enough_total = m.total is not None and m.total >= need and m.free is not None
        findings.append(problem(
            "accelerator", "error", "accelerator.insufficient_vram", f"cuda:{ordinal}", detail,
            "free GPU memory (stop other jobs; see nvidia-smi), pick another device, or lower preflight.min_vram_gib",
            detail=detail + (" (enough in total, but other processes hold the rest)" if enough_total else ""), row=False,
        ))  # fmt: skip
    text = "; ".join(lines)
    if not findings:
        return [passed("accelerator", text)]
    first = findings[0]
    return [Finding("accelerator", "fail", text, first.code, first.remedy), *findings]


def _cuda_resolution(probe: AcceleratorProbe) -> list[Finding]:
    if not probe.available:
        return [problem(
            "accelerator", "error", "accelerator.not_found", "runtime.device", probe.reason,
            "run on a GPU machine with a CUDA build of torch, or set runtime.device: auto or cpu",
            detail=f"runtime.device is {probe.requested_device} but no usable CUDA device was found",
        )]  # fmt: skip
    beyond = [o for o in probe.selected_ordinals if o >= probe.device_count]
    if beyond:
        asked = ", ".join(f"cuda:{o}" for o in beyond)
        return [problem(
            "accelerator", "error", "accelerator.invalid_device_index", "runtime.device", probe.reason,
            f"use cuda:0..cuda:{probe.device_count - 1}, fewer workers, or check CUDA_VISIBLE_DEVICES",
            detail=f"the job uses {asked} but only {probe.device_count} CUDA device(s) are visible",
        )]  # fmt: skip
    mig = [f for o in probe.selected_ordinals for f in _mig_warning(probe, o)]
    return [*mig, *_vram_gate(probe)]


def assess_accelerator(probe: AcceleratorProbe) -> list[Finding]:
    """Findings for a probe: NVML state, torch, cross-checks, device resolution and the VRAM gate."""
    wants_cuda = probe.required or probe.resolved_device.startswith("cuda")
    findings = [_nvml_finding(probe, wants_cuda), _torch_finding(probe, wants_cuda), *_cross_checks(probe)]
    if probe.resolved_device.startswith("cuda"):
        return findings + _cuda_resolution(probe)
    return [*findings, _cpu_resolution(probe)]


def fingerprint_device_kind(probe: AcceleratorProbe) -> str:
    """The fingerprint's device kind for the device preflight resolved (the same function train calls)."""
    index = requested_cuda_index(probe.resolved_device)
    if index is None or not probe.available:
        return "cpu"
    dev = probe.torch.devices[index] if index < len(probe.torch.devices) else None
    return device_kind(probe.resolved_device, name=dev.name if dev else None, capability=dev.capability if dev else None)


def empty_accelerator(runtime: RuntimeParams, preflight: PreflightParams, error: str) -> AcceleratorProbe:
    """The report's accelerator section when the probe itself raised."""
    nvml = NvmlProbe(available=False, error_code="nvml.init_failed", error=error, driver_version=None, cuda_driver_version=None, devices=[])
    torch = TorchCudaProbe(
        torch_version=None, cuda_available=False, device_count=0, cuda_version=None, cudnn_version=None,
        cuda_initialized_before_probe=False, devices=[], error=error,
    )  # fmt: skip
    return AcceleratorProbe(
        requested_device=runtime.device, resolved_device="cpu", required=preflight.require_accelerator, available=False,
        device_count=0, device_name=None, total_memory_bytes=None, free_memory_bytes=None,
        min_memory_bytes=int(preflight.min_vram_gib * GIB), reason=f"probe failed: {error}", cuda_visible_devices=None, visible=[],
        nvml=nvml, torch=torch,
    )  # fmt: skip


@dataclass(frozen=True)
class AcceleratorCheck:
    """`nvml`, `torch_cuda` and `accelerator` rows from one probe of NVML and torch."""

    runtime: RuntimeParams
    preflight: PreflightParams
    probe_fn: AcceleratorProbeFn | None = None
    name: str = "accelerator"

    def probe(self) -> AcceleratorProbe:
        return (self.probe_fn or probe_accelerator)(self.runtime, self.preflight)

    def assess(self, facts: AcceleratorProbe) -> list[Finding]:
        return assess_accelerator(facts)
