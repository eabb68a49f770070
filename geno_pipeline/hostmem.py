"""How much memory this process may still use (the budget every stage checks before it starts work), and how many
CPUs it may run on."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_host_memory", "usable_cores"]


def available_host_memory(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process may still use: MemAvailable, or less where a cgroup v2 limit leaves less (None: unknown)."""
    have: int | None = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        have = None
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cgroup / "memory.current").read_text().strip())
            have = left if have is None else min(have, left)
    except (OSError, ValueError):
        pass
    return have


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
