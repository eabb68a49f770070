"""Determinism check: the settings train will apply, and whether they can take effect in this process."""

from __future__ import annotations

import os
from dataclasses import dataclass

from geno_pipeline.config import RuntimeParams
from geno_pipeline.environment import CUBLAS_WORKSPACE_CONFIG
from geno_pipeline.preflight.checks.base import Finding, problem
from geno_pipeline.preflight.documents import DeterminismProbe, TorchCudaProbe

__all__ = ["DeterminismCheck", "probe_determinism"]

_VALID_CUBLAS = {":4096:8", ":16:8"}


def probe_determinism(runtime: RuntimeParams, resolved_device: str, torch_probe: TorchCudaProbe | None) -> DeterminismProbe:
    """Ask torch whether deterministic algorithms are accepted; record what train will set."""
    import torch

    cuda = resolved_device.startswith("cuda")
    supported = True
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:
        supported = False
    finally:
        torch.use_deterministic_algorithms(previous)
    initialised = bool(torch_probe.cuda_initialized_before_probe) if torch_probe else False
    return DeterminismProbe(
        deterministic=runtime.deterministic,
        cublas_workspace_config_env=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        cublas_workspace_config_applied=CUBLAS_WORKSPACE_CONFIG if (cuda and runtime.deterministic) else None,
        deterministic_algorithms_supported=supported,
        tf32_allowed=not runtime.deterministic,
        cudnn_benchmark=False,
        can_take_effect=not (cuda and initialised),
    )


@dataclass(frozen=True)
class DeterminismCheck:
    """`determinism`: deterministic mode on and able to take effect."""

    runtime: RuntimeParams
    resolved_device: str
    torch_probe: TorchCudaProbe | None
    name: str = "determinism"

    def probe(self) -> DeterminismProbe:
        return probe_determinism(self.runtime, self.resolved_device, self.torch_probe)

    def assess(self, facts: DeterminismProbe) -> list[Finding]:
        key = "runtime.deterministic"
        if not facts.deterministic:
            detail = "runtime.deterministic is false: results are not guaranteed to be reproducible"
            remedy = "set runtime.deterministic: true"
            return [problem(self.name, "warning", "determinism.disabled", key, "deterministic mode off", remedy, detail=detail)]
        if not facts.deterministic_algorithms_supported:
            detail = "torch.use_deterministic_algorithms(True) was refused"
            remedy = "upgrade torch to the locked version (requirements.lock)"
            return [
                problem(self.name, "error", "determinism.unsupported", key, "deterministic algorithms unsupported", remedy, detail=detail)
            ]
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
            message = "CUDA was initialised before preflight could check that CUBLAS_WORKSPACE_CONFIG can take effect"
            remedy = "do not import code that touches CUDA before geno-pipeline sets its determinism flags"
            out.append(problem(self.name, "warning", "determinism.cuda_already_initialized", "CUBLAS_WORKSPACE_CONFIG", message, remedy,
                               row=False))  # fmt: skip
        return out

    def _row(self, facts: DeterminismProbe) -> Finding:
        applied = facts.cublas_workspace_config_applied or "n/a on CPU"
        message = f"deterministic algorithms on, TF32 off, cuDNN benchmark off, CUBLAS_WORKSPACE_CONFIG {applied}"
        return Finding(self.name, "pass" if facts.can_take_effect else "warn", message)
