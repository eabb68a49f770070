"""Disk check: free space and a real write where artifacts/ lives."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geno_pipeline.config import PreflightParams
from geno_pipeline.preflight.checks.base import Finding, passed, problem
from geno_pipeline.preflight.documents import DiskProbe

__all__ = ["GIB", "DiskCheck", "probe_disk"]

GIB = 1024**3


def probe_disk(artifacts: Path, preflight: PreflightParams) -> DiskProbe:
    """Free bytes of the nearest existing parent, and whether a file can really be written and deleted."""
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


@dataclass(frozen=True)
class DiskCheck:
    """`disk`: enough free space, writable."""

    artifacts: Path
    preflight: PreflightParams
    name: str = "disk"

    def probe(self) -> DiskProbe:
        return probe_disk(self.artifacts, self.preflight)

    def assess(self, facts: DiskProbe) -> list[Finding]:
        findings = []
        if facts.free_bytes < facts.min_free_bytes:
            message = f"{facts.free_bytes / GIB:.2f} GiB free at {facts.path}, need {facts.min_free_bytes / GIB:.2f} GiB"
            remedy = "free disk space or lower preflight.min_free_disk_gib"
            findings.append(problem(self.name, "error", "disk.insufficient_space", facts.path, message, remedy))
        if not facts.writable:
            remedy = "fix the directory's permissions or free its disk"
            findings.append(problem(self.name, "error", "disk.not_writable", facts.path, f"cannot write to {facts.path}", remedy))
        return findings or [passed(self.name, f"{facts.free_bytes / GIB:.1f} GiB free at {facts.path}, writable")]
