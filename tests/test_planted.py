"""The planted integration bugs (tests/planted/, `python -m tools.planted`): every patch is well formed and applies to
this checkout, and (slow) each one makes a test fail while the tests pass without it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from geno_pipeline.errors import GenoPipelineError
from tests.conftest import REPO
from tools.planted import PLANTED_DIR, failed_tests, read_planted, run_planted, summary_lines

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
