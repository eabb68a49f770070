"""Planted integration bugs (`python -m tools.planted`): each patch under tests/planted/ is a realistic bug in code where
data, training, release and distribution meet (the stages, which mutation testing cannot reach in reasonable time).

Each patch opens with two header lines, then the diff:

    why: <one line: the bug and what it breaks>
    tests: <test files or node ids that must catch it, space-separated>

The command copies the checkout (tracked and untracked, not ignored, files) to a scratch folder, runs the named tests
there unpatched (they must pass), then applies each patch in turn, runs its tests (the fast tier: `-m "not slow"`)
and reverts it. A bug is caught when a test fails; an error before any test ran (the patch does not apply, a test
file does not import) is not a catch. Exit 1 unless every planted bug is caught.

Each test run is `pytest.main` in a fork of one helper process that has imported torch, numpy, pytest and hypothesis
but nothing of the project: every run imports the project (and its tests) afresh from the scratch copy, patched or
not, without paying for those libraries' imports again.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geno_pipeline.errors import GenoPipelineError
from geno_pipeline.readers import read_text
from tools import REPO_ROOT, run_tool

__all__ = ["PLANTED_DIR", "Planted", "Verdict", "failed_tests", "main", "read_planted", "run_planted"]

PLANTED_DIR = "tests/planted"
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Planted:
    """One planted bug: its file name, why it is a bug, the tests that must catch it, and the patch."""

    name: str
    why: str
    tests: tuple[str, ...]
    patch: Path


@dataclass
class Verdict:
    """What the named tests did with one planted bug."""

    planted: Planted
    caught: bool
    failing: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


def read_planted(path: Path) -> Planted:
    """Parse a patch's `why:` and `tests:` header; raises `GenoPipelineError` naming what is missing."""
    fix = "start the patch with a `why: ...` line and a `tests: FILE_OR_NODE ...` line, then the diff"
    text = read_text(path, error=GenoPipelineError, what="planted bug", fix=fix)
    header = text.split("\ndiff --git ", 1)[0] if "\ndiff --git " in text else ""
    if not header:
        raise GenoPipelineError(f"{path}: no `diff --git` section; fix: {fix}")
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    why, tests = fields.get("why", "").strip(), tuple(fields.get("tests", "").split())
    if not why or not tests:
        raise GenoPipelineError(f"{path}: the header lacks {'why' if not why else 'tests'}; fix: {fix}")
    bad = [t for t in tests if not t.startswith("tests/") or not t.split("::", 1)[0].endswith(".py")]
    if bad:
        raise GenoPipelineError(f"{path}: tests: {bad[0]!r} is not a test file or node id under tests/; fix: {fix}")
    return Planted(path.stem, why, tests, path)


def failed_tests(output: str) -> list[str]:
    """Node ids of the failed or erroring tests in pytest's `-rfE` summary."""
    return _FAILED.findall(output)


def _copy_checkout(root: Path, dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, check=False
    )
    if listed.returncode != 0:
        raise GenoPipelineError(f"{root}: not a git checkout ({listed.stderr.decode(errors='replace').strip()}); fix: run from a clone")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source, target = root / name, dest / name
        if not source.exists() and not source.is_symlink():  # deleted in the working tree, not yet committed
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)


def _env(copy: Path) -> dict[str, str]:
    """The scratch copy first on the path (an editable install of the checkout would otherwise be imported), one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(copy), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


# The helper: for each request line ({"args": pytest's arguments, "output": a file}) it forks; the child runs
# pytest.main with its output in the file, and the helper prints the child's pid, then its exit code.
_FORKER = """
import json, os, sys
import numpy, torch, pytest, hypothesis  # the libraries every run needs, imported once before any fork
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            code = int(pytest.main(request["args"]))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class _Forker:
    """The helper process in the scratch copy, and a thread that reads its answers."""

    def __init__(self, copy: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORKER], cwd=copy, env=_env(copy), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.answers: queue.Queue[dict[str, int] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)

    def _answer(self, timeout_s: float) -> dict[str, int]:
        """The helper's next answer; `queue.Empty` when none comes within `timeout_s`."""
        answer = self.answers.get(timeout=timeout_s)
        if answer is None:
            raise GenoPipelineError(f"the test runner process exited ({self.proc.wait()}) before it answered")
        return answer

    def _prompt_answer(self) -> dict[str, int]:
        """An answer the helper gives at once (a started run's pid, a killed run's end): one error if it does not."""
        try:
            return self._answer(60)
        except queue.Empty:
            raise GenoPipelineError("the test runner process gave no answer within 60 s") from None

    def pytest(self, args: Sequence[str], timeout_s: float) -> tuple[int, str]:
        """pytest's exit code and output, or -1 when the run took longer than `timeout_s` (the run is then killed)."""
        assert self.proc.stdin is not None
        with tempfile.NamedTemporaryFile(prefix="planted-run-", suffix=".txt") as output:
            self.proc.stdin.write(json.dumps({"args": list(args), "output": output.name}) + "\n")
            self.proc.stdin.flush()
            pid = self._prompt_answer()["pid"]
            try:
                code = self._answer(timeout_s)["exit"]
            except queue.Empty:
                os.kill(pid, signal.SIGKILL)
                self._prompt_answer()
                return -1, f"the tests ran past {timeout_s:.0f} s"
            return code, Path(output.name).read_text(errors="replace")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _pytest(forker: _Forker, tests: Sequence[str], timeout_s: float) -> tuple[int, str]:
    return forker.pytest(["-q", "-x", "-n", "0", "-m", "not slow", "-p", "no:cacheprovider", "-rfE", *tests], timeout_s)


