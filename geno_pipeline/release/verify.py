"""`geno-pipeline verify DIR`: strict checks of a release bundle, every problem listed."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from geno_pipeline.checksums import check_sha256sums, parse_sha256sums
from geno_pipeline.errors import SchemaValidationError
from geno_pipeline.jsonio import validate_document

__all__ = ["REQUIRED_FILES", "safetensors_metadata", "verify_bundle"]

REQUIRED_FILES = ("MODEL_CARD.md", "metadata.json", "metrics.json", "model.safetensors", "provenance.intoto.json")
_SCHEMAS = {"metadata.json": "release_metadata", "metrics.json": "release_metrics", "provenance.intoto.json": "provenance"}


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header (no tensor is loaded).

    Raises `ValueError` for anything that is not a safetensors header with a string-to-string metadata map.
    """
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("file shorter than a safetensors header")
        size = struct.unpack("<Q", prefix)[0]
        if size > 100_000_000:
            raise ValueError("header too large")
        raw = handle.read(size)
    if len(raw) < size:
        raise ValueError("header truncated")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("__metadata__ is not a map of strings")
    return dict(metadata)


def verify_bundle(directory: Path) -> list[str]:
    """Every problem of the bundle at `directory` (empty when it verifies); never raises for a malformed file."""
    try:
        return _verify(Path(directory))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return [f"{directory}: a bundle file is malformed and could not be checked ({type(exc).__name__}: {exc})"]


def _verify(directory: Path) -> list[str]:
    if directory.is_symlink():
        return [f"{directory}: the bundle directory is a symlink"]
    if not directory.is_dir():
        return [f"{directory}: not a directory"]
    problems = check_sha256sums(directory)
    sums = directory / "SHA256SUMS"
    listed: dict[str, str] = {}
    if sums.is_file() and not sums.is_symlink():
        entries, _ = parse_sha256sums(sums.read_text(encoding="utf-8", errors="replace"))
        listed = {e.name: e.digest for e in entries}
    for name in REQUIRED_FILES:
        if name not in listed and not any(p.startswith(f"{name}:") for p in problems):
            problems.append(f"{name}: required bundle file not listed in SHA256SUMS")
    documents: dict[str, Any] = {}
    for name, schema in _SCHEMAS.items():
        path = directory / name
        if not path.is_file() or path.is_symlink():
            continue
        try:
            documents[name] = json.loads(path.read_text(encoding="utf-8"))
            validate_document(documents[name], schema, source=name)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            problems.append(f"{name}: not valid JSON ({exc})")
            documents.pop(name, None)
        except SchemaValidationError as exc:
            problems.append(str(exc))
            documents.pop(name, None)
    provenance = documents.get("provenance.intoto.json")
    if provenance is not None:
        subjects = {s["name"]: s["digest"].get("sha256") for s in provenance["subject"]}
        expected = {n: d for n, d in listed.items() if n != "provenance.intoto.json"}
        for name in sorted(set(subjects) | set(expected)):
            if name not in expected:
                problems.append(f"provenance.intoto.json: subject {name!r} is not in SHA256SUMS")
            elif name not in subjects:
                problems.append(f"provenance.intoto.json: {name!r} from SHA256SUMS is not a subject")
            elif subjects[name] != expected[name]:
                problems.append(f"provenance.intoto.json: subject {name!r} digest differs from SHA256SUMS")
    metadata = documents.get("metadata.json")
    model = directory / "model.safetensors"
    if metadata is not None and model.is_file() and not model.is_symlink():
        try:
            header = safetensors_metadata(model)
            if header.get("run_id") != metadata["run_id"]:
                problems.append(f"model.safetensors: run_id {header.get('run_id')!r} differs from metadata.json {metadata['run_id']!r}")
        except (OSError, ValueError, struct.error) as exc:
            problems.append(f"model.safetensors: unreadable header ({exc})")
    return problems
