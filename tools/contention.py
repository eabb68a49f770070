"""The train stage on a busy machine (`python -m tools.contention`): the default profile's stage for a few hundred steps,
alone and beside one and two competing torch processes that each use every core (small-op training loops, as a second
job or a test suite would be), for cpu_threads 1 and 2 and for each way OpenMP threads may wait.

Slowdown is loaded seconds / alone seconds of the same configuration; the fair share is how many times the machine's
cores are asked for: (this run's threads + the competitors' threads) / cores, at least 1 (two competitors that each
use both cores of a 2-core machine beside a 2-thread run: 3). Each run's model.safetensors sha256 is recorded: a wait
policy changes when threads run, never the bytes. Writes reports/bench/contention.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from geno_pipeline.checksums import sha256_file
from geno_pipeline.documents import Document
from geno_pipeline.hostmem import usable_cores
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout
from geno_pipeline.openmp import USER_KEYS
from tools import REPO_ROOT, run_tool

__all__ = ["ContentionReport", "ContentionRun", "fair_share", "main", "policy_env", "run_contention"]

COMPETITOR = """
import os, torch
torch.set_num_threads(os.cpu_count())
model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(64, 256)
print("ready", flush=True)
while True:
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""
POLICIES = {
    "default": {},  # what geno-pipeline sets when the user chose nothing (openmp.WAIT_SETTING)
    "spin": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default: spin 300,000 times, then sleep
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # sleep at once
    "spin30k": {"GOMP_SPINCOUNT": "30000"},
    "spin3k": {"GOMP_SPINCOUNT": "3000"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
}


class ContentionRun(Document):
    """One configuration's train stage, alone and beside competitors."""

    cpu_threads: int = Field(ge=1)
    """runtime.cpu_threads."""
    policy: str
    """default: geno-pipeline's (unless the user chose); spin: libgomp's own (GOMP_SPINCOUNT=300000); passive:
    OMP_WAIT_POLICY=PASSIVE; spin30k, spin3k, spin1k: GOMP_SPINCOUNT=30000, 3000, 1000."""
    competitors: int = Field(ge=0)
    """Competing torch processes, each with as many threads as the machine has cores."""
    seconds: list[float]
    """Wall seconds of the `geno-pipeline train` command, per repeat."""
    median_s: float
    """Median of `seconds`."""
    slowdown: float
    """median_s / the same configuration's median alone."""
    fair_share: float
    """(cpu_threads + competitors x cores) / cores, at least 1."""
    within_target: bool
    """slowdown <= 1.5 x fair_share."""
    model_sha256: str
    """sha256 of artifacts/train/model.safetensors after the run."""


class ContentionReport(Document):
    """reports/bench/contention.json: `python -m tools.contention`."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    cores: int = Field(ge=1)
    """CPUs this process may run on."""
    steps: int = Field(ge=1)
    """Training steps of each run (the default profile otherwise)."""
    runs: list[ContentionRun]
    """Every configuration."""
    same_bytes: bool
    """Every run of one cpu_threads wrote the same model.safetensors, whatever the policy and the load."""


def fair_share(threads: int, competitors: int, cores: int) -> float:
    """How many times the cores are asked for, at least 1."""
    return max(1.0, (min(threads, cores) + competitors * cores) / cores)


def policy_env(policy: str, base: dict[str, str]) -> dict[str, str]:
    """`base` without any OpenMP wait setting, plus the policy's."""
    env = {k: v for k, v in base.items() if k not in USER_KEYS}
    return env | POLICIES[policy]


def _cli(root: Path, env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"geno-pipeline {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def _competitors(count: int, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", COMPETITOR], env={k: v for k, v in env.items() if k not in USER_KEYS},
                         stdout=subprocess.PIPE, text=True)  # another torch job, as torch runs by default
        for _ in range(count)
    ]  # fmt: skip
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(timeout=30)


def _project(root: Path, steps: int, threads: int) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"]["steps"] = steps
    params["runtime"]["cpu_threads"] = threads
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_contention(*, steps: int, threads: Sequence[int], policies: Sequence[str], loads: Sequence[int], repeats: int) -> ContentionReport:
    """Measure every configuration; each run trains from scratch in one scratch project."""
    cores = usable_cores()
    base = dict(os.environ)
    runs: list[ContentionRun] = []
    with tempfile.TemporaryDirectory(prefix="contention-") as scratch:
        root = Path(scratch)
        shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
        (root / "genomes").mkdir()
        for t in threads:
            _project(root, steps, t)
            _cli(root, base, "data")
            _cli(root, base, "preflight")
            alone: dict[str, float] = {}
            for load in loads:
                for policy in policies:
                    rivals = _competitors(load, base)
                    try:
                        times = [_cli(root, policy_env(policy, base), "train", "--no-progress") for _ in range(repeats)]
                    finally:
                        _stop(rivals)
                    median = statistics.median(times)
                    alone.setdefault(policy, median)
                    slowdown, share = median / alone[policy], fair_share(t, load, cores)
                    runs.append(ContentionRun(
                        cpu_threads=t, policy=policy, competitors=load, seconds=[round(x, 3) for x in times], median_s=round(median, 3),
                        slowdown=round(slowdown, 3), fair_share=share, within_target=slowdown <= 1.5 * share,
                        model_sha256=sha256_file(Layout.for_root(root).train_dir / "model.safetensors"),
                    ))  # fmt: skip
                    print(f"contention: cpu_threads {t}, {policy:<7}, {load} competitor(s): {median:7.2f} s, "
                          f"slowdown {slowdown:5.2f} (fair share {share:.1f})", flush=True)  # fmt: skip
    same = all(len({r.model_sha256 for r in runs if r.cpu_threads == t}) == 1 for t in threads)
    return ContentionReport(cores=cores, steps=steps, runs=runs, same_bytes=same)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.contention`."""
    p = argparse.ArgumentParser(
        prog="python -m tools.contention",
        description="Time the default profile's train stage alone and beside 1 and 2 competing torch processes (each "
        "using every core), for cpu_threads 1 and 2, with geno-pipeline's OpenMP wait policy (default) and with "
        "libgomp's own spinning (spin); print the slowdown against the fair share and check every run wrote the same "
        "model bytes; write reports/bench/contention.json. About 15 minutes on 2 cores.",
    )
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="where reports/ is (default: this checkout)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration; the median is reported (default 1)")
    p.add_argument("--threads", type=int, action="append", default=None, help="cpu_threads to measure (default: 1 and 2)")
    p.add_argument("--policy", action="append", default=None, choices=sorted(POLICIES), help="default: both")

    def handle(args: argparse.Namespace) -> int:
        report = run_contention(
            steps=args.steps,
            threads=args.threads or [1, 2],
            policies=args.policy or ["spin", "default"],
            loads=[0, 1, 2],
            repeats=args.repeats,
        )
        layout = Layout.for_root(args.root)
        write_json(layout.bench_dir / "contention.json", report, schema="bench_contention")
        print(f"contention: same model bytes across policies and loads: {report.same_bytes}")
        print(f"contention: wrote {layout.rel(layout.bench_dir / 'contention.json')}")
        return 0 if report.same_bytes else 1

    return run_tool("contention", p, handle, argv)


if __name__ == "__main__":
    sys.exit(main())
