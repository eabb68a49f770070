"""`geno-pipeline validate FILE`: check any JSON/JSONL file we write against its schema."""

from __future__ import annotations

import json
from pathlib import Path

from geno_pipeline.errors import SchemaValidationError
from geno_pipeline.jsonio import validate_document
from geno_pipeline.readers import read_text
from geno_pipeline.schemas import SCHEMA_MODELS, load_project_tools, schema_name_for_file

__all__ = ["validate_file"]


def validate_file(path: Path, *, schema: str | None = None) -> int:
    """Validate `path` (every line for .jsonl); return the number of documents checked."""
    path = Path(path)
    fix = "give one of the pipeline's JSON, JSONL or params YAML files"
    if path.name.endswith((".yaml", ".yml")):
        from geno_pipeline.config import load_params

        load_params(path)
        return 1
    text = read_text(path, error=SchemaValidationError, what="JSON", fix=fix)
    documents = []
    lines = text.splitlines() if path.suffix == ".jsonl" else [text]
    for number, line in enumerate(lines, start=1):
        if path.suffix == ".jsonl" and not line.strip():
            continue
        try:
            documents.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f" line {number}" if path.suffix == ".jsonl" else ""
            raise SchemaValidationError(f"{path}{where}: not valid JSON ({exc}); fix: {fix}") from None
    if not documents:
        raise SchemaValidationError(f"{path}: no JSON documents in the file")
    name = schema or schema_name_for_file(path, documents[0])
    if name is not None and name not in SCHEMA_MODELS:  # a developer tool's report: its checkout registers it
        for parent in path.resolve().parents:
            if load_project_tools(parent):
                break
    if name is None or name not in SCHEMA_MODELS:
        raise SchemaValidationError(
            f"{path}: cannot tell which schema applies; fix: pass --schema NAME (one of {', '.join(sorted(SCHEMA_MODELS))})"
        )
    for number, document in enumerate(documents, start=1):
        validate_document(document, name, source=f"{path}" + (f" line {number}" if path.suffix == ".jsonl" else ""))
    return len(documents)
