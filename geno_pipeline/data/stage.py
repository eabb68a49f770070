"""The `data` stage: build artifacts/dataset from the `data` params."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

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
    result = build_dataset(params, root=layout.root, out_dir=layout.dataset_dir, progress=_progress_printer())
    return StageResult(result.manifest, {"dataset_id": result.manifest.dataset_id})


def _progress_printer(every_s: float = 5.0) -> Callable[[int, int], None]:
    """Print how much of the FASTA has been read, at most every `every_s` seconds (silent on small files)."""
    started = time.monotonic()
    last = started

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = done / (now - started) / 2**20
            print(
                f"data: read {done / 2**30:.2f} of {total / 2**30:.2f} GiB of the FASTA ({rate:.0f} MiB/s) ...", file=sys.stderr, flush=True
            )

    return report


def summary(layout: Layout, manifest: DatasetManifest) -> list[str]:
    """What the CLI prints after the stage."""
    lines = []
    if manifest.source.kind == "fasta":
        records = manifest.records
        used = [r for r in records if r.role != "excluded"]
        lines.append(
            f"data: read {manifest.source.reference_bases} bases in {len(records)} record{'' if len(records) == 1 else 's'} "
            f"({len(used)} used): "
            f"{sum(r.n_bases for r in records)} N (IUPAC codes {sum(r.iupac_bases for r in records)}), "
            f"{sum(r.soft_masked_bases for r in records)} soft-masked"
        )
        held = [r.name for r in used if r.role == "valid"]
        if held:
            lines.append(f"data: validation windows only from {', '.join(held)} (chromosome hold-out)")
    return [*lines, f"data: wrote {layout.dataset_dir} (dataset_id {manifest.dataset_id})"]
