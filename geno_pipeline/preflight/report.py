"""Build and write the preflight report: every probe isolated, every failure an issue."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from geno_pipeline import __version__
from geno_pipeline.config import Params, PreflightParams, RuntimeParams, load_params
from geno_pipeline.environment import CUBLAS_WORKSPACE_CONFIG, build_fingerprint, package_version
from geno_pipeline.errors import ConfigError
from geno_pipeline.jsonio import write_json
from geno_pipeline.preflight.accelerator import AcceleratorProbeFn, assess_accelerator, probe_accelerator
from geno_pipeline.preflight.dependencies import (
    DEPENDENCIES,
    DependencyProbeFn,
    DependencySpec,
    declared_minimums,
    probe_dependency,
)
from geno_pipeline.preflight.models import (
    AcceleratorProbe,
    DependencyProbe,
    DeterminismProbe,
    DiskProbe,
    EnvironmentInfo,
    NvmlProbe,
    PreflightCheck,
    PreflightOutcome,
    PreflightReport,
    Severity,
    TorchCudaProbe,
    TrainingPreflightIssue,
    TrainingPreflightRequest,
    preflight_issue,
)
from geno_pipeline.runtime_report import utc_now

__all__ = [
    "build_training_preflight_report",
    "device_kind_for",
    "outcome_of",
    "write_training_preflight_report",
]

GIB = 1024**3
T = TypeVar("T")
_VALID_CUBLAS = {":4096:8", ":16:8"}


class _Collector:
    """Runs probes so that one that raises becomes `preflight.probe_error`, never a crash."""

    def __init__(self) -> None:
        self.checks: list[PreflightCheck] = []
        self.issues: list[TrainingPreflightIssue] = []

    def run(self, name: str, fn: Callable[[], T]) -> tuple[T | None, float]:
        start = time.perf_counter()
        try:
            return fn(), (time.perf_counter() - start) * 1000.0
        except Exception as exc:
            ms = (time.perf_counter() - start) * 1000.0
            text = f"{type(exc).__name__}: {exc}"
            self.issues.append(
                preflight_issue(
                    "error",
                    "preflight.probe_error",
                    name,
                    f"probe {name!r} raised {text}",
                    "this is a bug or a broken installation; the exception text says where",
                )
            )
            self.checks.append(
                PreflightCheck(
                    name=name,
                    status="fail",
                    code="preflight.probe_error",
                    message=text,
                    remedy="see the issue text",
                    duration_ms=round(ms, 3),
                )
            )
            return None, ms

    def check(
        self, name: str, status: str, message: str, *, code: str | None = None, remedy: str | None = None, duration_ms: float = 0.0
    ) -> None:
        self.checks.append(
            PreflightCheck(
                name=name,
                status=status,
                code=code,
                message=message,
                remedy=remedy,  # type: ignore[arg-type]
                duration_ms=round(duration_ms, 3),
            )
        )


def _dependency_results(c: _Collector, root: Path, probe: DependencyProbeFn) -> list[DependencyProbe]:
    minimums = declared_minimums(root)
    results = []
    for import_name, package, required in DEPENDENCIES:
        spec = DependencySpec(import_name, package, required, minimums.get(package.lower().replace("_", "-")))
        result, ms = c.run(f"dependency.{import_name}", lambda spec=spec: probe(spec))  # type: ignore[misc]
        if result is None:
            continue
        results.append(result)
        severity: Severity = "error" if result.required else "warning"
        status = "fail" if result.required else "warn"
        label = f"{package} {result.version or '(not installed)'}"
        if not result.available:
            code = "dependency.missing" if result.version is None else "dependency.import_error"
            remedy = (
                "pip install -c requirements.lock -e . (installs every pinned dependency)"
                if code == "dependency.missing"
                else f"reinstall {package} (pip install --force-reinstall -c requirements.lock {package}); the import error names the cause"
            )
            c.issues.append(preflight_issue(severity, code, import_name, f"{label}: {result.reason}", remedy))
            c.check(f"dependency.{import_name}", status, f"{label}: {result.reason}", code=code, remedy=remedy, duration_ms=ms)
        elif result.version_ok is False:
            remedy = f"pip install -c requirements.lock '{package}>={result.minimum_version}'"
            c.issues.append(preflight_issue(severity, "dependency.too_old", import_name, f"{label}: {result.reason}", remedy))
            c.check(
                f"dependency.{import_name}", status, f"{label}: {result.reason}", code="dependency.too_old", remedy=remedy, duration_ms=ms
            )
        else:
            minimum = f" (>= {result.minimum_version})" if result.minimum_version else ""
            c.check(f"dependency.{import_name}", "pass", f"{label}{minimum}", duration_ms=ms)
    return results


def _determinism(runtime: RuntimeParams, resolved_device: str, torch_probe: TorchCudaProbe | None) -> DeterminismProbe:
    import torch

    cuda = resolved_device.startswith("cuda")
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
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
        cublas_workspace_config_env=env,
        cublas_workspace_config_applied=CUBLAS_WORKSPACE_CONFIG if (cuda and runtime.deterministic) else None,
        deterministic_algorithms_supported=supported,
        tf32_allowed=not runtime.deterministic,
        cudnn_benchmark=False,
        can_take_effect=not (cuda and initialised),
    )


def _assess_determinism(c: _Collector, probe: DeterminismProbe, ms: float) -> None:
    if not probe.deterministic:
        c.issues.append(
            preflight_issue(
                "warning",
                "determinism.disabled",
                "runtime.deterministic",
                "runtime.deterministic is false: results are not guaranteed to be reproducible",
                "set runtime.deterministic: true",
            )
        )
        c.check(
            "determinism",
            "warn",
            "deterministic mode off",
            code="determinism.disabled",
            remedy="set runtime.deterministic: true",
            duration_ms=ms,
        )
        return
    if not probe.deterministic_algorithms_supported:
        c.issues.append(
            preflight_issue(
                "error",
                "determinism.unsupported",
                "runtime.deterministic",
                "torch.use_deterministic_algorithms(True) was refused",
                "upgrade torch to the locked version (requirements.lock)",
            )
        )
        c.check("determinism", "fail", "deterministic algorithms unsupported", code="determinism.unsupported", duration_ms=ms)
        return
    if probe.cublas_workspace_config_applied and probe.cublas_workspace_config_env not in (None, *_VALID_CUBLAS):
        c.issues.append(
            preflight_issue(
                "warning",
                "determinism.cublas_workspace_override",
                "CUBLAS_WORKSPACE_CONFIG",
                f"CUBLAS_WORKSPACE_CONFIG={probe.cublas_workspace_config_env!r} is not a deterministic setting; "
                f"train will override it with {CUBLAS_WORKSPACE_CONFIG}",
                f"unset CUBLAS_WORKSPACE_CONFIG or set it to {CUBLAS_WORKSPACE_CONFIG}",
            )
        )
    if not probe.can_take_effect:
        c.issues.append(
            preflight_issue(
                "warning",
                "determinism.cuda_already_initialized",
                "CUBLAS_WORKSPACE_CONFIG",
                "CUDA was initialised before preflight could check that CUBLAS_WORKSPACE_CONFIG can take effect",
                "do not import code that touches CUDA before geno-pipeline sets its determinism flags",
            )
        )
    applied = probe.cublas_workspace_config_applied or "n/a on CPU"
    c.check(
        "determinism",
        "pass" if probe.can_take_effect else "warn",
        f"deterministic algorithms on, TF32 off, cuDNN benchmark off, CUBLAS_WORKSPACE_CONFIG {applied}",
        duration_ms=ms,
    )


def _disk(artifacts: Path, preflight: PreflightParams) -> DiskProbe:
    existing = Path(artifacts)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    writable = True
    try:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".preflight-write-", dir=artifacts)
        try:
            os.write(fd, b"geno-pipeline preflight write test\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError:
        writable = False
    return DiskProbe(path=str(artifacts), free_bytes=int(free), min_free_bytes=int(preflight.min_free_disk_gib * GIB), writable=writable)


def _assess_disk(c: _Collector, disk: DiskProbe, ms: float) -> None:
    problems = []
    if disk.free_bytes < disk.min_free_bytes:
        problems.append(
            (
                "disk.insufficient_space",
                f"{disk.free_bytes / GIB:.2f} GiB free at {disk.path}, need {disk.min_free_bytes / GIB:.2f} GiB",
                "free disk space or lower preflight.min_free_disk_gib",
            )
        )
    if not disk.writable:
        problems.append(("disk.not_writable", f"cannot write to {disk.path}", "fix the directory's permissions or free its disk"))
    for code, message, remedy in problems:
        c.issues.append(preflight_issue("error", code, disk.path, message, remedy))
        c.check("disk", "fail", message, code=code, remedy=remedy, duration_ms=ms)
    if not problems:
        c.check("disk", "pass", f"{disk.free_bytes / GIB:.1f} GiB free at {disk.path}, writable", duration_ms=ms)


def _assess_dataset(c: _Collector, dataset_dir: Path) -> str | None:
    from geno_pipeline.data.dataset import MANIFEST_NAME, dataset_problems
    from geno_pipeline.jsonio import read_json

    problems, ms = c.run("dataset", lambda: dataset_problems(dataset_dir))
    if problems is None:
        return None
    for code, message in problems:
        c.issues.append(
            preflight_issue("error", code, str(dataset_dir), message, "rebuild the dataset: geno-pipeline data (or dvc repro data)")
        )
    if problems:
        c.check(
            "dataset",
            "fail",
            problems[0][1] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
            code=problems[0][0],
            remedy="rebuild the dataset: geno-pipeline data",
            duration_ms=ms,
        )
        return None
    manifest = read_json(dataset_dir / MANIFEST_NAME)
    counts = manifest["counts"]
    c.check(
        "dataset",
        "pass",
        f"{manifest['dataset_id']}: {counts['train_windows']} train / {counts['valid_windows']} valid windows, every sha256 matches",
        duration_ms=ms,
    )
    return str(manifest["dataset_id"])


def device_kind_for(probe: AcceleratorProbe) -> str:
    """Fingerprint device kind: `cpu` or `cuda:<name>:sm_<capability>`."""
    if not probe.resolved_device.startswith("cuda") or not probe.available:
        return "cpu"
    index = int(probe.resolved_device.split(":")[1])
    dev = probe.torch.devices[index] if index < len(probe.torch.devices) else None
    if dev is None:
        return "cuda"
    return f"cuda:{dev.name}:sm_{dev.capability.replace('.', '')}"


def _empty_accelerator(runtime: RuntimeParams, preflight: PreflightParams, error: str) -> AcceleratorProbe:
    return AcceleratorProbe(
        requested_device=runtime.device,
        resolved_device="cpu",
        required=preflight.require_accelerator,
        available=False,
        device_count=0,
        device_name=None,
        total_memory_bytes=None,
        free_memory_bytes=None,
        min_memory_bytes=int(preflight.min_vram_gib * GIB),
        reason=f"probe failed: {error}",
        cuda_visible_devices=None,
        visible=[],
        nvml=NvmlProbe(
            available=False, error_code="nvml.init_failed", error=error, driver_version=None, cuda_driver_version=None, devices=[]
        ),
        torch=TorchCudaProbe(
            torch_version=None,
            cuda_available=False,
            device_count=0,
            cuda_version=None,
            cudnn_version=None,
            cuda_initialized_before_probe=False,
            devices=[],
            error=error,
        ),
    )


def build_training_preflight_report(
    request: TrainingPreflightRequest,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
) -> PreflightReport:
    """Probe everything the training run needs and return the report (never raises for probe failures)."""
    c = _Collector()
    # 1) params
    start = time.perf_counter()
    try:
        params = load_params(request.params_path)
        params_valid = True
        c.check("params", "pass", f"{request.params_path} is valid", duration_ms=(time.perf_counter() - start) * 1000)
    except ConfigError as exc:
        params, params_valid = Params(), False
        for problem in exc.problems or (str(exc),):
            c.issues.append(
                preflight_issue("error", "params.invalid", str(request.params_path), problem, "fix params.yaml as the message says")
            )
        c.check(
            "params",
            "fail",
            f"{len(exc.problems) or 1} problem(s) in {request.params_path}; defaults used for the other checks",
            code="params.invalid",
            remedy="fix params.yaml",
            duration_ms=(time.perf_counter() - start) * 1000,
        )
    runtime = params.runtime
    overrides: dict[str, Any] = {}
    if request.min_cuda_vram_gb is not None:
        overrides["min_vram_gib"] = request.min_cuda_vram_gb
    if request.require_accelerator is not None:
        overrides["require_accelerator"] = request.require_accelerator
    preflight = params.preflight.model_copy(update=overrides) if overrides else params.preflight

    # 2) dependencies
    dependencies = _dependency_results(c, request.root, dependency_probe or probe_dependency)

    # 3) accelerator: NVML, torch, visibility, VRAM gate
    probe_fn = accelerator_probe or (lambda rt, pf: probe_accelerator(rt, pf))
    accelerator, ms = c.run("accelerator", lambda: probe_fn(runtime, preflight))
    if accelerator is None:
        accelerator = _empty_accelerator(runtime, preflight, c.checks[-1].message)
    else:
        acc_checks, acc_issues = assess_accelerator(accelerator, duration_ms=round(ms, 3))
        c.checks.extend(acc_checks)
        c.issues.extend(acc_issues)

    # 4) determinism, 5) disk, 6) dataset
    determinism, ms = c.run("determinism", lambda: _determinism(runtime, accelerator.resolved_device, accelerator.torch))
    if determinism is not None:
        _assess_determinism(c, determinism, ms)
    disk, ms = c.run("disk", lambda: _disk(request.artifacts_dir, preflight))
    if disk is not None:
        _assess_disk(c, disk, ms)
    dataset_id = _assess_dataset(c, request.dataset_dir)

    issues = sorted(c.issues, key=lambda i: (i.severity != "error", i.code))
    ok = not any(i.severity == "error" for i in issues)
    packages = {package: package_version(package) for _, package, _ in DEPENDENCIES}
    packages["geno-pipeline"] = __version__
    return PreflightReport(
        generated_by=f"geno-pipeline {__version__}",
        generated_at=generated_at or utc_now(),
        ok=ok,
        resolved_device=accelerator.resolved_device,
        params_path=str(request.params_path),
        params_valid=params_valid,
        dataset_dir=str(request.dataset_dir),
        dataset_id=dataset_id,
        environment=EnvironmentInfo(
            python=sys.version.split()[0], platform=platform.platform(), machine=platform.machine(), packages=packages
        ),
        accelerator=accelerator,
        dependencies=dependencies,
        determinism=determinism,
        disk=disk,
        checks=c.checks,
        issues=issues,
    )


def write_training_preflight_report(
    request: TrainingPreflightRequest,
    output: Path | None = None,
    *,
    generated_at: str | None = None,
    dependency_probe: DependencyProbeFn | None = None,
    accelerator_probe: AcceleratorProbeFn | None = None,
) -> PreflightReport:
    """Build the report, write it (schema-validated, atomic) and the environment fingerprint; return it."""
    report = build_training_preflight_report(
        request, generated_at=generated_at, dependency_probe=dependency_probe, accelerator_probe=accelerator_probe
    )
    output = Path(output) if output is not None else request.root / "reports" / "preflight.json"
    write_json(output, report, schema="preflight_report")
    try:
        runtime = load_params(request.params_path).runtime
    except ConfigError:
        runtime = RuntimeParams()
    fingerprint = build_fingerprint(runtime, device_kind=device_kind_for(report.accelerator))
    write_json(request.artifacts_dir / "preflight" / "environment.json", fingerprint, schema="environment")
    write_json(request.artifacts_dir / "preflight" / "outcome.json", outcome_of(report), schema="preflight_outcome")
    return report


def outcome_of(report: PreflightReport) -> PreflightOutcome:
    """The deterministic part of a report: ok, device and issue codes (what release gates on)."""
    return PreflightOutcome(
        ok=report.ok,
        resolved_device=report.resolved_device,
        error_codes=sorted({i.code for i in report.issues if i.severity == "error"}),
        warning_codes=sorted({i.code for i in report.issues if i.severity == "warning"}),
    )
