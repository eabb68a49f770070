"""`geno-pipeline validate FILE`: check any JSON/JSONL file we write against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from geno_pipeline.errors import SchemaValidationError
from geno_pipeline.jsonio import validate_document
from geno_pipeline.schemas import SCHEMA_MODELS, schema_name_for_file

__all__ = ["validate_file"]


def validate_file(path: Path, *, schema: str | None = None) -> int:
    """Validate `path` (every line for .jsonl); return the number of documents checked."""
    path = Path(path)
    if not path.is_file():
        raise SchemaValidationError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.name.endswith((".yaml", ".yml")):
        from geno_pipeline.config import params_from_mapping

        params_from_mapping(yaml.safe_load(text) or {}, source=str(path))
        return 1
    try:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
    except json.JSONDecodeError as exc:
        raise SchemaValidationError(f"{path}: not valid JSON ({exc})") from None
    if not documents:
        raise SchemaValidationError(f"{path}: no JSON documents in the file")
    name = schema or schema_name_for_file(path, documents[0])
    if name is None or name not in SCHEMA_MODELS:
        raise SchemaValidationError(
            f"{path}: cannot tell which schema applies; fix: pass --schema NAME (one of {', '.join(sorted(SCHEMA_MODELS))})"
        )
    for number, document in enumerate(documents, start=1):
        validate_document(document, name, source=f"{path}" + (f" line {number}" if path.suffix == ".jsonl" else ""))
    return len(documents)