def _apply(copy: Path, patch: Path, *, reverse: bool = False) -> str | None:
    proc = subprocess.run(["git", "apply", *(["-R"] if reverse else []), str(patch)], cwd=copy, capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"git apply exited {proc.returncode}")


def _check_import_path(copy: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import geno_pipeline; print(geno_pipeline.__file__)"],
        cwd=copy, env=_env(copy), capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    if found is None or copy.resolve() not in found.parents:
        raise GenoPipelineError(f"the scratch copy imports geno_pipeline from {found or probe.stderr.strip()}, not from {copy}")


def run_planted(root: Path, planted: Sequence[Planted], *, timeout_s: float, progress: bool = True) -> list[Verdict]:
    """Apply each planted bug in turn to a scratch copy of `root` and run its tests; the verdict for each."""
    with tempfile.TemporaryDirectory(prefix="planted-") as scratch:
        copy = Path(scratch) / "checkout"
        _copy_checkout(root, copy)
        _check_import_path(copy)
        forker = _Forker(copy)
        try:
            return _run_each(copy, forker, planted, timeout_s=timeout_s, progress=progress)
        finally:
            forker.close()


def _run_each(copy: Path, forker: _Forker, planted: Sequence[Planted], *, timeout_s: float, progress: bool) -> list[Verdict]:
    every = sorted({t for p in planted for t in p.tests})
    code, output = _pytest(forker, every, timeout_s)
    if code != 0:
        failing = ", ".join(failed_tests(output)) or output.strip().splitlines()[-1:]
        raise GenoPipelineError(f"the planted bugs' tests fail without any bug planted ({failing}); fix: make them pass first")
    verdicts: list[Verdict] = []
    for item in planted:
        start = time.perf_counter()
        problem = _apply(copy, item.patch)
        if problem is not None:
            verdicts.append(Verdict(item, False, detail=f"the patch does not apply: {problem}"))
            continue
        code, output = _pytest(forker, item.tests, timeout_s)
        failing = failed_tests(output)
        caught = code == 1 and bool(failing)
        detail = "" if caught else ("every named test passed" if code == 0 else f"pytest exited {code}: {output.strip()[-300:]}")
        verdicts.append(Verdict(item, caught, failing, detail, time.perf_counter() - start))
        reverted = _apply(copy, item.patch, reverse=True)
        if reverted is not None:
            raise GenoPipelineError(f"{item.patch}: could not be reverted in the scratch copy ({reverted})")
        if progress:
            print(f"planted: {item.name}: {'caught' if caught else 'ESCAPED'} ({verdicts[-1].seconds:.0f} s)", flush=True)
    return verdicts


def summary_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """The table: each planted bug, whether a test caught it and which."""
    lines = []
    for v in verdicts:
        by = ", ".join(v.failing) if v.caught else v.detail
        lines.append(f"{'caught ' if v.caught else 'ESCAPED'} {v.planted.name}: {v.planted.why}\n         by {by}")
    caught = sum(v.caught for v in verdicts)
    lines.append(f"{len(verdicts)} planted, {caught} caught, {len(verdicts) - caught} escaped")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.planted`."""
    p = argparse.ArgumentParser(
        prog="python -m tools.planted",
        description="Apply each planted integration bug under tests/planted/ to a scratch copy of this checkout, one at "
        "a time, and run the fast-tier tests its header names: every bug must make a test fail (the tests must pass "
        "without it). Prints which test caught each; exit 1 unless every one was caught. About a minute per bug on 2 cores.",
    )
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="the checkout (default: this one)")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this planted bug (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one test run may take (default 600)")

    def handle(args: argparse.Namespace) -> int:
        root = args.root.resolve()
        patches = sorted((root / PLANTED_DIR).glob("*.patch"))
        if args.only:
            unknown = sorted(set(args.only) - {p.stem for p in patches})
            if unknown:
                raise GenoPipelineError(f"--only {unknown[0]}: no such planted bug; fix: use one of {', '.join(p.stem for p in patches)}")
            patches = [p for p in patches if p.stem in args.only]
        if not patches:
            raise GenoPipelineError(f"{root / PLANTED_DIR}: no *.patch files")
        verdicts = run_planted(root, [read_planted(p) for p in patches], timeout_s=args.timeout)
        for line in summary_lines(verdicts):
            print(f"planted: {line}")
        return 0 if all(v.caught for v in verdicts) else 1

    return run_tool("planted", p, handle, argv)


if __name__ == "__main__":
    sys.exit(main())
