"""Registry of every JSON document we write: name -> pydantic model -> JSON Schema (draft 2020-12).

The committed files in `schemas/` are generated from these models (`geno-pipeline schemas --write`)
and checked for drift by a test and by `geno-pipeline schemas --check`.
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel

from geno_pipeline.canonical import canonical_json
from geno_pipeline.fsio import atomic_write_text

__all__ = [
    "SCHEMA_MODELS",
    "register_schemas",
    "schema_dir",
    "schema_drift",
    "schema_for",
    "schema_name_for_file",
    "validator_for",
    "write_schemas",
]

SCHEMA_BASE_ID = "https://geno-pipeline.invalid/schemas/"

# name -> "module:Class"; the file is schemas/<name>.schema.json
SCHEMA_MODELS: dict[str, str] = {
    "params": "geno_pipeline.config:Params",
    "dataset_manifest": "geno_pipeline.data.manifest:DatasetManifest",
    "preflight_report": "geno_pipeline.preflight.documents:PreflightReport",
    "environment": "geno_pipeline.environment:EnvironmentFingerprint",
    "runtime_report": "geno_pipeline.runtime_report:RuntimeReport",
    "train_report": "geno_pipeline.training.documents:TrainingReport",
    "train_metrics": "geno_pipeline.training.documents:TrainMetrics",
    "metrics_line": "geno_pipeline.training.documents:MetricsLine",
    "collapse_line": "geno_pipeline.training.documents:CollapseLine",
    "checkpoint_state": "geno_pipeline.training.checkpoint:CheckpointState",
    "sweep": "geno_pipeline.sweep.documents:SweepReport",
    "release_metadata": "geno_pipeline.release.documents:ReleaseMetadata",
    "release_metrics": "geno_pipeline.release.documents:ReleaseMetrics",
    "provenance": "geno_pipeline.release.documents:ProvenanceStatement",
    "release_report": "geno_pipeline.release.documents:ReleaseReport",
    "preflight_outcome": "geno_pipeline.preflight.documents:PreflightOutcome",
    "repro_check": "geno_pipeline.repro_check:ReproCheckReport",
}


def load_project_tools(root: Path) -> bool:
    """Import the developer tools of the checkout at `root`, when it has them, so that their reports' schemas are
    registered; returns whether it did. The installed package never needs them."""
    root = Path(root).resolve()
    if not (root / "tools" / "__init__.py").is_file():
        return False
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        importlib.import_module("tools")
    except ImportError:
        return False
    return True


def register_schemas(models: dict[str, str]) -> None:
    """Add name -> "module:Class" entries: the developer tools of a checkout register the reports they write (importing
    `tools` does it), so `schemas --write/--check` and `validate` cover them where they are importable."""
    SCHEMA_MODELS.update(models)


def _model(name: str) -> type[BaseModel]:
    try:
        target = SCHEMA_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMA_MODELS))}") from None
    module, _, attr = target.partition(":")
    model = getattr(importlib.import_module(module), attr)
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


@cache
def schema_for(name: str) -> dict[str, Any]:
    """The JSON Schema of document `name`, generated from its pydantic model."""
    generated = _model(name).model_json_schema(mode="serialization")
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE_ID}{name}.schema.json",
    }
    schema.update(generated)
    return schema


@cache
def validator_for(name: str) -> Draft202012Validator:
    """A cached validator for schema `name`. The schemas are generated from this package's models, so whether each one
    is a valid draft 2020-12 schema is a property of the code, checked by the tests (tests/test_drift.py), not again
    in every process that writes a document (about 15 ms a schema)."""
    return Draft202012Validator(schema_for(name))


def schema_dir(root: Path) -> Path:
    """Where the committed schemas live under a project root."""
    return Path(root) / "schemas"


def write_schemas(root: Path) -> list[Path]:
    """Regenerate every committed schema file; returns the paths written."""
    out = []
    for name in sorted(SCHEMA_MODELS):
        path = schema_dir(root) / f"{name}.schema.json"
        atomic_write_text(path, canonical_json(schema_for(name)))
        out.append(path)
    return out


def schema_drift(root: Path) -> list[str]:
    """Names of schema files that are missing, stale or unknown under `root/schemas`."""
    problems = []
    directory = schema_dir(root)
    for name in sorted(SCHEMA_MODELS):
        path = directory / f"{name}.schema.json"
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != canonical_json(schema_for(name)):
            problems.append(f"{path}: differs from the generated schema")
    if directory.exists():
        for path in sorted(directory.glob("*.schema.json")):
            if path.name.removesuffix(".schema.json") not in SCHEMA_MODELS:
                problems.append(f"{path}: no model generates this schema")
    return problems


_FILE_SCHEMAS = {
    "params.yaml": "params",
    "dataset_manifest.json": "dataset_manifest",
    "preflight.json": "preflight_report",
    "environment.json": "environment",
    "train.json": "train_report",
    "metrics.json": None,  # reports/metrics.json (train_metrics) or release metrics.json
    "state.json": "checkpoint_state",
    "metadata.json": "release_metadata",
    "provenance.intoto.json": "provenance",
    "release.json": "release_report",
    "outcome.json": "preflight_outcome",
    "repro_check.json": "repro_check",
    "bench.json": "bench",
    "scaling.json": "bench_scaling",
    "contention.json": "bench_contention",
    "reliability.json": "reliability",
    "mutation.json": "mutation",
    "sweep.json": "sweep",
}


def schema_name_for_file(path: Path, document: Any) -> str | None:
    """Best guess of the schema of one of our files from its name, path and content."""
    path = Path(path)
    if path.parent.name == "runtime" and path.name != "repro_check.json":  # reports/runtime/<stage>.json
        return "runtime_report"
    if path.suffix == ".jsonl":
        return "collapse_line" if "collapse" in path.name else "metrics_line"
    if path.name == "metrics.json":
        is_release = isinstance(document, dict) and "run_id" in document
        return "release_metrics" if is_release else "train_metrics"
    return _FILE_SCHEMAS.get(path.name)
