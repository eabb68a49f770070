"""Typed, validated params.yaml: one frozen pydantic model per stage section (`sections`), the checks within
one (`checks`) and across them (`rules`), what each stage reads (`stages`) and reading a file with every problem named (`loading`)."""

from __future__ import annotations

from geno_pipeline.config.checks import record_list_problems
from geno_pipeline.config.loading import LoadedParams, load_params, missing_keys, params_from_mapping
from geno_pipeline.config.rules import cross_section_problems, sweep_gate_problems, world_size_problems
from geno_pipeline.config.sections import (
    SEED_MAX,
    CollapseParams,
    DataParams,
    ModelParams,
    PreflightParams,
    ReleaseParams,
    RuntimeParams,
    SweepParams,
    TrainParams,
)
from geno_pipeline.config.stages import Params, SweepStageParams, TrainStageParams, section_keys, stage_params
from geno_pipeline.data.edits import EDIT_TYPE_NAMES

__all__ = [
    "EDIT_TYPE_NAMES",
    "SEED_MAX",
    "CollapseParams",
    "DataParams",
    "LoadedParams",
    "ModelParams",
    "Params",
    "PreflightParams",
    "ReleaseParams",
    "RuntimeParams",
    "SweepParams",
    "SweepStageParams",
    "TrainParams",
    "TrainStageParams",
    "cross_section_problems",
    "load_params",
    "missing_keys",
    "params_from_mapping",
    "record_list_problems",
    "section_keys",
    "stage_params",
    "sweep_gate_problems",
    "world_size_problems",
]
