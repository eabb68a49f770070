"""Which physical GPU (or MIG device) is behind each CUDA ordinal, and its memory.

NVML's index need not be CUDA's ordinal: CUDA orders devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and
reads CUDA_VISIBLE_DEVICES in that order. So an ordinal is matched to NVML by the UUID CUDA reports for it (else its PCI
bus id), never by position; only when torch cannot list its devices is CUDA_VISIBLE_DEVICES read against NVML alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from geno_pipeline.preflight.documents import NvmlDevice, NvmlProbe, TorchDevice, VisibleDevice

__all__ = ["GpuMemory", "MappedBy", "map_cuda_devices", "map_visible_devices", "memory_of"]


def _uuid_hex(uuid: str | None) -> str:
    """The 32 hex digits of a UUID, whatever its prefix (`GPU-`, `MIG-`, none) or case."""
    text = (uuid or "").lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.replace("-", "")


_Match = tuple[int, "str | None", "MappedBy"]
MappedBy = Literal["uuid", "pci_bus_id", "cuda_visible_devices", "only_gpu"]
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9A-Fa-f-]+)/(\d+)/(\d+)$")


def _nvml_device_of(device: TorchDevice, nvml_devices: list[NvmlDevice]) -> _Match | None:
    """The NVML GPU (and MIG device) behind a CUDA device: by the UUID CUDA reports, else by its PCI bus id."""
    wanted = _uuid_hex(device.uuid)
    if wanted:
        for d in nvml_devices:
            if d.uuid and _uuid_hex(d.uuid) == wanted:
                return d.index, None, "uuid"
            for m in d.mig_instances:
                if _uuid_hex(m.uuid) == wanted:
                    return d.index, m.uuid, "uuid"
    if device.pci_bus_id:
        for d in nvml_devices:
            if d.pci_bus_id and d.pci_bus_id.upper().rsplit(".", 1)[0] == device.pci_bus_id.upper():
                if not d.mig_enabled:
                    return d.index, None, "pci_bus_id"
                # MIG devices share their GPU's bus id: only a lone one is known to be this device
                return (d.index, d.mig_instances[0].uuid, "pci_bus_id") if len(d.mig_instances) == 1 else None
    return None


def _selector_match(entry: str, devices: list[NvmlDevice], cuda_device_order: str | None) -> _Match | Literal[False] | None:
    """What one CUDA_VISIBLE_DEVICES entry selects among NVML's GPUs: a match, None (a device, but which one NVML
    cannot tell), or False (no device: CUDA stops reading the list there)."""
    if entry.lstrip("-").isdigit():
        index = int(entry)
        if not 0 <= index < len(devices):
            return False
        if len(devices) == 1:
            return devices[0].index, None, "only_gpu"
        if cuda_device_order == "PCI_BUS_ID":  # CUDA's order is then the PCI bus order; NVML's index need not be
            ordered = sorted(devices, key=lambda d: d.pci_bus_id or "")
            return (ordered[index].index, None, "pci_bus_id") if ordered[index].pci_bus_id else None
        return None  # FASTEST_FIRST (CUDA's default): which GPU is "fastest" is CUDA's to say
    legacy = _LEGACY_MIG.match(entry)
    if legacy is not None:  # MIG-GPU-<uuid>/<GPU instance>/<compute instance> (drivers before R470 name MIG devices so)
        gpu, ids = _uuid_hex(legacy.group(1)), (int(legacy.group(2)), int(legacy.group(3)))
        for d in devices:
            for m in d.mig_instances if d.uuid and _uuid_hex(d.uuid).startswith(gpu) else []:
                if (m.gpu_instance_id, m.compute_instance_id) == ids:
                    return d.index, m.uuid, "cuda_visible_devices"
        return False
    if entry.startswith("MIG-"):
        found = ((d.index, m.uuid) for d in devices for m in d.mig_instances if m.uuid.startswith(entry))
        return next(((index, mig, "cuda_visible_devices") for index, mig in found), False)
    if entry:
        uuid = entry if entry.startswith("GPU-") else f"GPU-{entry}"
        return next(((d.index, None, "cuda_visible_devices") for d in devices if d.uuid and d.uuid.startswith(uuid)), False)
    return False


def map_visible_devices(cuda_visible_devices: str | None, devices: list[NvmlDevice], cuda_device_order: str | None = None
                        ) -> list[VisibleDevice]:  # fmt: skip
    """Map CUDA ordinals to NVML devices from CUDA_VISIBLE_DEVICES alone, as the CUDA runtime reads it: for when torch
    cannot say which devices it has.

    Entries are indices, GPU UUIDs (`GPU-...`, prefixes allowed) or MIG devices (`MIG-<uuid>`, or
    `MIG-GPU-<uuid>/<GI>/<CI>`); the list stops at the first entry that matches no device, and at a repeated one. An
    index is mapped only where NVML can know CUDA's order (one GPU, or CUDA_DEVICE_ORDER=PCI_BUS_ID): CUDA's default
    order is fastest first, and NVML's index "may not correlate" with it.
    """
    entries = [str(i) for i in range(len(devices))] if cuda_visible_devices is None else cuda_visible_devices.split(",")
    out: list[VisibleDevice] = []
    seen: set[tuple[int, str | None]] = set()
    for raw in entries:
        entry = raw.strip()
        match = _selector_match(entry, devices, cuda_device_order)
        if match is False or (match is not None and match[:2] in seen):
            break
        if match is None:
            out.append(VisibleDevice(ordinal=len(out), selector=entry, nvml_index=None, mig_uuid=None, mapped_by=None))
            continue
        seen.add(match[:2])
        out.append(VisibleDevice(ordinal=len(out), selector=entry, nvml_index=match[0], mig_uuid=match[1], mapped_by=match[2]))
    return out


def map_cuda_devices(
    torch_devices: list[TorchDevice], nvml_devices: list[NvmlDevice], cuda_visible_devices: str | None, cuda_device_order: str | None
) -> list[VisibleDevice]:
    """Each CUDA ordinal torch sees, with the NVML device behind it, found by UUID (or PCI bus id), never by position.

    When torch reports no devices (it cannot use CUDA), CUDA_VISIBLE_DEVICES is read as CUDA would
    (`map_visible_devices`).
    """
    if not torch_devices:
        return map_visible_devices(cuda_visible_devices, nvml_devices, cuda_device_order)
    selectors = None if cuda_visible_devices is None else [e.strip() for e in cuda_visible_devices.split(",")]
    out = []
    for device in torch_devices:
        selector = selectors[device.index] if selectors is not None and device.index < len(selectors) else str(device.index)
        index, mig, how = _nvml_device_of(device, nvml_devices) or (None, None, None)
        out.append(VisibleDevice(ordinal=device.index, selector=selector, nvml_index=index, mig_uuid=mig, mapped_by=how))
    return out


@dataclass(frozen=True)
class GpuMemory:
    """A CUDA ordinal's name and memory: its MIG device's when it is one, else its GPU's, from NVML before any CUDA
    context existed; where NVML cannot say, torch's reading after the probe process's own context (`note` says so)."""

    ordinal: int
    name: str | None
    total: int | None
    free: int | None
    note: str | None = None  # why `free` is unknown, or not NVML's


def memory_of(ordinal: int, visible: list[VisibleDevice], nvml: NvmlProbe, torch_devices: list[TorchDevice]) -> GpuMemory:
    tdev = torch_devices[ordinal] if ordinal < len(torch_devices) else None
    sel = visible[ordinal] if ordinal < len(visible) else None
    ndev = next((d for d in nvml.devices if sel is not None and d.index == sel.nvml_index), None)
    name = tdev.name if tdev is not None else (ndev.name if ndev is not None else None)
    total, free, why = (tdev.total_memory_bytes if tdev else None), None, "NVML is unavailable"
    if ndev is not None:
        inst = next((m for m in ndev.mig_instances if sel is not None and m.uuid == sel.mig_uuid), None)
        total, free = (
            (inst.total_memory_bytes, inst.free_memory_bytes) if inst is not None else (ndev.total_memory_bytes, ndev.free_memory_bytes)
        )
        why = "NVML could not read it"
    elif nvml.available:
        why = "no NVML device maps to it"
    if free is not None:
        return GpuMemory(ordinal, name, total, free)
    if tdev is not None and tdev.free_memory_bytes is not None:
        return GpuMemory(ordinal, name, tdev.total_memory_bytes, tdev.free_memory_bytes, f"{why}: torch's reading, after a CUDA context")
    return GpuMemory(ordinal, name, total, None, why)
