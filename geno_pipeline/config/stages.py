"""The whole params file (`Params`) and what each stage reads of it: the train and sweep stages' models, and the params
keys of each DVC stage."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from geno_pipeline.canonical import canonical_json
from geno_pipeline.checksums import sha256_bytes
from geno_pipeline.config.checks import raise_if
from geno_pipeline.config.rules import cross_section_problems, sweep_gate_problems, world_size_problems
from geno_pipeline.config.sections import (
    CollapseParams,
    DataParams,
    PreflightParams,
    ReleaseParams,
    RuntimeParams,
    Section,
    SweepParams,
    TrainParams,
)

__all__ = ["Params", "SweepStageParams", "TrainStageParams", "section_keys", "stage_params"]


class Params(Section):
    """The whole params.yaml: one section per stage."""

    data: DataParams = Field(default_factory=DataParams)
    """Dataset construction."""
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    preflight: PreflightParams = Field(default_factory=PreflightParams)
    """Preflight thresholds."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""
    sweep: SweepParams = Field(default_factory=SweepParams)
    """Seed sweep."""
    release: ReleaseParams = Field(default_factory=ReleaseParams)
    """Release gates."""

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        problems = cross_section_problems(self.data.window_length, self.data.flank_length, self.train)
        problems += sweep_gate_problems(self.sweep, self.release)
        raise_if(problems + world_size_problems(self.runtime.nproc_per_node, self.train))
        return self


class TrainStageParams(Section):
    """The sections the `train` stage reads (and nothing else)."""

    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""

    @model_validator(mode="after")
    def _world(self) -> TrainStageParams:
        raise_if(world_size_problems(self.runtime.nproc_per_node, self.train))
        return self

    @classmethod
    def from_params(cls, params: Params) -> TrainStageParams:
        """Narrow the whole params to the train stage's sections."""
        return cls(runtime=params.runtime, train=params.train, collapse=params.collapse)

    def sha256(self) -> str:
        """Hash of exactly the params the train stage reads (checkpoints and the release bind to it)."""
        return sha256_bytes(canonical_json(self).encode())


class SweepStageParams(Section):
    """The sections the `sweep` stage reads: the train stage's, and the sweep's."""

    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    """Device and threading."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Training (train.seed is the released run's seed; the sweep trains the next ones)."""
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    """Collapse diagnostics."""
    sweep: SweepParams = Field(default_factory=SweepParams)
    """How many seeds."""

    @classmethod
    def from_params(cls, params: Params) -> SweepStageParams:
        """Narrow the whole params to the sweep stage's sections."""
        return cls(runtime=params.runtime, train=params.train, collapse=params.collapse, sweep=params.sweep)

    def train_stage(self, seed: int | None = None) -> TrainStageParams:
        """The train stage's params, with train.seed replaced by `seed` when given."""
        train = self.train if seed is None else self.train.model_copy(update={"seed": seed})
        return TrainStageParams(runtime=self.runtime, train=train, collapse=self.collapse)


def section_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """Dotted top-level keys of a section model, as listed under `params:` in dvc.yaml."""
    return [f"{prefix}.{name}" for name in model.model_fields]


def stage_params() -> dict[str, list[str]]:
    """The params keys each DVC stage reads, derived from the models each stage's `run` takes."""
    whole = list(Params.model_fields)  # preflight validates, release embeds the whole file
    return {
        "data": section_keys(DataParams, "data"),
        "preflight": whole,
        # train also checks that the dataset was built from the `data` section (cli's train command)
        "train": section_keys(DataParams, "data")
        + [key for name, info in TrainStageParams.model_fields.items() for key in section_keys(info.annotation, name)],  # type: ignore[arg-type]
        "sweep": [key for name, info in SweepStageParams.model_fields.items() for key in section_keys(info.annotation, name)],  # type: ignore[arg-type]
        "release": whole,
    }
