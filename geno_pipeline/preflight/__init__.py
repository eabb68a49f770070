"""Preflight: will this machine run the job, and if not, why not."""

from __future__ import annotations

from geno_pipeline.preflight.accelerator import (
    assess_accelerator,
    map_visible_devices,
    probe_accelerator,
    probe_nvml,
    probe_torch_cuda,
)
from geno_pipeline.preflight.dependencies import DependencySpec, probe_dependency
from geno_pipeline.preflight.models import (
    MIN_CUDA_VRAM_GB,
    AcceleratorProbe,
    DependencyProbe,
    PreflightReport,
    TrainingPreflightIssue,
    TrainingPreflightReport,
    TrainingPreflightRequest,
)
from geno_pipeline.preflight.report import build_training_preflight_report, write_training_preflight_report

__all__ = [
    "MIN_CUDA_VRAM_GB",
    "AcceleratorProbe",
    "DependencyProbe",
    "DependencySpec",
    "PreflightReport",
    "TrainingPreflightIssue",
    "TrainingPreflightReport",
    "TrainingPreflightRequest",
    "assess_accelerator",
    "build_training_preflight_report",
    "map_visible_devices",
    "probe_accelerator",
    "probe_dependency",
    "probe_nvml",
    "probe_torch_cuda",
    "write_training_preflight_report",
]
