"""Preflight orchestration: build the list of checks, run each, and assemble the report from their facts and findings."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from geno_pipeline.config import LoadedParams
from geno_pipeline.distributed import local_world_size, planned_world_size
from geno_pipeline.environment import package_version
from geno_pipeline.layout import Layout
from geno_pipeline.preflight.checks import cpu as cpu_check
from geno_pipeline.preflight.checks.accelerator import AcceleratorCheck, AcceleratorProbeFn, empty_accelerator, probe_accelerator
from geno_pipeline.preflight.checks.base import CheckRun, Finding, run_check
from geno_pipeline.preflight.checks.cuda import CudaCheck
from geno_pipeline.preflight.checks.dataset import DatasetCheck
from geno_pipeline.preflight.checks.dependencies import (
    DEPENDENCIES,
    DependencyProbeFn,
    DependencySpec,
    dependency_checks,
    dependency_facts,
)
from geno_pipeline.preflight.checks.determinism import DeterminismCheck
from geno_pipeline.preflight.checks.disk import DiskCheck
from geno_pipeline.preflight.checks.distributed import DistributedCheck, DistributedProbeFn
from geno_pipeline.preflight.checks.gpu import GpuHealthCheck
from geno_pipeline.preflight.checks.memory import MemoryCheck
from geno_pipeline.preflight.checks.params import ParamsCheck
from geno_pipeline.preflight.documents import DependencyProbe, EnvironmentInfo, PreflightOutcome, PreflightReport, TorchCudaProbe
from geno_pipeline.preflight.torch_process import (
    TorchProbePlan,
    TorchProbeProcess,
    TorchProcessFacts,
    TorchProcessFn,
    cuda_unavailable,
)
from geno_pipeline.runtime_report import utc_now
from geno_pipeline.version import __version__

__all__ = ["TrainingPreflightRequest", "build_report", "build_training_preflight_report", "outcome_of"]


@dataclass(frozen=True)
class TrainingPreflightRequest:
    """Inputs of a preflight run (seed API)."""

    root: Path
    """Project root."""
    params_path: Path
    """params.yaml to validate and read thresholds from."""
    dataset_dir: Path
    """Built dataset to verify."""
    artifacts_dir: Path
    """Where artifacts are written (disk checks)."""
    min_cuda_vram_gb: float | None = None
    """Override of preflight.min_vram_gib."""
    require_accelerator: bool | None = None
    """Override of preflight.require_accelerator."""

    @classmethod
    def for_root(cls, root: Path, params_path: Path | None = None) -> TrainingPreflightRequest:
        """The default request for a project root."""
        layout = Layout.for_root(root)
        return cls(
            root=layout.root,
            params_path=params_path if params_path is not None else layout.params,
            dataset_dir=layout.dataset_dir,
            artifacts_dir=layout.artifacts,
        )


def _rows_and_issues(runs: list[CheckRun[Any]]) -> tuple[list[Any], list[Any]]:
    """Render every finding once as a row and once as an issue (errors first)."""
    rows, issues = [], []
    for r in runs:
        findings: list[Finding] = r.findings
        rows += [f.check_row(r.duration_ms) for f in findings if f.row]
        issues += [i for f in findings if (i := f.issue()) is not None]
    return rows, sorted(issues, key=lambda i: (i.severity != "error", i.code))


def _torch_dependency(spec: DependencySpec, facts: TorchProcessFacts) -> DependencyProbe:
    """torch's real import, done in the probe process."""
    reason = "ok" if facts.imported else (facts.import_error or "import failed")
    return dependency_facts(spec, available=facts.imported, reason=reason, duration_ms=facts.import_ms)


def _cuda_of(facts: TorchProcessFacts) -> TorchCudaProbe:
    """torch's CUDA facts from the probe process (unavailable, with the reason, when it never got that far)."""
    return facts.cuda if facts.cuda is not None else cuda_unavailable(facts.version, facts.failure or facts.import_error)


