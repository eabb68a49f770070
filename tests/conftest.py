"""Shared fixtures: a tiny params profile and a built tiny dataset."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# no per-example wall-clock deadline: timings on shared 2-core machines are noise, not a property of the code
settings.register_profile("project", deadline=None)
settings.load_profile("project")

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).resolve().parent / "params_tiny.yaml"


def write_params(root: Path, **overrides: dict) -> Path:
    """Copy the tiny profile into `root/params.yaml`, merging section overrides."""
    params = yaml.safe_load(TINY.read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): one test process per core this process may use, at most 8, since one test may
    itself start a launcher and four gloo workers. `-n 0` runs everything in this process."""
    from geno_pipeline.hostmem import usable_cores

    return max(1, min(usable_cores(), 8))


# The test files that take longest, longest first (each about 25-150 s on 2 cores). With `--dist loadfile` a test
# process takes the next whole file when it is free; starting with these lets the processes finish together instead
# of one waiting while the other runs a long file picked up last. Every other file keeps its place after them.
LONGEST_FILES = (
    "test_distributed_jobs.py",
    "test_pipeline.py",
    "test_reliability.py",
    "test_train.py",
    "test_bad_inputs.py",
    "test_distributed.py",
    "test_planted.py",
    "test_gpu_proof.py",
    "test_signing.py",
    "test_release.py",
    "test_sweep.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest files first (`LONGEST_FILES`); the order within a file, and of the other files, is kept."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


@pytest.fixture(autouse=True)
def quiet_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process preflight reports see an idle machine (load average 0), whatever else runs beside the tests; the cpu
    check's own tests pass the load they need (`cpu_load=`). A preflight command run as a process reads the real load."""
    from geno_pipeline.preflight.checks import cpu

    monkeypatch.setattr(cpu, "load_average", lambda: 0.0)


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    """A project root with the tiny params and pyproject.toml (for declared minimums)."""
    write_params(tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.fixture()
def tiny_dataset(tiny_root: Path) -> Path:
    """tiny_root with artifacts/dataset built."""
    from geno_pipeline.config import load_params
    from geno_pipeline.data.dataset import build_dataset

    build_dataset(load_params(tiny_root / "params.yaml").data, root=tiny_root, out_dir=tiny_root / "artifacts" / "dataset")
    return tiny_root


@pytest.fixture(scope="session")
def tiny_released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline run once per test session to a release, in this process (the command line's `main`; a run
    by processes of their own is compared with it in test_train.py). Read it, or copy it (`copy_project`) before
    changing anything."""
    from geno_pipeline.cli import main

    root = tmp_path_factory.mktemp("tiny-released")
    write_params(root)
    (root / "genomes").mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for args in (["data"], ["preflight"], ["train", "--no-progress"], ["release"]):
        assert main([*args, "--root", str(root)]) == 0, args
    return root


def run_main(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command line's `main` run in this process, reported as `subprocess.run` would (exit code, stdout, stderr):
    for tests whose subject is what a command does, not the process boundary, without a process's start-up."""
    from geno_pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def job_env() -> dict[str, str]:
    """This environment for a process of a gloo job on loopback: no launcher variables of its own, a free MASTER_PORT,
    one thread per worker."""
    from geno_pipeline.distributed import JOB_VARIABLES
    from geno_pipeline.distributed.smoke import free_port

    env = {k: v for k, v in os.environ.items() if k not in JOB_VARIABLES}
    return env | {"MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}


def copy_project(source: Path, dest: Path, *, without_release: bool = False) -> Path:
    """A copy of a project folder (the release and its report left out with `without_release`)."""
    ignore = shutil.ignore_patterns("release", "release.json") if without_release else None
    shutil.copytree(source, dest, ignore=ignore, symlinks=True)
    return dest
