"""Every path the pipeline reads or writes, named once.

Stages, the CLI, repro-check, verify and bench take a `Layout`; nothing else spells a path. A test
checks that `dvc.yaml`'s deps and outs are exactly what `Layout.dvc_stages()` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOG_FILES", "Layout", "StageFiles"]

LOG_FILES = ("metrics.jsonl", "collapse.jsonl", "train.log")
"""The train stage's deterministic logs, in the order checkpoints record them."""


@dataclass(frozen=True)
class StageFiles:
    """A DVC stage's deps and outs, as project-relative POSIX paths."""

    deps: tuple[str, ...]
    outs: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """The project tree under `root`."""

    root: Path
    train_home: Path | None = None
    """Where a sweep's seeded run keeps what the train stage writes (None: artifacts/train and reports/)."""

    @classmethod
    def for_root(cls, root: Path | str = ".") -> Layout:
        """The layout of the project at `root`."""
        return cls(Path(root))

    def for_sweep_seed(self, seed: int) -> Layout:
        """This layout with the train stage's outputs moved to artifacts/sweep/seed-<seed>/ (train/, train.json,
        metrics.json, plots/); inputs (dataset, preflight) stay shared."""
        return Layout(self.root, train_home=self.sweep_seed_dir(seed))

    def rel(self, path: Path) -> str:
        """`path` relative to the root, POSIX style (how reports and dvc.yaml name files)."""
        return Path(path).relative_to(self.root).as_posix()

    # ------------------------------------------------------------ inputs and top-level folders
    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def genomes(self) -> Path:
        """The data stage's input folder: a FASTA given as `data.fasta_path` lives here (or is linked from here)."""
        return self.root / "genomes"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # ------------------------------------------------------------ data
    @property
    def dataset_dir(self) -> Path:
        return self.artifacts / "dataset"

    @property
    def dataset_manifest(self) -> Path:
        return self.dataset_dir / "dataset_manifest.json"

    # ------------------------------------------------------------ preflight
    @property
    def preflight_dir(self) -> Path:
        return self.artifacts / "preflight"

    @property
    def environment(self) -> Path:
        return self.preflight_dir / "environment.json"

    @property
    def preflight_outcome(self) -> Path:
        return self.preflight_dir / "outcome.json"

    @property
    def preflight_report(self) -> Path:
        """The human- and machine-readable report; volatile (free memory, timings), so not a DVC output nor tracked."""
        return self.reports / "preflight.json"

    # ------------------------------------------------------------ train
    @property
    def train_dir(self) -> Path:
        return (self.train_home or self.artifacts) / "train"

    @property
    def checkpoints(self) -> Path:
        return self.train_dir / "checkpoints"

    @property
    def final_model(self) -> Path:
        return self.train_dir / "model.safetensors"

    def log(self, name: str) -> Path:
        """One of `LOG_FILES` under artifacts/train."""
        if name not in LOG_FILES:
            raise ValueError(f"unknown log {name!r}; known: {', '.join(LOG_FILES)}")
        return self.train_dir / name

    @property
    def train_report(self) -> Path:
        return (self.train_home or self.reports) / "train.json"

    @property
    def train_metrics(self) -> Path:
        return (self.train_home or self.reports) / "metrics.json"

    @property
    def plots(self) -> Path:
        return (self.train_home or self.reports) / "plots"

    # ------------------------------------------------------------ sweep
    @property
    def sweep_dir(self) -> Path:
        """Scratch of the seed sweep: one folder per seed (not a DVC output; a rerun reuses finished seeds)."""
        return self.artifacts / "sweep"

    def sweep_seed_dir(self, seed: int) -> Path:
        return self.sweep_dir / f"seed-{seed}"

    @property
    def sweep_report(self) -> Path:
        return self.reports / "sweep.json"

    # ------------------------------------------------------------ release
    @property
    def release_dir(self) -> Path:
        return self.artifacts / "release"

    @property
    def release_report(self) -> Path:
        return self.reports / "release.json"

    # ------------------------------------------------------------ tools
    def runtime_report(self, stage: str) -> Path:
        """Volatile wall-clock facts of one stage run (not a DVC output)."""
        return self.reports / "runtime" / f"{stage}.json"

    @property
    def repro_check_report(self) -> Path:
        """Volatile: the verdict for this workspace, not part of the project's tracked files."""
        return self.reports / "runtime" / "repro_check.json"

    @property
    def reliability_report(self) -> Path:
        return self.reports / "reliability.json"

    @property
    def mutation_report(self) -> Path:
        """`python -m tools.mutation`: mutation score per core module."""
        return self.reports / "mutation.json"

    @property
    def bench_report(self) -> Path:
        return self.reports / "bench.json"

    @property
    def bench_dir(self) -> Path:
        """`bench --scaling`: one CSV per scaling curve (DVC plots) and scaling.json with the fitted growth."""
        return self.reports / "bench"

    @property
    def scaling_report(self) -> Path:
        return self.bench_dir / "scaling.json"

    # ------------------------------------------------------------ the DVC pipeline
    def dvc_stages(self) -> dict[str, StageFiles]:
        """What each stage of dvc.yaml depends on and writes (code deps included)."""
        r = self.rel
        code = ("geno_pipeline", "pyproject.toml", "requirements.lock")  # run ids and reports name the code by its digest
        return {
            "data": StageFiles(
                deps=(
                    r(self.genomes),
                    "geno_pipeline/data",
                    "geno_pipeline/config",
                    "geno_pipeline/checksums.py",
                    "geno_pipeline/fsio.py",
                    "geno_pipeline/jsonio.py",
                    "geno_pipeline/readers.py",
                    "geno_pipeline/seeding.py",
                    "geno_pipeline/yamlio.py",
                ),
                outs=(r(self.dataset_dir),),
            ),
            "preflight": StageFiles(
                deps=(
                    r(self.dataset_dir),
                    "geno_pipeline/preflight",
                    "geno_pipeline/environment.py",
                    "geno_pipeline/devices.py",
                    "geno_pipeline/torchflags.py",
                    "geno_pipeline/torchprobe.py",
                ),
                outs=(r(self.environment), r(self.preflight_outcome)),
            ),
            "train": StageFiles(
                deps=(r(self.dataset_dir), r(self.environment), *code),
                outs=(r(self.train_dir), r(self.train_report), r(self.plots), r(self.train_metrics)),
            ),
            "sweep": StageFiles(
                deps=(r(self.dataset_dir), r(self.environment), *code),
                outs=(r(self.sweep_report),),
            ),
            "release": StageFiles(
                deps=(
                    r(self.train_dir),
                    r(self.dataset_manifest),
                    r(self.preflight_outcome),
                    r(self.environment),
                    r(self.train_report),
                    r(self.sweep_report),
                    *code,
                ),
                outs=(r(self.release_dir), r(self.release_report)),
            ),
        }

    def stage_writes(self, stage: str) -> tuple[Path, ...]:
        """Every file or folder a stage writes: its DVC outs, and for preflight its volatile report."""
        extra = (self.preflight_report,) if stage == "preflight" else ()
        return tuple(self.root / out for out in self.dvc_stages()[stage].outs) + extra

    def sweep_stage_temporaries(self, stage: str) -> list[Path]:
        """Remove the temporary files and staging folders an interrupted run of `stage` left; returns them.

        Inside a folder output everything temporary goes; beside each output only that output's own temporaries.
        """
        from geno_pipeline.fsio import sweep_temporaries

        removed: list[Path] = []
        for path in self.stage_writes(stage):
            if path.is_dir() and not path.is_symlink():
                removed += sweep_temporaries(path)
            removed += sweep_temporaries(path.parent, recursive=False, only=path.name)
        return removed