def build_report(
    loaded: LoadedParams,
    request: TrainingPreflightRequest,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
    distributed_probe: DistributedProbeFn | None = None,
    torch_process: TorchProcessFn | None = None,
    cpu_load: Callable[[], float | None] | None = None,
) -> PreflightReport:
    """Run every check and assemble the report (`cpu_load`: the 1-minute load average, default the machine's).

    The torch probe process starts first and imports torch while this process checks params, the other dependencies,
    the disk and the dataset; NVML then lists each GPU's processes before the probe process may touch CUDA.
    """
    # the checks see this node's part of the job: under a launcher (WORLD_SIZE set) its workers on this node
    runtime = loaded.params.runtime.model_copy(update={"nproc_per_node": local_world_size(loaded.params.runtime.nproc_per_node)})
    overrides = {"min_vram_gib": request.min_cuda_vram_gb, "require_accelerator": request.require_accelerator}
    preflight = loaded.params.preflight.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    plan = TorchProbePlan(runtime.device, runtime.nproc_per_node, runtime.deterministic, preflight.cuda_timeout_s)
    process = (torch_process or TorchProbeProcess)(plan)
    try:
        params_run = run_check(ParamsCheck(loaded))
        dependencies = dependency_checks(request.root, dependency_probe)
        if dependency_probe is None:  # torch's import is the probe process's
            dependencies = [replace(c, probe_fn=lambda s: _torch_dependency(s, process.facts())) if c.spec.import_name == "torch" else c
                            for c in dependencies]  # fmt: skip
        dependency_runs = {c.name: run_check(c) for c in dependencies if c.spec.import_name != "torch"}
        disk_run = run_check(DiskCheck(request.artifacts_dir, preflight))
        dataset_run = run_check(DatasetCheck(request.dataset_dir, request.root, loaded.params.data if loaded.valid else None))
        default_probe = partial(probe_accelerator, torch_probe=lambda: _cuda_of(process.facts()))
        acc_run = run_check(AcceleratorCheck(runtime, preflight, accelerator_probe or default_probe))
        process.release_cuda()
        facts = process.facts()
        dependency_runs.update({c.name: run_check(c) for c in dependencies if c.spec.import_name == "torch"})
    finally:
        process.close()
    accelerator = acc_run.facts or empty_accelerator(runtime, preflight, acc_run.findings[0].message)
    not_measured = facts.failure or facts.import_error or "the torch probe process did not report"
    det_run = run_check(DeterminismCheck(runtime, accelerator.resolved_device, facts.determinism, not_measured))
    gpu_run = run_check(GpuHealthCheck(accelerator))
    cuda_run = run_check(CudaCheck(accelerator, facts.kernels, runtime.deterministic))
    memory_run = run_check(MemoryCheck(loaded.params.model_copy(update={"runtime": runtime}), accelerator, str(loaded.path)))
    cpu_run = run_check(cpu_check.CpuCheck(runtime, load=cpu_load or cpu_check.load_average))
    runs: list[CheckRun[Any]] = [params_run, *(dependency_runs[c.name] for c in dependencies), acc_run, gpu_run, cuda_run, det_run,
                                 cpu_run, memory_run, disk_run, dataset_run]  # fmt: skip
    dist_run: CheckRun[Any] | None = None
    if planned_world_size(runtime.nproc_per_node) > 1:
        dist_run = run_check(DistributedCheck(runtime, accelerator, distributed_probe))
        runs.append(dist_run)
    rows, issues = _rows_and_issues(runs)
    packages = {package: package_version(package) for _, package, _ in DEPENDENCIES}
    packages["geno-pipeline"] = __version__
    return PreflightReport(
        generated_by=f"geno-pipeline {__version__}",
        generated_at=generated_at or utc_now(),
        ok=not any(i.severity == "error" for i in issues),
        resolved_device=accelerator.resolved_device,
        params_path=str(loaded.path),
        params_valid=loaded.valid,
        dataset_dir=str(request.dataset_dir),
        dataset_id=dataset_run.facts.dataset_id if dataset_run.facts else None,
        environment=EnvironmentInfo(
            python=sys.version.split()[0], platform=platform.platform(), machine=platform.machine(), packages=packages
        ),
        accelerator=accelerator,
        dependencies=[r.facts for r in (dependency_runs[c.name] for c in dependencies) if r.facts is not None],
        determinism=det_run.facts,
        cpu=cpu_run.facts,
        memory=memory_run.facts,
        disk=disk_run.facts,
        distributed=dist_run.facts if dist_run is not None else None,
        kernel_smoke=facts.kernels,
        checks=rows,
        issues=issues,
    )


def build_training_preflight_report(
    request: TrainingPreflightRequest,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
    torch_process: TorchProcessFn | None = None,
    cpu_load: Callable[[], float | None] | None = None,
) -> PreflightReport:
    """Seed API: read the request's params file and probe everything the training run needs (never raises for probe failures)."""
    loaded = LoadedParams.read(request.params_path)
    return build_report(
        loaded, request, generated_at=generated_at, dependency_probe=dependency_probe, accelerator_probe=accelerator_probe,
        torch_process=torch_process, cpu_load=cpu_load,
    )  # fmt: skip


TRANSIENT_CODES = frozenset({"cpu.busy", "gpu.busy"})
"""Warnings about the moment (other jobs on the CPU or the GPU): in the report, never in the outcome, so that a busy
machine does not change the outcome, or the release that records it."""


def outcome_of(report: PreflightReport) -> PreflightOutcome:
    """The deterministic part of a report: ok, device and issue codes (what release gates on), less the warnings about
    the moment (`TRANSIENT_CODES`)."""
    return PreflightOutcome(
        ok=report.ok,
        resolved_device=report.resolved_device,
        error_codes=sorted({i.code for i in report.issues if i.severity == "error"}),
        warning_codes=sorted({i.code for i in report.issues if i.severity == "warning" and i.code not in TRANSIENT_CODES}),
    )
