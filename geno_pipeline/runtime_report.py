"""Volatile per-stage facts (wall time, throughput, git commit, host) in reports/runtime/<stage>.json.

These are deliberately kept out of every DVC output so that outputs stay byte-identical.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from geno_pipeline.jsonio import write_json

__all__ = ["RuntimeReport", "git_state", "utc_now", "write_runtime_report"]


class RuntimeReport(BaseModel):
    """Wall-clock and host facts of one stage run (not a DVC output)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    stage: str
    """Stage name."""
    started_at: str
    """UTC start time (ISO 8601)."""
    duration_s: float = Field(ge=0)
    """Wall time of the stage in seconds."""
    host: str
    """Host name."""
    git_commit: str | None
    """Commit of the working tree, when it is a git checkout."""
    git_dirty: bool | None
    """Whether the working tree had uncommitted changes."""
    facts: dict[str, float | int | str | bool | None]
    """Stage-specific volatile facts (throughput, steps run, ...)."""


def utc_now() -> str:
    """Current UTC time, second precision, ISO 8601 with Z."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `root`, or (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def write_runtime_report(
    root: Path, stage: str, *, started_at: str, duration_s: float, facts: dict[str, float | int | str | bool | None]
) -> Path:
    """Write reports/runtime/<stage>.json and return its path."""
    commit, dirty = git_state(root)
    report = RuntimeReport(
        stage=stage,
        started_at=started_at,
        duration_s=round(duration_s, 3),
        host=platform.node(),
        git_commit=commit,
        git_dirty=dirty,
        facts=facts,
    )
    path = Path(root) / "reports" / "runtime" / f"{stage}.json"
    write_json(path, report, schema="runtime_report")
    return path
