"""`python -m tools.reliability`: fault injection with figures, written to reports/reliability.json.

In a scratch copy of the project (a small params profile), the campaign runs the pipeline once
straight as the reference, then for each case:

- **kill**: starts `data`, `train` or `release` in a child process and SIGKILLs it at a seeded moment
  (a seeded delay, or the instant a seeded temporary file appears, which lands kills inside the final
  writes), then reruns the stage (`train --resume auto` for train) and `release`, and compares every
  declared output with the reference byte for byte;
- **storage**: runs a stage in a child process whose write layer fails with `ENOSPC` (disk full) at a
  seeded write, or with `EROFS` (read-only) on every new file, and checks the exit code, the one-line
  message, that nothing was half-written, and that a clean rerun then reproduces the reference.

Every case counts tracebacks (any stderr with `Traceback`), leftovers (temporary names anywhere under
artifacts/ or reports/ after recovery) and divergences (any declared output that differs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.errors import EXIT_STORAGE, GenoPipelineError
from geno_pipeline.fsio import is_temporary_name
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout
from tools import run_tool

__all__ = ["CaseResult", "ReliabilityReport", "declared_outputs", "run_campaign", "run_reliability_cli"]

STAGES = ("data", "preflight", "train", "release")
KILLED_STAGES = ("data", "train", "release")
# the temporaries a stage creates late in its run: killing when one appears lands inside a final write
_LATE_TEMPORARIES = {
    "data": (".dataset.tmp-", ".train_windows.npy.", ".dataset_manifest.json."),
    "train": (".model.safetensors.", ".train.json.", ".metrics.json.", ".loss.csv.", ".step-"),
    "release": (".release.tmp-", ".model.safetensors.", ".provenance.intoto.json.", ".SHA256SUMS.", ".release.json."),
}

# A child process whose write layer fails: os.fsync raises ENOSPC at the N-th call, or every new temp file is EROFS.
# The count is kept in shared memory, so the train stage's forked checkpoint writer process counts with it.
_HARNESS = """
import errno, mmap, os, struct, sys, tempfile
kind, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = mmap.mmap(-1, 8)
real_fsync = os.fsync
def fsync(fd):
    count = struct.unpack("<q", calls[:8])[0] + 1
    calls[:8] = struct.pack("<q", count)
    if count >= nth:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_fsync(fd)
def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir") or (args[2] if len(args) > 2 else None))
if kind == "enospc":
    os.fsync = fsync
else:
    tempfile.mkstemp = read_only
    tempfile.mkdtemp = read_only
from geno_pipeline.cli import main
sys.exit(main(argv))
"""


class CaseResult(Document):
    """One injected fault and what recovery gave."""

    stage: str
    """Stage the fault hit."""
    fault: Literal["sigkill_timed", "sigkill_on_write", "enospc", "erofs", "sigterm", "concurrent"]
    """What was injected."""
    moment: str
    """When: seconds after start, the temporary whose appearance triggered the kill, or the failing write."""
    killed: bool
    """The fault actually interrupted the stage (a kill after the stage exited does not count)."""
    exit_code: int | None
    """Exit code of the faulted run (null for a kill)."""
    divergent: list[str]
    """Declared outputs that differ from the reference after recovery."""
    leftovers: list[str]
    """Temporary files or folders left after recovery."""
    traceback: bool
    """Some stderr of the case held a Python traceback."""


class ReliabilityReport(Document):
    """reports/reliability.json: the fault-injection figures."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    seed: int
    """Seed of the kill moments and write faults."""
    params: str
    """Params profile the campaign ran (path as given)."""
    cases: int = Field(ge=0)
    """Fault cases run."""
    kills: dict[str, int]
    """SIGKILLs that interrupted each stage."""
    kills_during_final_write: int = Field(ge=0)
    """Kills triggered by a late temporary file (inside a final write)."""
    storage_faults: dict[str, int]
    """Injected ENOSPC and EROFS cases."""
    sigterms: dict[str, int] = Field(default_factory=dict)
    """SIGTERMs that interrupted each stage (each must end with exit 143, one line, nothing half-written)."""
    concurrent: int = Field(0, ge=0)
    """Cases where a second run started in a workspace a first run held (it must stop at once with exit 2)."""
    divergences: int = Field(ge=0)
    """Cases whose recovered outputs differ from the reference."""
    tracebacks: int = Field(ge=0)
    """Cases that printed a traceback."""
    leftovers: int = Field(ge=0)
    """Cases that left a temporary file or folder."""
    results: list[CaseResult]
    """Every case."""


