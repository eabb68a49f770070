"""CPU check: whether other work on this machine leaves training the cores it asks for.

The 1-minute load average counts the tasks running or waiting to run. When it and the threads training asks for
(`runtime.nproc_per_node x runtime.cpu_threads`) add up to more than the cores by over half a core, `cpu.busy` warns
with the load and the slowdown to expect: about the fair share, (load + threads) / cores, since the command's OpenMP
threads do not spin away the time slices of the threads they wait for (`geno_pipeline.openmp`). The bytes do not
change; only the time does. The warning is about the moment, so it is left out of the deterministic outcome
(`runner.TRANSIENT_CODES`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from geno_pipeline.config import RuntimeParams
from geno_pipeline.hostmem import usable_cores
from geno_pipeline.preflight.checks.base import Finding, passed, problem, skipped
from geno_pipeline.preflight.documents import CpuProbe

__all__ = ["CPU_REMEDY", "CpuCheck", "expected_slowdown", "load_average"]

CPU_REMEDY = (
    "run when the other jobs have finished, or on a quieter machine; the outputs are the same bytes either way "
    "(a lower runtime.cpu_threads needs fewer cores but changes the environment class, and so the bytes)"
)
SLACK_CORES = 0.5  # load below half a core over the cores is noise, not contention


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def expected_slowdown(load: float, threads: int, cores: int) -> float:
    """How many times longer than on an idle machine a run of `threads` threads should take beside `load`: its fair
    share, (load + threads) / max(cores, threads), at least 1."""
    return max(1.0, (load + threads) / max(cores, threads))


@dataclass(frozen=True)
class CpuCheck:
    """`cpu`: the machine's recent load leaves the cores training asks for."""

    runtime: RuntimeParams  # with this node's share of the job in nproc_per_node
    name: str = "cpu"
    load: Callable[[], float | None] = load_average
    cores: Callable[[], int] = usable_cores

    def probe(self) -> CpuProbe:
        return CpuProbe(cores=self.cores(), load_1m=self.load(), threads=self.runtime.nproc_per_node * self.runtime.cpu_threads)

    def assess(self, facts: CpuProbe) -> list[Finding]:
        if facts.load_1m is None:
            return [skipped(self.name, "no load average on this platform")]
        load, threads, cores = facts.load_1m, facts.threads, facts.cores
        text = (
            f"load average {load:.1f} over the last minute on {cores} core(s); training asks for {threads} thread(s) "
            f"(runtime.nproc_per_node x runtime.cpu_threads)"
        )
        if load + threads <= cores + SLACK_CORES:
            return [passed(self.name, text)]
        slowdown = expected_slowdown(load, threads, cores)
        return [
            problem(
                self.name, "warning", "cpu.busy", "runtime.cpu_threads",
                f"{text}: about {max(cores - load, 0.0):.1f} core(s) free; expect training to take about {slowdown:.1f}x as "
                "long as on an idle machine",
                CPU_REMEDY,
            )
        ]  # fmt: skip
