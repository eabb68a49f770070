"""`geno-pipeline preflight`: print the table, write the report, exit 0 (ok) or 3 (not ok)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from geno_pipeline.preflight.models import PreflightReport, TrainingPreflightRequest
from geno_pipeline.preflight.report import write_training_preflight_report
from geno_pipeline.runtime_report import utc_now, write_runtime_report

__all__ = ["format_table", "run_preflight_cli"]

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def format_table(report: PreflightReport) -> str:
    """One line per check, then the issues with their remedies."""
    width = max((len(c.name) for c in report.checks), default=10)
    lines = [f"  {_MARK[c.status]}  {c.name:<{width}}  {c.message}" for c in report.checks]
    for issue in report.issues:
        lines.append(f"  {issue.severity.upper()} {issue.code}: {issue.message}\n      remedy: {issue.remedy}")
    return "\n".join(lines)


def run_preflight_cli(*, root: Path, params_path: Path | None, output: Path | None) -> int:
    """Run preflight for a project root; returns the CLI exit code."""
    started, t0 = utc_now(), time.perf_counter()
    request = TrainingPreflightRequest.for_root(root, params_path)
    out = output if output is not None else root / "reports" / "preflight.json"
    report = write_training_preflight_report(request, out, generated_at=started)
    print(format_table(report))
    errors = sum(1 for i in report.issues if i.severity == "error")
    warnings = len(report.issues) - errors
    verdict = "ok" if report.ok else "NOT OK"
    print(f"preflight: {verdict} (device {report.resolved_device}; {errors} error(s), {warnings} warning(s)); report: {out}")
    write_runtime_report(
        root,
        "preflight",
        started_at=started,
        duration_s=time.perf_counter() - t0,
        facts={"ok": report.ok, "resolved_device": report.resolved_device},
    )
    if not report.ok:
        print("preflight: stopping here; fix the errors above and run again", file=sys.stderr)
        return 3
    return 0
