"""What every preflight check is: a `probe()` that gathers facts and an `assess(facts)` that returns findings.

A `Finding` is rendered once as a table row and once as an issue, so nothing is written twice. A
probe that raises becomes a `preflight.probe_error` finding, never a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from geno_pipeline.preflight.documents import CheckStatus, PreflightCheck, Severity, TrainingPreflightIssue

__all__ = ["Check", "CheckRun", "Finding", "passed", "problem", "run_check", "skipped"]

F = TypeVar("F")


@dataclass(frozen=True)
class Finding:
    """One thing a check found: a table row, an issue, or both."""

    check: str  # the row's name, e.g. `dependency.torch`
    status: CheckStatus
    message: str  # the row's text
    code: str | None = None
    remedy: str | None = None
    severity: Severity | None = None  # set: the finding is also an issue
    path: str | None = None  # file, params key or device the issue is about
    detail: str | None = None  # the issue's text, when it says more than the row
    row: bool = True  # False: an issue with no row of its own (a cross-check, or one of several problems)

    def check_row(self, duration_ms: float) -> PreflightCheck:
        """The row in the table and in `checks[]`."""
        return PreflightCheck(
            name=self.check, status=self.status, code=self.code, message=self.message, remedy=self.remedy, duration_ms=round(duration_ms, 3)
        )

    def issue(self) -> TrainingPreflightIssue | None:
        """The entry in `issues[]` (None for a pass or skip row)."""
        if self.severity is None or self.code is None:
            return None
        return TrainingPreflightIssue(
            severity=self.severity, code=self.code, path=self.path, message=self.detail or self.message, remedy=self.remedy or ""
        )


def passed(check: str, message: str) -> Finding:
    """A row that passed."""
    return Finding(check, "pass", message)


def skipped(check: str, message: str) -> Finding:
    """A row that does not apply here."""
    return Finding(check, "skip", message)


def problem(
    check: str,
    severity: Severity,
    code: str,
    path: str | None,
    message: str,
    remedy: str,
    *,
    detail: str | None = None,
    row: bool = True,
    status: CheckStatus | None = None,
) -> Finding:
    """An error (row `fail`) or a warning (row `warn`) with its code and remedy."""
    status = status or ("fail" if severity == "error" else "warn")
    return Finding(check, status, message, code, remedy, severity, path, detail, row)


class Check(Protocol[F]):
    """A preflight check: `probe()` gathers facts (injectable in tests), `assess(facts)` judges them."""

    @property
    def name(self) -> str: ...

    def probe(self) -> F: ...

    def assess(self, facts: F) -> list[Finding]: ...


@dataclass(frozen=True)
class CheckRun(Generic[F]):
    """The facts a check gathered (None when its probe raised), its findings and the probe's time."""

    facts: F | None
    findings: list[Finding]
    duration_ms: float


def run_check(check: Check[F]) -> CheckRun[F]:
    """Probe, then assess; a probe that raises becomes one `preflight.probe_error` finding."""
    start = time.perf_counter()
    try:
        facts = check.probe()
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        finding = problem(
            check.name,
            "error",
            "preflight.probe_error",
            check.name,
            text,
            "this is a bug or a broken installation; the exception text says where",
            detail=f"probe {check.name!r} raised {text}",
        )
        return CheckRun(None, [finding], (time.perf_counter() - start) * 1000.0)
    ms = (time.perf_counter() - start) * 1000.0
    return CheckRun(facts, check.assess(facts), ms)
