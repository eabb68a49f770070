"""Canonical JSON writer, atomic writes, schema validation on write, checksums format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.checksums import SumsEntry, check_sha256sums, format_sha256sums, parse_sha256sums, write_sha256sums
from geno_pipeline.errors import SchemaValidationError, StorageError
from geno_pipeline.jsonio import atomic_write_text, canonical_json, read_json, write_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**128), 2**128) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(value=json_values)
def test_jsonio_canonical_round_trip(value) -> None:
    text = canonical_json(value)
    assert text.endswith("\n")
    assert json.loads(text) == value
    assert canonical_json(json.loads(text)) == text  # a fixed point: re-writing changes nothing


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(st.text(max_size=8), st.integers(), max_size=8))
def test_jsonio_sorted_keys_and_indent(value, tmp_path_factory: pytest.TempPathFactory) -> None:
    text = canonical_json(value)
    assert list(json.loads(text)) == sorted(value) or value == {}
    if value:
        assert text.splitlines()[1].startswith("  ")


def test_jsonio_rejects_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_jsonio_validates_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "environment.json"
    with pytest.raises(SchemaValidationError, match=r"does not match schema 'environment'"):
        write_json(path, {"schema_version": "1.0"}, schema="environment")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    atomic_write_text(path, "old\n")
    with pytest.raises(SchemaValidationError):
        write_json(path, {"bogus": 1}, schema="environment")
    assert path.read_text() == "old\n"


def test_jsonio_read_json_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SchemaValidationError, match=r"x\.json: not valid JSON"):
        read_json(tmp_path / "x.json")


names = st.text(alphabet="abcdefghij_-.0123456789", min_size=1, max_size=12).filter(lambda s: s not in (".", "..") and s != "SHA256SUMS")


@settings(max_examples=100, deadline=None)
@given(files=st.dictionaries(names, st.binary(max_size=64), min_size=1, max_size=5))
def test_checksums_round_trip(files, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("sums")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    entries = write_sha256sums(directory, sorted(files))
    parsed, problems = parse_sha256sums((directory / "SHA256SUMS").read_text())
    assert problems == [] and sorted(parsed, key=lambda e: e.name) == sorted(entries, key=lambda e: e.name)
    assert check_sha256sums(directory) == []


def test_checksums_refuse_unsafe_names() -> None:
    with pytest.raises(Exception, match="unsafe file name"):
        format_sha256sums([SumsEntry("0" * 64, "../x")])
    _, problems = parse_sha256sums(f"{'0' * 64}  /etc/passwd\n{'0' * 64}  a/../b\nnot a line\n")
    assert len(problems) == 3


def test_schema_guess_from_file_names() -> None:
    from geno_pipeline.schemas import schema_name_for_file

    guesses = {
        "reports/train.json": "train_report",
        "reports/sweep.json": "sweep",
        "reports/runtime/train.json": "runtime_report",
        "reports/runtime/sweep.json": "runtime_report",
        "reports/runtime/release.json": "runtime_report",
        "reports/runtime/repro_check.json": "repro_check",
        "artifacts/release/metadata.json": "release_metadata",
    }
    for path, schema in guesses.items():
        assert schema_name_for_file(Path(path), {}) == schema, path


def test_validate_knows_every_committed_report() -> None:
    """`geno-pipeline validate FILE` needs no --schema for any JSON document the project commits under reports/."""
    from geno_pipeline.validate import validate_file

    root = Path(__file__).resolve().parent.parent
    found = sorted(p for p in (root / "reports").rglob("*.json"))
    assert len(found) >= 8
    for path in found:
        assert validate_file(path) >= 1, path


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    import os

    from geno_pipeline import fsio

    target = tmp_path / "report.json"
    target.write_bytes(b"old content\n")

    def boom(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "replace":
        monkeypatch.setattr(fsio.os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(fsio.os, "fsync", boom)
    else:
        real_fdopen = os.fdopen

        class Failing:
            def __init__(self, handle: object) -> None:
                self.handle = handle

            def __enter__(self) -> Failing:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()  # type: ignore[attr-defined]

            def write(self, _data: bytes) -> None:
                boom()

        monkeypatch.setattr(fsio.os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    with pytest.raises(StorageError, match=r"report\.json: cannot write: No space left on device \(errno 28\); nothing was half-written"):
        fsio.atomic_write_bytes(target, b"new content that must never be seen half-written\n")
    assert target.read_bytes() == b"old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind
