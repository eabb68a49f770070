"""Dataset check: the manifest and every file's sha256, as `train` will load them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geno_pipeline.data.dataset import MANIFEST_NAME, dataset_problems
from geno_pipeline.jsonio import read_json
from geno_pipeline.preflight.checks.base import Finding, passed, problem

__all__ = ["DatasetCheck", "DatasetFacts"]

_REMEDY = "rebuild the dataset: geno-pipeline data (or dvc repro data)"


@dataclass(frozen=True)
class DatasetFacts:
    """Integrity problems as (code, message), and the manifest's id and counts when sound."""

    problems: list[tuple[str, str]]
    dataset_id: str | None = None
    train_windows: int = 0
    valid_windows: int = 0


@dataclass(frozen=True)
class DatasetCheck:
    """`dataset`: one row; one issue per problem."""

    dataset_dir: Path
    name: str = "dataset"

    def probe(self) -> DatasetFacts:
        problems = dataset_problems(self.dataset_dir)
        if problems:
            return DatasetFacts(problems)
        manifest = read_json(self.dataset_dir / MANIFEST_NAME)
        counts = manifest["counts"]
        return DatasetFacts([], str(manifest["dataset_id"]), counts["train_windows"], counts["valid_windows"])

    def assess(self, facts: DatasetFacts) -> list[Finding]:
        if not facts.problems:
            message = f"{facts.dataset_id}: {facts.train_windows} train / {facts.valid_windows} valid windows, every sha256 matches"
            return [passed(self.name, message)]
        path = str(self.dataset_dir)
        (code, first), rest = facts.problems[0], facts.problems[1:]
        more = f" (+{len(rest)} more)" if rest else ""
        findings = [problem(self.name, "error", code, path, first + more, _REMEDY, detail=first)]
        return findings + [problem(self.name, "error", c, path, m, _REMEDY, row=False) for c, m in rest]