def declared_outputs(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every declared output (artifacts and the deterministic reports)."""
    layout = Layout.for_root(root)
    places = [layout.artifacts, layout.train_report, layout.train_metrics, layout.plots, layout.release_report]
    out: dict[str, str] = {}
    for place in places:
        files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file()) if place.is_dir() else []
        for path in files:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def temporaries(root: Path) -> list[str]:
    """Temporary names anywhere under artifacts/ and reports/."""
    found = []
    for top in (root / "artifacts", root / "reports"):
        if top.is_dir():
            found += [p.relative_to(root).as_posix() for p in top.rglob("*") if is_temporary_name(p.name)]
    return sorted(found)


@dataclass
class Campaign:
    """The scratch project, the reference outputs, and the child-process runner."""

    scratch: Path
    reference: Path
    expected: dict[str, str]
    durations: dict[str, float]
    timeout: float = 300.0

    def command(self, root: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)]

    def run(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(root, *args), capture_output=True, text=True, timeout=self.timeout, env=_child_env())

    def workspace(self, name: str, without: tuple[str, ...]) -> Path:
        """A copy of the reference project without the given top-level artifacts folders (the stage reruns them)."""
        root = self.scratch / name
        shutil.copytree(self.reference, root)
        for sub in without:
            shutil.rmtree(root / "artifacts" / sub, ignore_errors=True)
        return root


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def prepare(scratch: Path, params: Path, pyproject: Path | None) -> Campaign:
    """Write the scratch project and run the straight reference pipeline, timing each stage."""
    reference = scratch / "reference"
    reference.mkdir(parents=True)
    shutil.copy(params, reference / "params.yaml")
    if pyproject is not None and pyproject.is_file():
        shutil.copy(pyproject, reference / "pyproject.toml")
    (reference / "genomes").mkdir()
    campaign = Campaign(scratch, reference, {}, {})
    for stage in STAGES:
        args = (stage, "--no-progress") if stage == "train" else (stage,)
        t0 = time.perf_counter()
        proc = campaign.run(reference, *args)
        campaign.durations[stage] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise GenoPipelineError(f"reliability: the reference `{stage}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    campaign.expected = declared_outputs(reference)
    return campaign


def _watched(root: Path) -> list[Path]:
    """The folders where stages create their temporaries (scanned without recursion, so polling stays cheap)."""
    a = root / "artifacts"
    return [
        a,
        a / "dataset",
        a / "train",
        a / "train" / "checkpoints",
        a / "release",
        a / "preflight",
        root / "reports",
        root / "reports" / "plots",
    ]


def _appeared(places: list[Path], pattern: str) -> bool:
    for place in places:
        try:
            with os.scandir(place) as entries:
                if any(e.name.startswith(pattern) for e in entries):
                    return True
        except OSError:
            continue
    return False


def _kill_when(
    proc: subprocess.Popen[str], root: Path, *, delay: float | None, pattern: str | None, limit: float, sig: int = signal.SIGKILL
) -> bool:
    """Send `sig` (SIGKILL) to `proc` after `delay` s, or as soon as a temporary starting with `pattern` appears; True if
    it was running."""
    start = time.perf_counter()
    places = _watched(root)
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        if delay is not None and elapsed >= delay:
            break
        if pattern is not None and _appeared(places, pattern):
            break
        if elapsed > limit:
            break
        time.sleep(0.001 if pattern is not None else 0.005)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.wait()
    return True


def _recover(campaign: Campaign, root: Path, stage: str) -> list[subprocess.CompletedProcess[str]]:
    """Rerun the stage (resume it, for train); after train, also release, which reads every train output."""
    if stage != "train":
        return [campaign.run(root, stage)]
    return [campaign.run(root, "train", "--no-progress", "--resume", "auto"), campaign.run(root, "release")]


def _judge(campaign: Campaign, root: Path, stderr: list[str]) -> tuple[list[str], list[str], bool]:
    actual = declared_outputs(root)
    divergent = sorted(k for k in set(actual) | set(campaign.expected) if actual.get(k) != campaign.expected.get(k))
    return divergent, temporaries(root), any("Traceback" in text for text in stderr)


def kill_case(campaign: Campaign, index: int, stage: str, rng: random.Random, *, on_write: bool) -> CaseResult:
    """Start `stage`, SIGKILL it at a seeded moment, recover, and compare with the reference."""
    root = campaign.workspace(f"kill-{index:03d}-{stage}", without=() if stage != "train" or rng.random() < 0.5 else ("train",))
    if stage == "train":
        shutil.rmtree(root / "artifacts" / "release", ignore_errors=True)
    pattern = rng.choice(_LATE_TEMPORARIES[stage]) if on_write else None
    delay = None if on_write else rng.uniform(0.4, 1.05) * campaign.durations[stage]  # most of the start is imports
    args = (stage, "--no-progress") if stage == "train" else (stage,)
    proc = subprocess.Popen(campaign.command(root, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    killed = _kill_when(proc, root, delay=delay, pattern=pattern, limit=campaign.timeout)
    first_err = proc.stderr.read() if proc.stderr else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    runs = _recover(campaign, root, stage)
    divergent, leftovers, traced = _judge(campaign, root, [first_err, *(r.stderr for r in runs)])
    failed = [f"{r.args[3]} exit {r.returncode}: {r.stderr.strip()[-300:]}" for r in runs if r.returncode != 0]
    shutil.rmtree(root, ignore_errors=True)
    return CaseResult(
        stage=stage,
        fault="sigkill_on_write" if on_write else "sigkill_timed",
        moment=f"when {pattern}* appeared" if on_write else f"{delay:.3f}s",
        killed=killed,
        exit_code=None,
        divergent=divergent + failed,
        leftovers=leftovers,
        traceback=traced,
    )


TERMINATED_LINE = "terminated (SIGTERM); nothing was half-written"


def sigterm_case(campaign: Campaign, index: int, stage: str, rng: random.Random) -> CaseResult:
    """Start `stage`, SIGTERM it at a seeded moment: exit 143 with one line and no traceback; recover and compare."""
    root = campaign.workspace(f"term-{index:03d}-{stage}", without=("train",) if stage == "train" else ())
    if stage == "train":
        shutil.rmtree(root / "artifacts" / "release", ignore_errors=True)
    delay = rng.uniform(0.4, 0.95) * campaign.durations[stage]
    args = (stage, "--no-progress") if stage == "train" else (stage,)
    proc = subprocess.Popen(campaign.command(root, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    _kill_when(proc, root, delay=delay, pattern=None, limit=campaign.timeout, sig=signal.SIGTERM)
    _, first_err = proc.communicate()
    # landed: the CLI caught it (exit 143). Before the interpreter reaches the CLI, or after it has finished, the
    # signal's default action ends the process (-15) with nothing written; a finished run exits 0. Anything else fails.
    stopped = proc.returncode == 143
    problems = []
    if proc.returncode not in (143, 0, -signal.SIGTERM) or (
        stopped and first_err.strip().splitlines()[-1:] != [f"geno-pipeline {stage}: {TERMINATED_LINE}"]
    ):
        problems.append(f"SIGTERM {stage}: exit {proc.returncode}, expected 143 with one line: {first_err.strip()[-300:]}")
    half = temporaries(root)
    runs = _recover(campaign, root, stage)
    divergent, leftovers, traced = _judge(campaign, root, [first_err, *(r.stderr for r in runs)])
    failed = [f"{r.args[3]} exit {r.returncode}: {r.stderr.strip()[-300:]}" for r in runs if r.returncode != 0]
    shutil.rmtree(root, ignore_errors=True)
    return CaseResult(
        stage=stage, fault="sigterm", moment=f"{delay:.3f}s", killed=stopped, exit_code=proc.returncode,
        divergent=problems + divergent + failed, leftovers=sorted(set(half) | set(leftovers)), traceback=traced,
    )  # fmt: skip


def concurrent_case(campaign: Campaign, index: int, stage: str) -> CaseResult:
    """Start `stage`; as soon as it holds the workspace, start the same stage again there: the second exits 2 at once
    naming the first, the first finishes, and the outputs are the reference's."""
    from geno_pipeline.workspace import LOCK_NAME

    root = campaign.workspace(f"concurrent-{index:03d}-{stage}", without=("train",) if stage == "train" else ())
    if stage == "train":
        shutil.rmtree(root / "artifacts" / "release", ignore_errors=True)
    args = (stage, "--no-progress") if stage == "train" else (stage,)
    first = subprocess.Popen(campaign.command(root, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    deadline = time.monotonic() + campaign.timeout
    lock = root / LOCK_NAME
    while first.poll() is None and time.monotonic() < deadline and not (lock.is_file() and f"pid {first.pid}:" in lock.read_text()):
        time.sleep(0.002)
    held = first.poll() is None
    second = campaign.run(root, *args)
    _, first_err = first.communicate()
    problems = []
    if held and (second.returncode != 2 or f"pid {first.pid}: geno-pipeline {stage}" not in second.stderr):
        problems.append(f"second {stage}: exit {second.returncode}, expected 2 naming pid {first.pid}: {second.stderr.strip()[-300:]}")
    if first.returncode != 0:
        problems.append(f"first {stage}: exit {first.returncode}: {first_err.strip()[-300:]}")
    runs = [campaign.run(root, "release")] if stage == "train" else []
    divergent, leftovers, traced = _judge(campaign, root, [first_err, second.stderr, *(r.stderr for r in runs)])
    shutil.rmtree(root, ignore_errors=True)
    return CaseResult(
        stage=stage, fault="concurrent", moment="once the first held the workspace", killed=held, exit_code=second.returncode,
        divergent=problems + divergent, leftovers=leftovers, traceback=traced,
    )  # fmt: skip


def storage_case(campaign: Campaign, index: int, stage: str, fault: Literal["enospc", "erofs"], nth: int) -> CaseResult:
    """Run `stage` with a failing write layer: exit 8, one message, nothing half-written; then a clean recovery."""
    root = campaign.workspace(f"{fault}-{index:03d}-{stage}", without=())
    before = declared_outputs(root)
    args = [stage, "--root", str(root)] + (["--no-progress"] if stage == "train" else [])
    proc = subprocess.run(
        [sys.executable, "-c", _HARNESS, fault, str(nth), *args], capture_output=True, text=True, timeout=campaign.timeout, env=_child_env()
    )
    problems = []
    if proc.returncode != EXIT_STORAGE or "errno" not in proc.stderr:
        problems.append(
            f"faulted {stage}: exit {proc.returncode}, expected {EXIT_STORAGE} with a named error: {proc.stderr.strip()[-300:]}"
        )
    half = temporaries(root)
    if stage in ("data", "release") and declared_outputs(root) != before:
        problems.append(f"faulted {stage}: earlier outputs changed")
    runs = _recover(campaign, root, stage)
    divergent, leftovers, traced = _judge(campaign, root, [proc.stderr, *(r.stderr for r in runs)])
    failed = [f"{r.args[3]} exit {r.returncode}: {r.stderr.strip()[-300:]}" for r in runs if r.returncode != 0]
    shutil.rmtree(root, ignore_errors=True)
    return CaseResult(
        stage=stage,
        fault=fault,
        moment=f"fsync call {nth}" if fault == "enospc" else "every new file",
        killed=True,
        exit_code=proc.returncode,
        divergent=problems + divergent + failed,
        leftovers=sorted(set(half) | set(leftovers)),
        traceback=traced,
    )


def run_campaign(
    params: Path,
    *,
    seed: int = 0,
    train_kills: int = 30,
    other_kills: int = 8,
    storage: int = 2,
    signals: int = 2,
    pyproject: Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> ReliabilityReport:
    """Run the whole campaign in a scratch directory; returns its figures."""
    rng = random.Random(seed)
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="geno-reliability-") as scratch:
        campaign = prepare(Path(scratch), params, pyproject)
        progress("reference: " + ", ".join(f"{s} {d:.1f}s" for s, d in campaign.durations.items()))
        index = 0
        for stage, target in (("train", train_kills), ("data", other_kills), ("release", other_kills)):
            landed = attempts = 0
            while landed < target and attempts < 3 * target:  # a kill that comes after the stage exited does not count
                result = kill_case(campaign, index, stage, rng, on_write=attempts % 3 == 0)
                results.append(result)
                landed, attempts, index = landed + result.killed, attempts + 1, index + 1
                counts = f"divergent={len(result.divergent)} leftovers={len(result.leftovers)}"
                progress(f"kill {stage} {landed}/{target} ({result.moment}): killed={result.killed} {counts}")
        for stage in ("data", "train", "release"):
            landed = attempts = 0
            while landed < signals and attempts < 4 * signals:  # a SIGTERM outside the CLI's lifetime does not count
                results.append(sigterm_case(campaign, index, stage, rng))
                r = results[-1]
                landed, attempts, index = landed + r.killed, attempts + 1, index + 1
                progress(f"sigterm {stage} {landed}/{signals} ({r.moment}): exit {r.exit_code} divergent={len(r.divergent)}")
        for index, stage in enumerate(("data", "train", "release")):
            results.append(concurrent_case(campaign, index, stage))
            r = results[-1]
            progress(f"concurrent {stage}: second run exit {r.exit_code} divergent={len(r.divergent)}")
        for index in range(storage):
            for stage in ("data", "train", "release"):
                for fault in ("enospc", "erofs"):
                    nth = rng.randint(1, 6)
                    results.append(storage_case(campaign, index, stage, fault, nth))  # type: ignore[arg-type]
                    r = results[-1]
                    progress(f"{fault} {stage} ({r.moment}): exit {r.exit_code} divergent={len(r.divergent)} leftovers={len(r.leftovers)}")
    kills = {s: sum(1 for r in results if r.stage == s and r.fault.startswith("sigkill") and r.killed) for s in KILLED_STAGES}
    return ReliabilityReport(
        seed=seed,
        params=str(params),
        cases=len(results),
        kills=kills,
        kills_during_final_write=sum(1 for r in results if r.fault == "sigkill_on_write" and r.killed),
        storage_faults={f: sum(1 for r in results if r.fault == f) for f in ("enospc", "erofs")},
        sigterms={s: sum(1 for r in results if r.stage == s and r.fault == "sigterm" and r.killed) for s in KILLED_STAGES},
        concurrent=sum(1 for r in results if r.fault == "concurrent" and r.killed),
        divergences=sum(1 for r in results if r.divergent),
        tracebacks=sum(1 for r in results if r.traceback),
        leftovers=sum(1 for r in results if r.leftovers),
        results=results,
    )


def run_reliability_cli(layout: Layout, *, params: Path | None, seed: int, train_kills: int, other_kills: int, storage: int) -> int:
    """Run the campaign, print progress and the figures, write reports/reliability.json; exit 7 on any failure."""
    profile = params if params is not None else layout.root / "tests" / "params_tiny.yaml"
    if not profile.is_file():
        raise GenoPipelineError(f"{profile}: params profile not found; fix: pass --params PATH (a small profile: each case reruns stages)")
    report = run_campaign(
        profile, seed=seed, train_kills=train_kills, other_kills=other_kills, storage=storage, pyproject=layout.root / "pyproject.toml",
        progress=lambda line: print(f"reliability: {line}", flush=True),
    )  # fmt: skip
    write_json(layout.reliability_report, report, schema="reliability")
    print(
        f"reliability: {report.cases} cases, kills {report.kills} ({report.kills_during_final_write} during a final write), "
        f"storage faults {report.storage_faults}, SIGTERMs {report.sigterms}, concurrent runs refused {report.concurrent}: "
        f"{report.divergences} divergences, {report.tracebacks} tracebacks, "
        f"{report.leftovers} leftovers; wrote {layout.reliability_report}"
    )
    bad = report.divergences + report.tracebacks + report.leftovers
    for r in report.results:
        if r.divergent or r.leftovers or r.traceback:
            print(f"reliability: FAILED {r.stage} {r.fault} {r.moment}: {r.divergent[:3]} {r.leftovers[:3]} traceback={r.traceback}")
    return 7 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.reliability`."""
    p = argparse.ArgumentParser(
        prog="python -m tools.reliability",
        description="In a scratch copy of the project with a small params profile: run the pipeline straight as the reference, "
        "then SIGKILL data, train and release at seeded moments (some inside final writes) and inject ENOSPC and EROFS "
        "at the write layer; after each fault rerun or resume and compare every declared output with the reference. "
        "Counts divergences, tracebacks and leftovers; exit 7 when any is non-zero. Takes minutes.",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--params", type=Path, default=None, help="params profile (default: ROOT/tests/params_tiny.yaml)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments and failing writes (default 0)")
    p.add_argument("--train-kills", type=int, default=30, help="SIGKILLs of train (default 30; every third inside a write)")
    p.add_argument("--other-kills", type=int, default=8, help="SIGKILLs each of data and release (default 8)")
    p.add_argument("--storage-rounds", type=int, default=2, help="rounds of ENOSPC + EROFS on data, train, release (default 2)")

    def handle(args: argparse.Namespace) -> int:
        return run_reliability_cli(
            Layout.for_root(args.root),
            params=args.params,
            seed=args.seed,
            train_kills=args.train_kills,
            other_kills=args.other_kills,
            storage=args.storage_rounds,
        )

    return run_tool("reliability", p, handle, argv)


if __name__ == "__main__":
    sys.exit(main())
