"""CUDA compatibility and the kernel smoke test: the driver against the CUDA torch was built for, each selected device's
architecture against torch's kernels, and a seeded matmul on each selected device compared with the CPU."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from geno_pipeline.preflight.checks.base import Finding, passed, problem, skipped
from geno_pipeline.preflight.checks.gpu import REMEDIES, GpuTarget, Verdict, device_rows, gpu_targets
from geno_pipeline.preflight.documents import AcceleratorProbe, KernelSmoke

__all__ = ["MINIMUM_DRIVER", "CudaCheck", "CudaFacts", "arch_support", "cuda_version_tuple", "driver_compatibility"]

_ARCH = re.compile(r"^(sm|compute)_(\d+)([af]?)$")

# The oldest Linux driver of each CUDA major release family that runs any toolkit of that family (minor-version
# compatibility, CUDA 11 onwards): NVIDIA's "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version
# Compatibility" (CUDA compatibility guide, table 1; release notes).
MINIMUM_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580"}

Compatibility = Literal["ok", "minor_older", "too_old"]


def cuda_version_tuple(version: str) -> tuple[int, ...]:
    """`12.4` -> (12, 4); `12.4.1` -> (12, 4, 1)."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


def driver_compatibility(driver_version: str | None, driver_cuda: str, toolkit_cuda: str) -> tuple[Compatibility, str]:
    """Can a driver (`driver_version`, supporting CUDA `driver_cuda`) run a build for CUDA `toolkit_cuda`? And why.

    Since CUDA 11 a toolkit runs on any driver of its major family at or above that family's minimum
    (`MINIMUM_DRIVER`), with a limited feature set when the driver's CUDA minor is below the toolkit's (`minor_older`:
    PTX of the newer minor cannot be JIT-compiled, newer APIs are missing); a driver of a newer major runs it too
    (backward compatibility). A driver of an older major, or below the family's minimum, cannot (`too_old`).
    """
    (d_major, d_minor), (t_major, t_minor) = cuda_version_tuple(driver_cuda)[:2], cuda_version_tuple(toolkit_cuda)[:2]
    if d_major > t_major:
        return "ok", f"CUDA {driver_cuda} is a newer major than {toolkit_cuda}: backward compatible"
    if d_major < t_major:
        return "too_old", f"CUDA {driver_cuda} is an older major than {toolkit_cuda}"
    minimum = MINIMUM_DRIVER.get(t_major)
    if minimum is not None and driver_version is not None and cuda_version_tuple(driver_version) < cuda_version_tuple(minimum):
        return "too_old", f"CUDA {t_major}.x needs driver >= {minimum} for minor-version compatibility"
    if d_minor < t_minor:
        floor = f" (driver >= {minimum} runs every CUDA {t_major}.x build)" if minimum else ""
        return "minor_older", f"CUDA {driver_cuda} runs a CUDA {toolkit_cuda} build by minor-version compatibility{floor}"
    return "ok", f"CUDA {driver_cuda} >= {toolkit_cuda}"


def arch_support(capability: str, arch_list: list[str]) -> str | None:
    """The `torch.cuda.get_arch_list()` entry that runs on a device of `capability` (e.g. `8.6`), or None.

    A cubin `sm_XY` runs on the same major version at minor Y or above (`sm_XYa`: exactly XY; `sm_XYf`: the same
    major at Y or above); PTX `compute_XY` is compiled by the driver for any device at XY or above. An exact cubin is
    preferred, then a compatible cubin, then PTX.
    """
    major, minor = (int(p) for p in capability.split(".")[:2])
    cubins, ptx = [], []
    for entry in arch_list:
        m = _ARCH.match(entry)
        if m is None:
            continue
        number, suffix = int(m.group(2)), m.group(3)
        e_major, e_minor = number // 10, number % 10
        if m.group(1) == "sm":
            if (e_major, e_minor) == (major, minor):
                return entry
            if suffix != "a" and e_major == major and e_minor <= minor:
                cubins.append(entry)
        elif suffix != "a" and (e_major, e_minor) <= (major, minor):
            ptx.append(entry)
    found = cubins or ptx
    return found[0] if found else None


@dataclass(frozen=True)
class CudaFacts:
    """The accelerator facts and the kernel smoke results of the probe process."""

    targets: list[GpuTarget]
    kernels: list[KernelSmoke]


