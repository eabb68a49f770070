"""Volatile per-stage facts (wall time, throughput, git commit, host) in reports/runtime/<stage>.json.

These are deliberately kept out of every DVC output so that outputs stay byte-identical.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout

__all__ = ["Fact", "RuntimeReport", "StageResult", "git_state", "utc_now", "write_runtime_report"]

Fact = float | int | str | bool | None
DocT = TypeVar("DocT")


@dataclass(frozen=True)
class StageResult(Generic[DocT]):
    """What a stage's `run` returns: its report document, and volatile facts for reports/runtime/<stage>.json."""

    document: DocT
    facts: Mapping[str, Fact] = field(default_factory=dict)
    quiet: bool = False  # a worker other than rank 0: the CLI prints and writes nothing for it


class RuntimeReport(Document):
    """Wall-clock and host facts of one stage run (not a DVC output)."""

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
    facts: dict[str, Fact]
    """Stage-specific volatile facts (throughput, steps run, ...)."""


def utc_now() -> str:
    """Current UTC time, second precision, ISO 8601 with Z."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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


def write_runtime_report(layout: Layout, stage: str, *, started_at: str, duration_s: float, facts: Mapping[str, Fact]) -> Path:
    """Write reports/runtime/<stage>.json and return its path."""
    commit, dirty = git_state(layout.root)
    report = RuntimeReport(
        stage=stage,
        started_at=started_at,
        duration_s=round(duration_s, 3),
        host=platform.node(),
        git_commit=commit,
        git_dirty=dirty,
        facts=dict(facts),
    )
    path = layout.runtime_report(stage)
    write_json(path, report, schema="runtime_report")
    return path
