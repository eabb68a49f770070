"""Helpers the benches share: a generated FASTA, a child process's wall time and peak RSS, a scratch project's params."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["fasta_lines", "ingest_params", "measured", "write_bench_fasta"]


def fasta_lines(letters: np.ndarray, width: int = 60) -> bytes:
    """ASCII sequence as FASTA lines of `width` characters, each ending in a newline."""
    full = letters.size // width * width
    rows = np.concatenate((letters[:full].reshape(-1, width), np.full((full // width, 1), 10, dtype=np.uint8)), axis=1)
    tail = letters[full:].tobytes() + b"\n" if letters.size > full else b""
    return rows.tobytes() + tail


def write_bench_fasta(path: Path, bases: int, *, seed: int = 0, records: int = 8) -> None:
    """A FASTA of `bases` bases in `records` records, 60-column lines, with N runs, soft-masked stretches and IUPAC codes."""
    rng = np.random.default_rng(seed)
    per_record = bases // records
    with path.open("wb") as handle:
        for index in range(records):
            n = per_record if index < records - 1 else bases - per_record * (records - 1)
            letters = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, n, dtype=np.uint8)]
            for _ in range(20):  # soft-masked repeats
                start = int(rng.integers(0, n))
                letters[start : start + int(rng.integers(1000, 200_000))] |= 0x20
            for _ in range(4):  # assembly gaps
                start = int(rng.integers(0, n))
                letters[start : start + int(rng.integers(100, 50_000))] = ord("N")
            letters[rng.integers(0, n, 50)] = np.frombuffer(b"RYKMSWBDHV", dtype=np.uint8)[rng.integers(0, 10, 50)]
            handle.write(f">chr{index + 1} bench record {index + 1}\n".encode() + fasta_lines(letters))


# Runs a command's Python code in this process, then prints the process's own peak RSS (VmHWM, which exec resets; the
# ru_maxrss of wait4 would also count the forking parent's memory).
_PEAK_RSS_WRAPPER = """import atexit, runpy, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nbench-peak-rss-kib " + line.split()[1] + "\\n")
atexit.register(_peak)
mode, target, *sys.argv[1:] = sys.argv[1:]
if mode == "-m":
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv[0] = "-c"
    exec(compile(target, "<bench>", "exec"), {"__name__": "__main__"})
"""


def measured(args: list[str], cwd: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one Python child process run as `python ARGS`, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("bench-peak-rss-kib ")]
    return wall, int(peaks[-1]) * 1024 if peaks else 0


def ingest_params(root: Path, project: Path, fasta_path: str) -> None:
    """The root's params with `data` reading `fasta_path`, written into the scratch project."""
    import yaml

    params = yaml.safe_load(root.joinpath("params.yaml").read_text())
    params["data"].update(source="fasta", fasta_path=fasta_path, records=None, valid_records=None)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
