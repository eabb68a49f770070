"""The `data` stage: build artifacts/dataset from the `data` params."""

from __future__ import annotations

import sys

from geno_pipeline.config import DataParams
from geno_pipeline.data.dataset import build_dataset
from geno_pipeline.data.manifest import DatasetManifest
from geno_pipeline.layout import Layout
from geno_pipeline.runtime_report import StageResult

__all__ = ["run", "summary"]


def run(params: DataParams, layout: Layout) -> StageResult[DatasetManifest]:
    """Build the dataset atomically (a failure leaves the previous one intact); returns its manifest."""
    for leftover in layout.sweep_stage_temporaries("data"):
        print(f"data: removed {layout.rel(leftover)} left by an interrupted run", file=sys.stderr)
    result = build_dataset(params, root=layout.root, out_dir=layout.dataset_dir)
    return StageResult(result.manifest, {"dataset_id": result.manifest.dataset_id})


def summary(layout: Layout, manifest: DatasetManifest) -> list[str]:
    """What the CLI prints after the stage."""
    return [f"data: wrote {layout.dataset_dir} (dataset_id {manifest.dataset_id})"]
