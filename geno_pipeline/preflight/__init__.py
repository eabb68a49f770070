"""Preflight: will this machine run the job, and if not, why not (a list of checks: probe -> findings)."""

from __future__ import annotations

from geno_pipeline.preflight.checks.accelerator import assess_accelerator, map_visible_devices, probe_accelerator, probe_torch_cuda
from geno_pipeline.preflight.checks.dependencies import DependencySpec, probe_dependency
from geno_pipeline.preflight.documents import (
    MIN_CUDA_VRAM_GB,
    AcceleratorProbe,
    DependencyProbe,
    PreflightReport,
    TrainingPreflightIssue,
    TrainingPreflightReport,
)
from geno_pipeline.preflight.nvml import probe_nvml
from geno_pipeline.preflight.runner import TrainingPreflightRequest, build_training_preflight_report
from geno_pipeline.preflight.stage import write_training_preflight_report
from geno_pipeline.preflight.torch_process import TorchProbePlan, TorchProbeProcess, TorchProcessFacts, TorchProcessFn

__all__ = [
    "MIN_CUDA_VRAM_GB",
    "AcceleratorProbe",
    "DependencyProbe",
    "DependencySpec",
    "PreflightReport",
    "TorchProbePlan",
    "TorchProbeProcess",
    "TorchProcessFacts",
    "TorchProcessFn",
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
