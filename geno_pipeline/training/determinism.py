"""Seeds and torch reproducibility settings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.seeding import derive_seed
from geno_pipeline.torchflags import apply_torch_determinism, torch_determinism_flags

__all__ = ["TorchDeterminismReport", "TrainerSeeds", "configure_torch_reproducibility"]


class TrainerSeeds(Document):
    """Distinct seeds for each random purpose, derived from `train.seed` by hashing."""

    base: int = Field(ge=0)
    """train.seed."""
    encoder: int = Field(ge=0)
    """Frozen encoder weights."""
    model_init: int = Field(ge=0)
    """Initial weights of the trainable modules."""
    sampler: int = Field(ge=0)
    """Training tuple stream."""
    validation: int = Field(ge=0)
    """Fixed held-out batch."""

    @classmethod
    def from_base(cls, seed: int) -> TrainerSeeds:
        """Derive every purpose's seed from `seed`."""
        return cls(
            base=seed,
            encoder=derive_seed(seed, "train.encoder"),
            model_init=derive_seed(seed, "train.model_init"),
            sampler=derive_seed(seed, "train.sampler"),
            validation=derive_seed(seed, "train.validation"),
        )


class TorchDeterminismReport(Document):
    """Runtime settings applied before a torch training run."""

    seed: int
    """Seed given to the global Python/NumPy/torch generators (belt and braces: nothing reads them)."""
    deterministic: bool
    """Deterministic mode requested."""
    cublas_workspace_config: str | None
    """CUBLAS_WORKSPACE_CONFIG in effect (set before CUDA initialises)."""
    torch_deterministic_algorithms: bool
    """torch.are_deterministic_algorithms_enabled() after configuration."""
    cudnn_benchmark: bool
    """torch.backends.cudnn.benchmark."""
    cudnn_deterministic: bool
    """torch.backends.cudnn.deterministic."""
    tf32_matmul: bool
    """torch.backends.cuda.matmul.allow_tf32."""
    tf32_cudnn: bool
    """torch.backends.cudnn.allow_tf32."""
    cpu_threads: int
    """torch.get_num_threads()."""
    cuda_initialized_before: bool
    """CUDA was already initialised when the settings were applied (the workspace setting may not apply)."""


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
        tf32_matmul=flags["tf32_matmul"],
        tf32_cudnn=flags["tf32_cudnn"],
        cpu_threads=torch.get_num_threads(),
        cuda_initialized_before=initialised,
    )