def _kernel_verdict(k: KernelSmoke | None, ordinal: int, deterministic: bool) -> Verdict:
    if k is None:
        return Verdict("skip", f"not run: torch cannot use cuda:{ordinal}")
    if k.outcome == "ok" or (k.outcome == "nondeterministic" and not deterministic):
        note = "repeatable" if k.repeat_identical else "two runs differ (allowed: runtime.deterministic is false)"
        matches = f"max rel. error {k.max_rel_error:.1e} <= {k.tolerance:.0e}"
        return Verdict("pass", f"{k.size}x{k.size} fp32 matmul matches the CPU ({matches}), {note}, {k.duration_ms:.0f} ms")
    if k.outcome == "mismatch":
        if k.max_rel_error is None:  # NaN or inf: kept out of the JSON, the reason in `error`
            return Verdict("fail", f"the matmul differs from the CPU: {k.error or 'the result is not finite'}", "cuda.kernel_mismatch")
        return Verdict(
            "fail", f"the matmul differs from the CPU: max rel. error {k.max_rel_error:.2e} > {k.tolerance:.0e}", "cuda.kernel_mismatch"
        )
    if k.outcome == "nondeterministic":
        return Verdict("fail", "two runs of the same matmul differ bitwise under the determinism settings", "cuda.kernel_nondeterministic")
    if k.outcome == "timeout":
        return Verdict("fail", f"no result within {k.timeout_s:g} s ({k.error})", "cuda.kernel_timeout")
    return Verdict("fail", f"the kernel could not run: {k.error}", "cuda.kernel_failed")


@dataclass(frozen=True)
class CudaCheck:
    """`cuda.driver`, `cuda.arch` and `cuda.kernel` rows."""

    accelerator: AcceleratorProbe
    kernels: list[KernelSmoke]
    deterministic: bool
    name: str = "cuda"

    def probe(self) -> CudaFacts:
        return CudaFacts(gpu_targets(self.accelerator), self.kernels)

    def assess(self, facts: CudaFacts) -> list[Finding]:
        return [*self._driver(), *self._arch(facts.targets), *self._kernel(facts)]

    def _driver(self) -> list[Finding]:
        nv, th = self.accelerator.nvml, self.accelerator.torch
        if self.accelerator.requested_device == "cpu":
            return [skipped("cuda.driver", "runtime.device is cpu")]
        if th.cuda_version is None:
            return [skipped("cuda.driver", f"torch {th.torch_version} is a CPU build")]
        if not nv.available:
            return [skipped("cuda.driver", f"NVML unavailable ({nv.error}): the driver's CUDA version is unknown")]
        if nv.cuda_driver_version is None:
            why = nv.query_errors.get("cuda_driver_version", "not reported")
            return [skipped("cuda.driver", f"NVML could not read the driver's CUDA version ({why})")]
        driver, built = nv.cuda_driver_version, th.cuda_version
        verdict, why = driver_compatibility(nv.driver_version, driver, built)
        seen = f"driver {nv.driver_version} supports CUDA {driver}; torch {th.torch_version} was built for CUDA {built}"
        if verdict == "too_old":
            return [problem("cuda.driver", "error", "cuda.driver_too_old", "nvml", f"{seen}: {why}", REMEDIES["cuda.driver_too_old"])]
        if verdict == "minor_older":
            message = f"{seen}: {why}; features newer than CUDA {driver} may be missing"
            return [problem("cuda.driver", "warning", "cuda.driver_minor_older", "nvml", message, REMEDIES["cuda.driver_minor_older"])]
        return [passed("cuda.driver", f"{seen}: {why}")]

    def _arch(self, targets: list[GpuTarget]) -> list[Finding]:
        th = self.accelerator.torch
        if not targets:
            return [skipped("cuda.arch", f"no CUDA device selected ({self.accelerator.reason})")]
        if not th.arch_list:
            why = f"torch {th.torch_version} is a CPU build" if th.cuda_version is None else f"torch cannot use CUDA ({th.error})"
            return [skipped("cuda.arch", f"no architecture list: {why}")]
        verdicts = []
        for t in targets:
            tdev = th.devices[t.ordinal] if t.ordinal < len(th.devices) else None
            capability = tdev.capability if tdev is not None else (t.device.compute_capability if t.device else None)
            if capability is None:
                verdicts.append((t, Verdict("skip", "compute capability unknown")))
                continue
            entry = arch_support(capability, th.arch_list)
            sm = f"sm_{capability.replace('.', '')}"
            if entry is None:
                missing = f"compute capability {capability} ({sm}) has no kernels in this torch build ({' '.join(th.arch_list)})"
                verdicts.append((t, Verdict("fail", missing, "cuda.arch_unsupported")))
            else:
                verdicts.append((t, Verdict("pass", f"compute capability {capability} runs {entry} from torch's build")))
        return device_rows("cuda.arch", verdicts)

    def _kernel(self, facts: CudaFacts) -> list[Finding]:
        if not facts.targets:
            return [skipped("cuda.kernel", f"no CUDA device selected ({self.accelerator.reason})")]
        by_ordinal = {k.ordinal: k for k in facts.kernels}
        verdicts = [(t, _kernel_verdict(by_ordinal.get(t.ordinal), t.ordinal, self.deterministic)) for t in facts.targets]
        return device_rows("cuda.kernel", verdicts)
