"""GPU health rows for the devices the job will use, judged from NVML's facts: ECC, retired pages, row remapping,
clock-event reasons, other processes, compute mode and persistence mode.

One row per check (its status the worst over the selected devices), one issue per device with a problem. A query NVML
does not support on a device makes that device's part `skip`, never a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from geno_pipeline.preflight.checks.base import Finding, problem
from geno_pipeline.preflight.documents import AcceleratorProbe, CheckStatus, NvmlDevice, Severity
from geno_pipeline.preflight.nvml import SLOWDOWN_REASONS

__all__ = ["GPU_ROWS", "REMEDIES", "GpuHealthCheck", "GpuTarget", "Verdict", "device_rows", "gpu_targets", "unopened"]

GIB = 1024**3
_RANK: dict[CheckStatus, int] = {"skip": 0, "pass": 1, "warn": 2, "fail": 3}

# remedies of the per-device rows here and in cuda.py, by issue code
REMEDIES = {
    "gpu.lost": "the GPU fell off the bus or hangs: drain the node, check dmesg for XID 79, reset the GPU or reboot",
    "gpu.query_failed": "run `nvidia-smi -q` on the node to read the same fields; check the driver if that fails too",
    "gpu.ecc_uncorrectable": "drain the node: reset the GPU (nvidia-smi -r) or reboot, run `dcgmi diag -r 3`; train on another GPU",
    "gpu.retired_pages_pending": "reset the GPU (nvidia-smi -r) or reboot so the pages are retired, then run preflight again",
    "gpu.row_remap_failed": "take the GPU out of service (RMA); train on another GPU",
    "gpu.row_remap_pending": "reset the GPU (nvidia-smi -r) or reboot so the remap takes effect, then run preflight again",
    "gpu.clocks_throttled": "check cooling and power delivery (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`); the job runs slower",
    "gpu.busy": "stop them, or pick a free GPU with CUDA_VISIBLE_DEVICES; they share its compute and memory",
    "gpu.compute_prohibited": "ask the node's admin to run `nvidia-smi -c DEFAULT` on this GPU, or pick another GPU",
    "gpu.exclusive_busy": "wait for that process to end, or pick a free GPU with CUDA_VISIBLE_DEVICES",
    "gpu.unreadable": (
        "NVML counts this GPU but cannot open it: check dmesg and `nvidia-smi -q` for it (power cables, XID errors), "
        "grant access to its /dev/nvidia* node, or hide it with CUDA_VISIBLE_DEVICES"
    ),
    "cuda.driver_too_old": (
        "install an NVIDIA driver of torch's CUDA major at or above that major's minimum (CUDA 12.x: >= 525.60.13, 13.x: >= 580), "
        "or a torch build for the driver's CUDA major"
    ),
    "cuda.driver_minor_older": "update the NVIDIA driver to one that supports torch's CUDA version to get every feature of the build",
    "cuda.arch_unsupported": "install a torch build with kernels for this GPU's architecture (a newer CUDA wheel), or use another GPU",
    "cuda.kernel_mismatch": "the GPU computes wrong results: drain the node, run `dcgmi diag -r 3`, train on another GPU",
    "cuda.kernel_nondeterministic": "check that nothing overrides CUBLAS_WORKSPACE_CONFIG or the determinism flags; else suspect the GPU",
    "cuda.kernel_timeout": (
        "the GPU or driver hangs: check dmesg for XID errors and reset the GPU (nvidia-smi -r); "
        "raise preflight.cuda_timeout_s only if CUDA is merely slow to start"
    ),
    "cuda.kernel_failed": "CUDA starts but cannot run work: check `nvidia-smi` and dmesg for XID errors; reset the GPU or use another",
}


@dataclass(frozen=True)
class Verdict:
    """What one check says about one device."""

    status: CheckStatus
    text: str
    code: str | None = None

    @property
    def remedy(self) -> str | None:
        return REMEDIES.get(self.code) if self.code else None

    @property
    def severity(self) -> Severity | None:
        return "error" if self.status == "fail" else "warning" if self.status == "warn" else None


@dataclass(frozen=True)
class GpuTarget:
    """A CUDA ordinal the job uses and the NVML device behind it (None when CUDA_VISIBLE_DEVICES maps it to none)."""

    ordinal: int
    device: NvmlDevice | None

    @property
    def label(self) -> str:
        d = self.device
        return f"cuda:{self.ordinal}" + (f" ({d.name}, {d.uuid})" if d is not None and d.uuid else "")


def gpu_targets(probe: AcceleratorProbe) -> list[GpuTarget]:
    """The selected ordinals, each with its NVML device."""
    by_index = {d.index: d for d in probe.nvml.devices}
    out = []
    for ordinal in probe.selected_ordinals:
        visible = probe.visible[ordinal] if ordinal < len(probe.visible) else None
        out.append(GpuTarget(ordinal, by_index.get(visible.nvml_index) if visible and visible.nvml_index is not None else None))
    return out


def unopened(devices: list[NvmlDevice], *, required: bool) -> Verdict | None:
    """The verdict on GPUs NVML counts but cannot open (nvmlDeviceGetHandleByIndex failed): never a pass.

    A GPU it cannot open may be sick (INSUFFICIENT_POWER, IRQ_ISSUE, UNKNOWN) or merely not ours to read
    (NO_PERMISSION); only the latter, and only when CUDA is not required, is a warning.
    """
    closed = [d for d in devices if d.handle_error is not None]
    if not closed:
        return None
    if any(d.lost for d in closed):
        return Verdict("fail", "NVML reports the GPU lost (GPU_IS_LOST)", "gpu.lost")
    named = "; ".join(f"NVML index {d.index}: {d.handle_error}" for d in closed)
    text = f"NVML cannot open the GPU ({named}): its health is unknown"
    permission_only = all((d.handle_error or "").startswith("NO_PERMISSION") for d in closed)
    return Verdict("warn" if permission_only and not required else "fail", text, "gpu.unreadable")


def _unreadable(d: NvmlDevice, groups: tuple[str, ...]) -> Verdict | None:
    """Lost, failed or unsupported queries behind a check, as its verdict."""
    if d.lost:
        return Verdict("fail", "NVML reports the GPU lost (GPU_IS_LOST)", "gpu.lost")
    failed = [f"{g}: {d.query_errors[g]}" for g in groups if g in d.query_errors]
    if failed:
        return Verdict("warn", f"could not read {'; '.join(failed)}", "gpu.query_failed")
    unsupported = [f"{g}: {d.not_supported[g]}" for g in groups if g in d.not_supported]
    return Verdict("skip", f"not supported on this GPU ({'; '.join(unsupported)})") if unsupported else None


def _ecc(d: NvmlDevice) -> Verdict:
    if d.ecc_enabled is False:
        return Verdict("skip", "ECC is disabled on this GPU: no error counts to check")
    n = d.ecc_volatile_uncorrected or 0
    if n > 0:
        return Verdict("fail", f"{n} uncorrectable ECC error(s) since the driver loaded (XID 48)", "gpu.ecc_uncorrectable")
    life = "unknown" if d.ecc_aggregate_uncorrected is None else d.ecc_aggregate_uncorrected
    corrected = d.ecc_volatile_corrected or 0
    return Verdict("pass", f"0 uncorrectable ECC errors ({corrected} corrected since the driver loaded, {life} uncorrectable in its life)")


def _retired_pages(d: NvmlDevice) -> Verdict:
    if d.retired_pages_pending:
        return Verdict("fail", "memory pages with errors wait to be retired (XID 63/64)", "gpu.retired_pages_pending")
    return Verdict("pass", "no retired pages pending")


def _row_remap(d: NvmlDevice) -> Verdict:
    if d.row_remap_failed:
        return Verdict("fail", "a memory row remap failed: the GPU cannot hide a bad row", "gpu.row_remap_failed")
    if d.row_remap_pending:
        return Verdict("fail", "a memory row remap waits for a reset (XID 94/95)", "gpu.row_remap_pending")
    rows = f"{d.remapped_rows_correctable} correctable, {d.remapped_rows_uncorrectable} uncorrectable rows remapped"
    return Verdict("pass", f"no row remap pending ({rows})")


def _clocks(d: NvmlDevice) -> Verdict:
    active = d.clock_event_reasons or []
    slow = [r for r in active if r in SLOWDOWN_REASONS]
    now = f"SM {d.sm_clock_mhz}/{d.max_sm_clock_mhz} MHz, {d.temperature_c} °C, {d.power_draw_w}/{d.power_limit_w} W"
    if slow:
        return Verdict("warn", f"clocks held down by {', '.join(slow)} ({now})", "gpu.clocks_throttled")
    return Verdict("pass", f"no slowdown reason active ({', '.join(active) or 'none'}; {now})")


def _processes_text(d: NvmlDevice) -> str:
    def mem(b: int | None) -> str:
        return "memory unknown" if b is None else f"{b / GIB:.2f} GiB"

    return ", ".join(f"pid {p.pid} ({mem(p.used_memory_bytes)})" for p in d.processes or [])


def _processes(d: NvmlDevice) -> Verdict:
    if d.processes:
        return Verdict("warn", f"{len(d.processes)} other compute process(es): {_processes_text(d)}", "gpu.busy")
    return Verdict("pass", "no other compute process")


def _compute_mode(d: NvmlDevice) -> Verdict:
    if d.compute_mode == "prohibited":
        return Verdict("fail", "compute mode is PROHIBITED: no CUDA context can be created", "gpu.compute_prohibited")
    if d.compute_mode in ("exclusive_process", "exclusive_thread") and d.processes:
        held = f"compute mode is {d.compute_mode.upper()} and the GPU is held by {_processes_text(d)}"
        return Verdict("fail", held, "gpu.exclusive_busy")
    return Verdict("pass", f"compute mode {d.compute_mode}")


def _persistence(d: NvmlDevice) -> Verdict:
    if d.persistence_mode:
        return Verdict("pass", "persistence mode on")
    return Verdict("pass", "persistence mode off (recorded: the driver starts up the GPU for each new process, which is slower)")


# (row, the NVML query groups it reads, the judge)
GPU_ROWS: tuple[tuple[str, tuple[str, ...], Callable[[NvmlDevice], Verdict]], ...] = (
    ("gpu.ecc", ("ecc_mode", "ecc_volatile"), _ecc),
    ("gpu.retired_pages", ("retired_pages",), _retired_pages),
    ("gpu.row_remap", ("row_remap",), _row_remap),
    ("gpu.clocks", ("clock_events",), _clocks),
    ("gpu.processes", ("processes",), _processes),
    ("gpu.compute_mode", ("compute_mode",), _compute_mode),
    ("gpu.persistence", ("persistence",), _persistence),
)


def device_rows(row: str, verdicts: list[tuple[GpuTarget, Verdict]]) -> list[Finding]:
    """The row (worst status over the devices, every device's text) and one issue per device with a problem."""
    worst = max((v for _, v in verdicts), key=lambda v: _RANK[v.status])
    text = "; ".join(f"{t.label}: {v.text}" for t, v in verdicts) if len(verdicts) > 1 else f"{verdicts[0][0].label}: {worst.text}"
    findings = [Finding(row, worst.status, text, worst.code, worst.remedy)]
    for target, v in verdicts:
        if v.severity is not None and v.code is not None:
            findings.append(problem(row, v.severity, v.code, target.label, f"{target.label}: {v.text}", v.remedy or "", row=False))
    return findings


@dataclass(frozen=True)
class GpuHealthCheck:
    """`gpu.*` rows for the selected CUDA devices."""

    accelerator: AcceleratorProbe
    name: str = "gpu"

    def probe(self) -> list[GpuTarget]:
        return gpu_targets(self.accelerator)

    def assess(self, facts: list[GpuTarget]) -> list[Finding]:
        if not facts:
            why = f"no CUDA device selected ({self.accelerator.reason})"
            return [Finding(row, "skip", why) for row, _, _ in GPU_ROWS]
        if not self.accelerator.nvml.available:
            why = f"NVML unavailable ({self.accelerator.nvml.error})"
            return [Finding(row, "skip", why) for row, _, _ in GPU_ROWS]
        required = self.accelerator.required
        closed = [d for d in self.accelerator.nvml.devices if d.handle_error is not None]
        findings: list[Finding] = []
        for row, groups, judge in GPU_ROWS:
            verdicts = []
            for t in facts:
                if t.device is None:  # a GPU NVML could not open has no UUID, so nothing maps to it: it may be this one
                    unmapped = Verdict("skip", "no NVML device behind this ordinal (see CUDA_VISIBLE_DEVICES)")
                    verdicts.append((t, unopened(closed, required=required) or unmapped))
                else:
                    verdict = unopened([t.device], required=required) or _unreadable(t.device, groups) or judge(t.device)
                    verdicts.append((t, verdict))
            findings += device_rows(row, verdicts)
        return _dedupe(findings)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """A lost GPU fails every row; say so once per device."""
    seen: set[tuple[str | None, str | None]] = set()
    out = []
    for f in findings:
        key = (f.code, f.path)
        if not f.row and key in seen:
            continue
        seen.add(key)
        out.append(f)
    return out
