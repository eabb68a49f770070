"""The `preflight` stage: run the checks, write reports/preflight.json, the environment fingerprint and the outcome."""

from __future__ import annotations

import sys
from pathlib import Path

from geno_pipeline.config import LoadedParams, RuntimeParams
from geno_pipeline.distributed import planned_world_size
from geno_pipeline.environment import build_fingerprint
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout
from geno_pipeline.preflight.checks.accelerator import AcceleratorProbeFn, fingerprint_device_kind
from geno_pipeline.preflight.checks.dependencies import DependencyProbeFn
from geno_pipeline.preflight.documents import PreflightReport
from geno_pipeline.preflight.runner import TrainingPreflightRequest, build_report, outcome_of
from geno_pipeline.preflight.torch_process import TorchProcessFn
from geno_pipeline.runtime_report import StageResult

__all__ = [
    "assess",
    "fingerprint_cpu_class",
    "fingerprint_tf32",
    "format_table",
    "run",
    "summary",
    "write_outputs",
    "write_training_preflight_report",
]

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def fingerprint_tf32(report: PreflightReport, runtime: RuntimeParams) -> bool:
    """TF32 as torch reported it in the probe process after train's settings; when the probe did not report (torch
    unusable, which fails preflight anyway), the setting train applies: TF32 on exactly when not deterministic."""
    if report.determinism is not None:
        return report.determinism.tf32_allowed
    return not runtime.deterministic


def fingerprint_cpu_class(report: PreflightReport) -> str | None:
    """The CPU class the probe process read from torch; None when it did not report (torch unusable: preflight fails)."""
    return report.determinism.cpu_class if report.determinism is not None else None


def write_outputs(report: PreflightReport, loaded: LoadedParams, layout: Layout, output: Path | None = None) -> None:
    """reports/preflight.json (volatile), artifacts/preflight/environment.json and outcome.json (deterministic); with an
    `output` path, a what-if: the report there and nothing else (the project's fingerprint and outcome, which train
    and release read, stay as they were)."""
    write_json(output or layout.preflight_report, report, schema="preflight_report")
    if output is not None:
        return
    runtime = loaded.params.runtime
    world = planned_world_size(runtime.nproc_per_node)
    kind = fingerprint_device_kind(report.accelerator)
    tf32, cpu_class = fingerprint_tf32(report, runtime), fingerprint_cpu_class(report)
    fingerprint = build_fingerprint(runtime, device_kind=kind, world_size=world, tf32=tf32, cpu_class=cpu_class)
    write_json(layout.environment, fingerprint, schema="environment")
    write_json(layout.preflight_outcome, outcome_of(report), schema="preflight_outcome")


def assess(
    loaded: LoadedParams,
    layout: Layout,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
    torch_process: TorchProcessFn | None = None,
) -> StageResult[PreflightReport]:
    """Probe this machine for the job described by `loaded`, writing nothing (invalid params are findings, not a crash).

    The CLI prints the result before it writes, so a finding such as `disk.not_writable` reaches the user even when
    the writes then fail.
    """
    for leftover in layout.sweep_stage_temporaries("preflight"):
        print(f"preflight: removed {layout.rel(leftover)} left by an interrupted run", file=sys.stderr)
    request = TrainingPreflightRequest.for_root(layout.root, loaded.path)
    report = build_report(
        loaded, request, generated_at=generated_at, dependency_probe=dependency_probe, accelerator_probe=accelerator_probe,
        torch_process=torch_process,
    )  # fmt: skip
    return StageResult(report, {"ok": report.ok, "resolved_device": report.resolved_device})


def run(
    loaded: LoadedParams,
    layout: Layout,
    *,
    output: Path | None = None,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
    torch_process: TorchProcessFn | None = None,
) -> StageResult[PreflightReport]:
    """`assess`, then write the report, the fingerprint and the outcome."""
    result = assess(
        loaded, layout, generated_at=generated_at, dependency_probe=dependency_probe, accelerator_probe=accelerator_probe,
        torch_process=torch_process,
    )  # fmt: skip
    write_outputs(result.document, loaded, layout, output)
    return result


def write_training_preflight_report(
    request: TrainingPreflightRequest,
    output: Path | None = None,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
    torch_process: TorchProcessFn | None = None,
) -> PreflightReport:
    """Seed API: build the report for `request`, write it and the fingerprint; return it."""
    loaded = LoadedParams.read(request.params_path)
    report = build_report(
        loaded, request, generated_at=generated_at, dependency_probe=dependency_probe, accelerator_probe=accelerator_probe,
        torch_process=torch_process,
    )  # fmt: skip
    layout = Layout.for_root(request.root)
    write_outputs(report, loaded, layout, Path(output) if output is not None else None)
    return report


def format_table(report: PreflightReport) -> str:
    """One line per check, then the issues with their remedies."""
    width = max((len(c.name) for c in report.checks), default=10)
    lines = [f"  {_MARK[c.status]}  {c.name:<{width}}  {c.message}" for c in report.checks]
    for issue in report.issues:
        lines.append(f"  {issue.severity.upper()} {issue.code}: {issue.message}\n      remedy: {issue.remedy}")
    return "\n".join(lines)


def summary(layout: Layout, report: PreflightReport, output: Path | None = None) -> list[str]:
    """The table and the verdict line the CLI prints."""
    errors = sum(1 for i in report.issues if i.severity == "error")
    verdict = "ok" if report.ok else "NOT OK"
    counts = f"{errors} error(s), {len(report.issues) - errors} warning(s)"
    where = f"{output} (a what-if: {layout.rel(layout.preflight_outcome.parent)}/ unchanged)" if output else layout.preflight_report
    return [format_table(report), f"preflight: {verdict} (device {report.resolved_device}; {counts}); report: {where}"]
