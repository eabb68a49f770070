"""The trainer's seeds and its reproducibility report: plain documents, importable without torch.

Reports, release metadata and `verify` read these shapes; keeping them apart from `determinism.py` (which applies
the settings through torch) lets `verify`, `validate` and the release documents load without importing torch.
"""

from __future__ import annotations

from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.seeding import derive_seed

__all__ = ["TorchDeterminismReport", "TrainerSeeds"]


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
    """cuBLAS matmuls may use TF32: torch.backends.cuda.matmul.fp32_precision is `tf32` (allow_tf32 on torch < 2.9), or
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 on a CUDA device."""
    tf32_cudnn: bool
    """cuDNN may use TF32: torch.backends.cudnn.conv or .rnn fp32_precision is `tf32` (allow_tf32 on torch < 2.9)."""
    cpu_threads: int
    """torch.get_num_threads()."""
    cuda_initialized_before: bool
    """CUDA was already initialised when the settings were applied (the workspace setting may not apply)."""
    cpu_class: str
    """`<CPU vendor>/<instruction set torch's CPU kernels use>` (part of the environment class)."""
