"""Torch reproducibility settings (the seed and report documents live in the torch-free `training/seeds.py`)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from geno_pipeline.torchflags import apply_torch_determinism, cpu_kernel_class, cublas_tf32, torch_determinism_flags
from geno_pipeline.training.seeds import TorchDeterminismReport, TrainerSeeds

__all__ = ["TorchDeterminismReport", "TrainerSeeds", "configure_torch_reproducibility"]


def configure_torch_reproducibility(
    seed: int, *, deterministic: bool, device: str = "cpu", cpu_threads: int | None = None
) -> TorchDeterminismReport:
    """Seed Python/NumPy/torch and, when `deterministic`, enable deterministic kernels, disable TF32
    and cuDNN benchmarking, and set CUBLAS_WORKSPACE_CONFIG before CUDA initialises."""
    initialised = bool(torch.cuda.is_initialized())
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    apply_torch_determinism(deterministic=deterministic, cuda=device.startswith("cuda"))
    flags = torch_determinism_flags()
    return TorchDeterminismReport(
        seed=seed,
        deterministic=deterministic,
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG") if device.startswith("cuda") else None,
        torch_deterministic_algorithms=flags["deterministic_algorithms"],
        cudnn_benchmark=flags["cudnn_benchmark"],
        cudnn_deterministic=flags["cudnn_deterministic"],
        tf32_matmul=cublas_tf32(flags["tf32_matmul"], flags["tf32_cublas_override"], cuda=device.startswith("cuda")),
        tf32_cudnn=flags["tf32_cudnn"],
        cpu_threads=torch.get_num_threads(),
        cuda_initialized_before=initialised,
        cpu_class=cpu_kernel_class(),
    )
