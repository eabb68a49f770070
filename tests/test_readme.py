"""The README as users meet it: short, every link resolving, no lab notes, and every command block runnable as written
(after the two opening commands, which CI runs itself) on a copy of the project with the tiny params profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)\n```$", README.read_text(), flags=re.M | re.S)


def test_readme_is_short_and_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: link {target}"
    linked = set(re.findall(r"\]\(docs/([^)]+\.md)\)", text))
    assert linked == {p.name for p in DOCS}, "every docs page is linked from the README, and only those"


def test_readme_and_docs_speak_of_the_project_not_its_history() -> None:
    for page in [README, *DOCS]:
        words = page.read_text().lower()
        for marker in ("session", "until 2026", "seen on 2026", "before this work"):
            assert marker not in words, f"{page.name}: {marker!r}"


def _project_copy(tmp: Path) -> Path:
    """The working tree (tracked and new files, no build outputs) as a fresh git repository with the tiny profile."""
    root = tmp / "project"
    skip = {".git", ".venv", "mutants", "artifacts", "build", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__"}
    shutil.copytree(REPO, root, ignore=lambda _d, names: [n for n in names if n in skip or n.endswith(".egg-info")])
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)
    shutil.copy(TINY, root / "params.yaml")
    for args in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@t"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


@pytest.mark.slow  # runs the pipeline, an experiment and every README block: the full suite runs it
def test_every_readme_command_block_runs_as_written(tmp_path: Path) -> None:
    root = _project_copy(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(command: list[str], what: str) -> str:
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{what}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run(["dvc", "repro"], "dvc repro")  # the first block's last command; the install is this environment
    bash = blocks("bash")
    outputs = [run(["bash", "-euo", "pipefail", "-c", block], f"bash block {i + 3}") for i, block in enumerate(bash[2:])]
    (python,) = blocks("python")
    printed = run([sys.executable, "-c", python], "python block")
    assert "verify: artifacts/release: OK" in "".join(outputs)
    stale = json.loads(run(["dvc", "status", "--json"], "dvc status"))  # after stop, resume, sign and an experiment
    assert set(stale) <= {"preflight"}, stale
    assert printed.startswith("torch.Size([1, 16]) torch.Size([1, 16]) tensor(")
