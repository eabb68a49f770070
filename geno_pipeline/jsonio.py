"""The one writer of JSON: canonical text, schema validation before an atomic rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from geno_pipeline.errors import GenoPipelineError, SchemaValidationError

__all__ = [
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_text",
    "canonical_json",
    "fsync_dir",
    "jsonl_line",
    "read_json",
    "replace_dir_atomically",
    "staging_dir",
    "to_jsonable",
    "validate_document",
    "write_json",
]


def to_jsonable(obj: Any) -> Any:
    """Turn pydantic models (recursively) into plain JSON values."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite float {obj!r} cannot be written as JSON")
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, 2-space indent, ASCII, no NaN, trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n"


def jsonl_line(obj: Any) -> str:
    """One compact canonical JSON line (sorted keys) with a trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 variant of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def validate_document(document: Any, schema: str, *, source: str = "<document>") -> None:
    """Raise `SchemaValidationError` listing every violation of the named schema."""
    from geno_pipeline.schemas import validator_for

    errors = sorted(validator_for(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:20]:
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            lines.append(f"  - {where}: {err.message}")
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise SchemaValidationError(f"{source} does not match schema '{schema}':\n" + "\n".join(lines) + more)


def write_json(path: Path, obj: Any, *, schema: str) -> None:
    """Validate `obj` against `schema`, then write it canonically and atomically."""
    document = to_jsonable(obj)
    validate_document(document, schema, source=str(path))
    atomic_write_text(Path(path), canonical_json(document))


def read_json(path: Path, *, schema: str | None = None) -> Any:
    """Read a JSON file; with `schema`, also validate it. Errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise GenoPipelineError(f"{path}: file not found") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaValidationError(f"{path}: not valid JSON ({exc})") from exc
    if schema is not None:
        validate_document(document, schema, source=str(path))
    return document


def append_jsonl(path: Path, records: Iterable[Any], *, schema: str) -> None:
    """Validate each record and append it as one canonical line, then fsync."""
    lines = []
    for record in records:
        document = to_jsonable(record)
        validate_document(document, schema, source=str(path))
        lines.append(jsonl_line(document))
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())


def replace_dir_atomically(staging: Path, final: Path) -> None:
    """Move a fully written `staging` directory to `final`, replacing any previous one.

    The old directory is moved aside first and deleted only after the new one is in place, so a
    failure at any point leaves either the old or the new complete directory at `final`.
    """
    import shutil

    staging, final = Path(staging), Path(final)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(staging)
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh empty directory beside `final` to build its replacement in."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    path.chmod(0o755)
    return path
