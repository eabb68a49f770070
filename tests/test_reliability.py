"""Reliability: declared outputs do not depend on the path taken; temporaries are swept; write faults are named; SIGKILL campaign."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.cli import main
from geno_pipeline.errors import EXIT_STORAGE, StorageError
from geno_pipeline.fsio import atomic_write_bytes, is_temporary_name, staging_dir, sweep_temporaries
from geno_pipeline.jsonio import read_json, write_json
from geno_pipeline.layout import Layout
from tests.conftest import TINY, copy_project, write_params
from tools.reliability import declared_outputs, run_campaign, temporaries

REPO = Path(__file__).resolve().parent.parent


def gp(root: Path, *args: str) -> int:
    return main([*args, "--root", str(root)])


@pytest.fixture(scope="module")
def straight(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's tiny pipeline, run straight to a release (the runs here go in process)."""
    return copy_project(tiny_released, tmp_path_factory.mktemp("straight") / "project")


def _copy_before_train(straight: Path, dest: Path) -> Path:
    shutil.copytree(straight, dest, ignore=shutil.ignore_patterns("train", "release", "runtime"))
    for report in ("train.json", "metrics.json", "release.json"):
        (dest / "reports" / report).unlink()
    shutil.rmtree(dest / "reports" / "plots")
    return dest


@pytest.mark.parametrize("stop", [1, 5, 8, 12])
def test_resumed_run_gives_every_declared_output_and_the_release_byte_identical(straight: Path, tmp_path: Path, stop: int) -> None:
    root = _copy_before_train(straight, tmp_path / "p")
    assert gp(root, "train", "--no-progress", "--stop-after-step", str(stop)) == 0
    assert gp(root, "train", "--no-progress", "--resume", "auto") == 0
    assert gp(root, "train", "--no-progress", "--resume", "auto") == 0  # a no-op resume of a finished run
    assert gp(root, "release") == 0
    assert declared_outputs(root) == declared_outputs(straight)
    assert (root / "artifacts/release/SHA256SUMS").read_bytes() == (straight / "artifacts/release/SHA256SUMS").read_bytes()
    assert read_json(root / "reports/runtime/train.json")["facts"]["resumed_from_step"] == 12  # the path is kept, outside the outputs


