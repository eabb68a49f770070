"""The planted integration bugs (tests/planted/, `python -m tools.planted`): every patch is well formed and applies to
this checkout, and (slow) each one makes a test fail while the tests pass without it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from geno_pipeline.errors import GenoPipelineError
from tests.conftest import REPO
from tools.planted import PLANTED_DIR, _run_each, failed_tests, read_planted, run_planted, summary_lines

PATCHES = sorted((REPO / PLANTED_DIR).glob("*.patch"))


def test_the_six_classes_each_have_a_planted_bug() -> None:
    names = {p.stem for p in PATCHES}
    assert {"streams_shared", "clip_before_sum", "gather_own_rows_first", "loader_not_strict", "sweep_top_only",
            "device_explicit_cuda"} <= names  # fmt: skip


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.stem)
def test_a_planted_bug_names_why_and_its_tests_and_applies_here(patch: Path) -> None:
    planted = read_planted(patch)
    assert planted.why and planted.tests
    for test in planted.tests:
        file, _, name = test.partition("::")
        assert (REPO / file).is_file(), test
        assert not name or f"def {name}(" in (REPO / file).read_text(), test
    proc = subprocess.run(["git", "apply", "--check", str(patch)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tests: tests/test_x.py\n\ndiff --git a/x b/x\n", "lacks why"),
        ("why: a bug\n\ndiff --git a/x b/x\n", "lacks tests"),
        ("why: a bug\ntests: test_x.py\n\ndiff --git a/x b/x\n", "'test_x.py' is not a test file or node id under tests/"),
        ("why: a bug\ntests: tests/test_x.py\n", "no `diff --git` section"),
    ],
)
def test_a_malformed_planted_bug_is_refused_naming_what_is_missing(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.patch").write_text(text)
    with pytest.raises(GenoPipelineError, match=message.replace("(", r"\(")):
        read_planted(tmp_path / "bad.patch")


def test_failed_tests_reads_pytests_short_summary() -> None:
    output = "..F\nFAILED tests/test_a.py::test_b[1] - assert 1 == 2\nERROR tests/test_c.py::test_d - boom\n1 failed\n"
    assert failed_tests(output) == ["tests/test_a.py::test_b[1]", "tests/test_c.py::test_d"]


@pytest.mark.slow
def test_every_planted_bug_is_caught_by_a_test() -> None:
    verdicts = run_planted(REPO, [read_planted(p) for p in PATCHES], timeout_s=600, progress=False)
    print("\n".join(summary_lines(verdicts)))
    assert [(v.planted.name, v.caught, v.detail) for v in verdicts if not v.caught] == []
    for v in verdicts:  # the test that failed is one the patch names
        assert any(f == t or f.startswith(t + "::") or f.startswith(t + "[") for f in v.failing for t in v.planted.tests), v.failing


def _synthetic_checkout(root: Path) -> list[Path]:
    """A git checkout with a package, one test of it, and three planted bugs: one its test catches, one it misses, and
    one that makes the test hang."""
    (root / "geno_pipeline").mkdir(parents=True)
    (root / "geno_pipeline" / "__init__.py").write_text("VALUE = 1\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_value.py").write_text("import geno_pipeline\n\n\ndef test_value():\n    assert geno_pipeline.VALUE == 1\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    patches = []
    for name, line in (("caught", "VALUE = 2"), ("escaped", "VALUE = 1  # unchanged"), ("hangs", "import time; time.sleep(60); VALUE = 1")):
        patch = root.parent / f"{name}.patch"
        patch.write_text(
            f"why: {name}\ntests: tests/test_value.py\n\n"
            "diff --git a/geno_pipeline/__init__.py b/geno_pipeline/__init__.py\n"
            "--- a/geno_pipeline/__init__.py\n+++ b/geno_pipeline/__init__.py\n"
            f"@@ -1 +1 @@\n-VALUE = 1\n+{line}\n"
        )
        patches.append(patch)
    return patches


@pytest.mark.slow  # waits out a timeout
def test_the_runner_tells_a_caught_bug_from_an_escaped_one_and_stops_a_hung_run(tmp_path: Path) -> None:
    """Every run imports the package afresh from the scratch copy, patched or reverted: a bug is caught only by a
    failing test, a bug the test misses escapes, and a run past the timeout is stopped and said so."""
    root = tmp_path / "checkout"
    caught, escaped, hangs = _synthetic_checkout(root)
    verdicts = run_planted(root, [read_planted(p) for p in (caught, escaped, caught, hangs)], timeout_s=4, progress=False)
    assert [(v.planted.name, v.caught, v.failing) for v in verdicts] == [
        ("caught", True, ["tests/test_value.py::test_value"]),
        ("escaped", False, []),
        ("caught", True, ["tests/test_value.py::test_value"]),  # the first patch was reverted, and applied again
        ("hangs", False, []),
    ]
    assert verdicts[1].detail == "every named test passed" and verdicts[3].detail.endswith("the tests ran past 4 s")
    assert (root / "geno_pipeline" / "__init__.py").read_text() == "VALUE = 1\n"  # the checkout itself is never patched


class _FailingRuns:
    """A runner whose every pytest run fails one test, as pytest reports it."""

    def pytest(self, args: list[str], timeout_s: float) -> tuple[int, str]:
        return 1, "F\nFAILED tests/test_value.py::test_value - assert 3 == 1\n1 failed\n"


def test_the_runner_refuses_tests_that_fail_without_a_bug(tmp_path: Path) -> None:
    patches = _synthetic_checkout(tmp_path / "checkout")
    with pytest.raises(GenoPipelineError, match=r"fail without any bug planted \(tests/test_value.py::test_value\)"):
        _run_each(tmp_path / "checkout", _FailingRuns(), [read_planted(patches[0])], timeout_s=60, progress=False)  # type: ignore[arg-type]
