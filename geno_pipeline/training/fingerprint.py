"""The environment fingerprint preflight wrote, as training reads it (no torch: the sweep and the release read it too)."""

from __future__ import annotations

from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.errors import TrainingError
from geno_pipeline.jsonio import read_json
from geno_pipeline.layout import Layout

__all__ = ["preflight_fingerprint"]


def preflight_fingerprint(layout: Layout) -> EnvironmentFingerprint:
    """The fingerprint preflight wrote; training refuses to run in another environment."""
    if not layout.environment.is_file():
        raise TrainingError(f"{layout.environment}: missing; fix: run `geno-pipeline preflight` first (dvc repro runs it before train)")
    fix = "rerun `geno-pipeline preflight`"
    return EnvironmentFingerprint.model_validate(read_json(layout.environment, schema="environment", error=TrainingError, fix=fix))