def test_resume_auto_without_checkpoint_says_it_starts_over(straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy_before_train(straight, tmp_path / "p")
    assert gp(root, "train", "--no-progress", "--resume", "auto") == 0
    assert "no checkpoint in" in capsys.readouterr().err
    assert declared_outputs(root).items() >= {k: v for k, v in declared_outputs(straight).items() if "release" not in k}.items()


def test_leftover_temporaries_are_removed_by_the_next_run(straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy_before_train(straight, tmp_path / "p")
    assert gp(root, "train", "--no-progress", "--stop-after-step", "5") == 0
    litter = [
        root / "artifacts/train/.model.safetensors.k1l2.tmp",
        root / "artifacts/train/checkpoints/.step-000008.tmp-ab12/model.safetensors",
        root / "artifacts/.dataset.tmp-x9",
        root / "artifacts/.release.tmp-q1/metrics.json",
        root / "artifacts/.release.old-4242/SHA256SUMS",
        root / "reports/.train.json.zz.tmp",
    ]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert gp(root, "data") == 0 and gp(root, "train", "--no-progress", "--resume", "auto") == 0 and gp(root, "release") == 0
    assert temporaries(root) == []
    assert "left by an interrupted run" in capsys.readouterr().err
    assert declared_outputs(root) == declared_outputs(straight)


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}", fullmatch=True), tag=st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True))
def test_temporary_names_are_recognised_and_plain_names_are_not(name: str, tag: str) -> None:
    assert is_temporary_name(f".{name}.{tag}.tmp") and is_temporary_name(f".{name}.tmp-{tag}") and is_temporary_name(f".{name}.old-123")
    assert not is_temporary_name(name) and not is_temporary_name(f"{name}.tmp")


def test_sweep_removes_only_the_named_outputs_temporaries(tmp_path: Path) -> None:
    (tmp_path / ".release.tmp-1").mkdir()
    (tmp_path / ".dataset.tmp-1").mkdir()
    (tmp_path / "keep.json").write_text("{}")
    assert [p.name for p in sweep_temporaries(tmp_path, recursive=False, only="release")] == [".release.tmp-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dataset.tmp-1", "keep.json"]


@pytest.mark.parametrize(("code", "fix"), [(errno.ENOSPC, "free disk space"), (errno.EROFS, "read-only"), (errno.EACCES, "writable")])
def test_a_failed_write_is_named_and_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(_fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(StorageError, match=rf"^{target}: cannot write: .*errno {code}.*fix: .*{fix}") as info:
        atomic_write_bytes(target, b"new")
    assert info.value.exit_code == EXIT_STORAGE
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_staging_dir_on_a_read_only_folder_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*_args: object, **_kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    with pytest.raises(StorageError, match="read-only"):
        staging_dir(tmp_path / "release")


def test_preflight_prints_its_table_before_a_failing_write(straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    root = tmp_path / "p"
    shutil.copytree(straight, root)

    def read_only(*_args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    assert gp(root, "preflight") == EXIT_STORAGE
    out = capsys.readouterr()
    assert "disk.not_writable" in out.out and "preflight: NOT OK" in out.out
    assert "Read-only file system" in out.err and "Traceback" not in out.err


@pytest.mark.slow
def test_fault_campaign_has_no_divergence_traceback_or_leftover(tmp_path: Path) -> None:
    report = run_campaign(TINY, seed=7, train_kills=4, other_kills=1, storage=1, signals=1, pyproject=REPO / "pyproject.toml")
    assert report.kills["train"] >= 4 and report.kills["data"] >= 1 and report.kills["release"] >= 1
    assert sum(report.sigterms.values()) >= 1 and report.concurrent == 3  # a second run in a held workspace, per stage
    assert report.kills_during_final_write >= 1
    assert report.storage_faults == {"enospc": 3, "erofs": 3}
    failures = [r for r in report.results if r.divergent or r.leftovers or r.traceback]
    assert (report.divergences, report.tracebacks, report.leftovers) == (0, 0, 0), failures
    write_json(tmp_path / "reliability.json", report, schema="reliability")  # validates against schemas/reliability.schema.json
    assert Layout.for_root(tmp_path).reliability_report == tmp_path / "reports" / "reliability.json"


def test_an_unexpected_exception_is_one_line_and_the_traceback_only_with_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(tmp_path)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("geno_pipeline.data.stage.build_dataset", broken)
    monkeypatch.delenv("GENO_PIPELINE_DEBUG", raising=False)
    assert gp(tmp_path, "data") == 1
    err = capsys.readouterr().err
    assert "internal error (a bug; please report it): RuntimeError: boom" in err and "Traceback" not in err
    assert main(["--debug", "data", "--root", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("GENO_PIPELINE_DEBUG", "1")
    assert gp(tmp_path, "data") == 1
    assert "Traceback" in capsys.readouterr().err


def test_staged_files_are_published_whole_by_one_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geno_pipeline import fsio

    final = tmp_path / "step-000004"
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    staging = staging_dir(final)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsio.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    fsio.write_staged_bytes(staging / "a.bin", b"alpha")
    fsio.write_staged_bytes(staging / "b.bin", b"")
    assert synced == []  # a staged write syncs nothing of its own ...
    with pytest.raises(StorageError, match=r"a\.bin: cannot write: .*errno 17"):
        fsio.write_staged_bytes(staging / "a.bin", b"again")  # ... and never overwrites: each file is written once
    assert (final / "old.bin").read_bytes() == b"old"  # nothing published before the rename
    fsio.replace_dir_atomically(staging, final)
    assert len(synced) == 4  # ... each staged file is synced once when published, then the staging and parent directories
    assert {p.name: p.read_bytes() for p in final.iterdir()} == {"a.bin": b"alpha", "b.bin": b""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004"]  # no staging or old directory left


_TEMPORARY_NAMES = st.sampled_from(["step-000008.tmp-ab12", "model.safetensors.k1l2.tmp", "metrics.jsonl.old-4242", "x.tmp-1"])


@settings(max_examples=40, deadline=None)
@given(
    stage=st.sampled_from(["data", "preflight", "train", "sweep", "release"]),
    folders=st.lists(st.sampled_from(["checkpoints", "step-000004", "seed-7", "plots", "a"]), max_size=4),
    name=_TEMPORARY_NAMES,
    data=st.data(),
)
def test_sweep_removes_a_stages_temporaries_at_every_depth(tmp_path_factory: pytest.TempPathFactory, stage: str,
                                                           folders: list[str], name: str, data: st.DataObject) -> None:  # fmt: skip
    """A killed run's temporary inside a folder output is removed however deep it lies (a checkpoint's staging folder
    inside artifacts/train/checkpoints/, a file's temporary inside a finished checkpoint), and so is one beside a file
    output; the stage's own files, and another stage's temporaries, stay."""
    root = tmp_path_factory.mktemp("sweep")
    layout = Layout.for_root(root)
    own = [p for p in layout.stage_writes(stage)]
    output = data.draw(st.sampled_from(own))
    folder_output = output.suffix == ""  # artifacts/dataset, artifacts/train, reports/plots, ...: the outputs without a suffix
    litter = output.joinpath(*folders, f".{name}") if folder_output else output.parent / f".{output.name}.{name.rsplit('.', 1)[-1]}.tmp"
    kept = [litter.parent / "state.json"]
    others = [s for s in ("data", "preflight", "train", "sweep", "release") if s != stage]
    foreign = [p.parent / f".{p.name}.tmp-9" for s in others for p in layout.stage_writes(s) if p.parent not in {o.parent for o in own}]
    for path in [litter, *kept, *foreign]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert layout.sweep_stage_temporaries(stage) == [litter]
    assert not litter.exists() and all(p.exists() for p in kept + foreign)
