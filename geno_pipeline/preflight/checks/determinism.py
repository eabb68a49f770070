"""Determinism check: the settings train applies, applied in the torch probe process and read back from torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from geno_pipeline.config import RuntimeParams
from geno_pipeline.preflight.checks.base import Finding, problem, skipped
from geno_pipeline.preflight.documents import DeterminismProbe
from geno_pipeline.preflight.torch_process import TorchDeterminismFlags
from geno_pipeline.torchflags import CUBLAS_WORKSPACE_CONFIG, TF32_OVERRIDE_ENV, cublas_tf32

__all__ = ["DeterminismCheck", "determinism_facts"]

_VALID_CUBLAS = {":4096:8", ":16:8"}


def determinism_facts(
    runtime: RuntimeParams, resolved_device: str, flags: TorchDeterminismFlags, environ: Mapping[str, str] | None = None
) -> DeterminismProbe:
    """What torch reported after the trainer's settings, judged against runtime.deterministic."""
    env = os.environ if environ is None else environ
    cuda = resolved_device.startswith("cuda")
    wanted = runtime.deterministic
    override = flags.tf32_cublas_override
    tf32 = cublas_tf32(flags.tf32_matmul, override, cuda=cuda) or flags.tf32_cudnn
    return DeterminismProbe(
        deterministic=wanted,
        cublas_workspace_config_env=env.get("CUBLAS_WORKSPACE_CONFIG"),
        cublas_workspace_config_applied=CUBLAS_WORKSPACE_CONFIG if (cuda and wanted) else None,
        deterministic_algorithms_supported=flags.deterministic_algorithms == wanted and not flags.deterministic_warn_only,
        tf32_allowed=tf32,
        tf32_cublas_override=override,
        cudnn_benchmark=flags.cudnn_benchmark,
        can_take_effect=not (cuda and flags.cuda_initialized_before),
        cpu_class=flags.cpu_class,
    )


@dataclass(frozen=True)
class DeterminismCheck:
    """`determinism`: deterministic mode on, and torch reports the settings train needs."""

    runtime: RuntimeParams
    resolved_device: str
    flags: TorchDeterminismFlags | None
    not_measured: str = "the torch probe process did not report"
    name: str = "determinism"

    def probe(self) -> DeterminismProbe | None:
        return None if self.flags is None else determinism_facts(self.runtime, self.resolved_device, self.flags)

    def assess(self, facts: DeterminismProbe | None) -> list[Finding]:
        key = "runtime.deterministic"
        if facts is None:
            return [skipped(self.name, f"not measured: {self.not_measured}")]
        if not facts.deterministic:
            detail = "runtime.deterministic is false: results are not guaranteed to be reproducible"
            remedy = "set runtime.deterministic: true"
            return [problem(self.name, "warning", "determinism.disabled", key, "deterministic mode off", remedy, detail=detail)]
        if facts.tf32_cublas_override and self.resolved_device.startswith("cuda"):
            detail = f"{TF32_OVERRIDE_ENV}=1 makes cuBLAS use TF32 whatever the determinism settings say: results differ from fp32"
            remedy = f"unset {TF32_OVERRIDE_ENV} (or set runtime.deterministic: false if TF32 results are acceptable)"
            return [problem(self.name, "error", "determinism.tf32_override", TF32_OVERRIDE_ENV, "TF32 forced on by the environment", remedy,
                            detail=detail)]  # fmt: skip
        if not facts.deterministic_algorithms_supported or facts.tf32_allowed or facts.cudnn_benchmark:
            algorithms = "on" if facts.deterministic_algorithms_supported else "off or warn-only"
            detail = (
                f"after the trainer's settings torch reports deterministic algorithms {algorithms}, "
                f"TF32 {'on' if facts.tf32_allowed else 'off'}, cuDNN benchmark {'on' if facts.cudnn_benchmark else 'off'}"
            )
            remedy = "install the locked torch version (pip install -c requirements.lock -e .)"
            return [problem(self.name, "error", "determinism.unsupported", key, "torch does not keep the determinism settings", remedy,
                            detail=detail)]  # fmt: skip
        return [*self._cuda_warnings(facts), self._row(facts)]

    def _cuda_warnings(self, facts: DeterminismProbe) -> list[Finding]:
        out = []
        env = facts.cublas_workspace_config_env
        if facts.cublas_workspace_config_applied and env not in (None, *_VALID_CUBLAS):
            message = (
                f"CUBLAS_WORKSPACE_CONFIG={env!r} is not a deterministic setting; train will override it with {CUBLAS_WORKSPACE_CONFIG}"
            )
            remedy = f"unset CUBLAS_WORKSPACE_CONFIG or set it to {CUBLAS_WORKSPACE_CONFIG}"
            out.append(problem(self.name, "warning", "determinism.cublas_workspace_override", "CUBLAS_WORKSPACE_CONFIG", message, remedy,
                               row=False))  # fmt: skip
        if not facts.can_take_effect:
            message = "CUDA was initialised by `import torch` alone, before the determinism settings could apply"
            remedy = "find what initialises CUDA at import (a sitecustomize, a torch plugin) and remove it"
            out.append(problem(self.name, "warning", "determinism.cuda_already_initialized", "CUBLAS_WORKSPACE_CONFIG", message, remedy,
                               row=False))  # fmt: skip
        return out

    def _row(self, facts: DeterminismProbe) -> Finding:
        applied = facts.cublas_workspace_config_applied or "n/a on CPU"
        message = f"torch reports deterministic algorithms on, TF32 off, cuDNN benchmark off; CUBLAS_WORKSPACE_CONFIG {applied}"
        return Finding(self.name, "pass" if facts.can_take_effect else "warn", message)
