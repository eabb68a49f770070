"""Dataset check: the manifest and every file's sha256, as `train` will load them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geno_pipeline.checksums import sha256_file
from geno_pipeline.config import DataParams
from geno_pipeline.data.dataset import MANIFEST_NAME, dataset_problems, resolve_fasta
from geno_pipeline.data.manifest import DatasetManifest
from geno_pipeline.errors import DataError
from geno_pipeline.jsonio import read_json
from geno_pipeline.preflight.checks.base import Finding, passed, problem

__all__ = ["DatasetCheck", "DatasetFacts", "input_problems"]

_REMEDY = "rebuild the dataset: geno-pipeline data (or dvc repro data)"


@dataclass(frozen=True)
class DatasetFacts:
    """Integrity problems as (code, message), and the manifest's id and counts when sound."""

    problems: list[tuple[str, str]]
    dataset_id: str | None = None
    train_windows: int = 0
    valid_windows: int = 0


def input_problems(manifest: DatasetManifest, root: Path, data: DataParams | None) -> list[tuple[str, str]]:
    """The dataset's inputs against the manifest: the FASTA's sha256, and the data params it was built from."""
    problems: list[tuple[str, str]] = []
    source = manifest.source
    if source.kind == "fasta" and source.fasta_path is not None:
        try:
            path = resolve_fasta(source.fasta_path, root)
            actual = sha256_file(path) if path.is_file() else None
        except (DataError, OSError) as exc:
            problems.append(("dataset.fasta_changed", f"{source.fasta_path}: cannot be read ({exc})"))
        else:
            if actual is None:
                problems.append(("dataset.fasta_changed", f"{path}: the FASTA the dataset was built from is missing"))
            elif actual != source.fasta_sha256:
                problems.append(
                    (
                        "dataset.fasta_changed",
                        f"{path}: sha256 {actual[:16]}... differs from the manifest's fasta_sha256 {str(source.fasta_sha256)[:16]}...; "
                        "the dataset was built from another version of the file",
                    )
                )
    if data is not None and manifest.params != data:
        have, want = manifest.params.model_dump(), data.model_dump()
        keys = ", ".join(f"data.{k}: dataset {have[k]!r}, params {want[k]!r}" for k in sorted(want) if have.get(k) != want[k])
        problems.append(("dataset.stale", f"the dataset was built from other data params ({keys})"))
    return problems


@dataclass(frozen=True)
class DatasetCheck:
    """`dataset`: one row; one issue per problem."""

    dataset_dir: Path
    root: Path = Path(".")
    data: DataParams | None = None  # the current data params (None when params.yaml is invalid)
    name: str = "dataset"

    def probe(self) -> DatasetFacts:
        problems = dataset_problems(self.dataset_dir)
        if problems:
            return DatasetFacts(problems)
        manifest = DatasetManifest.model_validate(read_json(self.dataset_dir / MANIFEST_NAME))
        problems = input_problems(manifest, self.root, self.data)
        counts = manifest.counts
        return DatasetFacts(problems, manifest.dataset_id, counts.train_windows, counts.valid_windows)

    def assess(self, facts: DatasetFacts) -> list[Finding]:
        if not facts.problems:
            message = f"{facts.dataset_id}: {facts.train_windows} train / {facts.valid_windows} valid windows, every sha256 matches"
            return [passed(self.name, message)]
        path = str(self.dataset_dir)
        (code, first), rest = facts.problems[0], facts.problems[1:]
        more = f" (+{len(rest)} more)" if rest else ""
        findings = [problem(self.name, "error", code, path, first + more, _REMEDY, detail=first)]
        return findings + [problem(self.name, "error", c, path, m, _REMEDY, row=False) for c, m in rest]
