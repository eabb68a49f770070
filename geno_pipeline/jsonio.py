"""The one reader and writer of JSON documents: canonical text, schema validation, atomic writes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geno_pipeline.canonical import canonical_json, jsonl_line, to_jsonable
from geno_pipeline.errors import GenoPipelineError, SchemaValidationError
from geno_pipeline.fsio import atomic_write_bytes, atomic_write_text, fsync_dir, replace_dir_atomically, staging_dir, writing
from geno_pipeline.readers import read_json_text
from geno_pipeline.schemas import validator_for

__all__ = [
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_text",
    "canonical_json",
    "document_text",
    "fsync_dir",
    "jsonl_line",
    "read_json",
    "replace_dir_atomically",
    "staging_dir",
    "to_jsonable",
    "validate_document",
    "write_json",
]


def validate_document(document: Any, schema: str, *, source: str = "<document>") -> None:
    """Raise `SchemaValidationError` listing every violation of the named schema."""
    errors = sorted(validator_for(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:20]:
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            lines.append(f"  - {where}: {err.message}")
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise SchemaValidationError(f"{source} does not match schema '{schema}':\n" + "\n".join(lines) + more)


def document_text(path: Path, obj: Any, *, schema: str) -> str:
    """`obj` as the canonical JSON text to write at `path`, once validated against `schema`."""
    document = to_jsonable(obj)
    validate_document(document, schema, source=str(path))
    return canonical_json(document)


def write_json(path: Path, obj: Any, *, schema: str) -> None:
    """Validate `obj` against `schema`, then write it canonically and atomically."""
    atomic_write_text(Path(path), document_text(path, obj, schema=schema))


def read_json(
    path: Path, *, schema: str | None = None, error: type[GenoPipelineError] = SchemaValidationError, fix: str | None = None
) -> Any:
    """Read a JSON file through the untrusted-bytes boundary; with `schema`, also validate it.

    Every failure is `error` (default `SchemaValidationError`) naming the file, what is wrong and `fix`.
    """
    path = Path(path)
    remedy = fix or "rerun the stage that writes this file"
    document = read_json_text(path, error=error, fix=remedy)
    if schema is not None:
        try:
            validate_document(document, schema, source=str(path))
        except SchemaValidationError as exc:
            if error is SchemaValidationError:
                raise
            raise error(f"{exc}\nfix: {remedy}") from None
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
    with writing(path), open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
