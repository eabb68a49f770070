"""Training: samplers, schedules, collapse diagnostics, model, trainer, checkpoints, determinism.

Mirrors the public names of `geno_lewm.training`. Heavy (torch) modules load lazily so that
importing the samplers and schedules stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from geno_pipeline.training.sampling import (
    DEFAULT_EDIT_TYPE_WEIGHTS,
    DEFAULT_ROLLOUT_STEP_MIX,
    EditType,
    EditTypeWeight,
    RolloutStepWeight,
    draw_edit_type_counts,
    draw_rollout_step_counts,
    sample_edit_type,
    sample_edit_types_array,
    sample_rollout_steps,
    sample_rollout_steps_array,
)
from geno_pipeline.training.schedule import set_optimizer_lr, wsd_lr_multiplier

_LAZY = {
    "CollapseAlert": "geno_pipeline.training.collapse",
    "CollapseCheck": "geno_pipeline.training.collapse",
    "CollapseMetrics": "geno_pipeline.training.collapse",
    "CollapseMonitor": "geno_pipeline.training.collapse",
    "CollapseThresholds": "geno_pipeline.training.collapse",
    "compute_collapse_metrics": "geno_pipeline.training.collapse",
    "detect_collapse": "geno_pipeline.training.collapse",
    "record_collapse_metrics": "geno_pipeline.training.collapse",
    "TorchDeterminismReport": "geno_pipeline.training.seeds",
    "TrainerSeeds": "geno_pipeline.training.seeds",
    "configure_torch_reproducibility": "geno_pipeline.training.determinism",
    "TorchTrainer": "geno_pipeline.training.trainer",
    "TorchTrainerBatch": "geno_pipeline.training.trainer",
    "TorchTrainerStepResult": "geno_pipeline.training.trainer",
    "build_adamw_optimizer": "geno_pipeline.training.trainer",
    "make_action_mask": "geno_pipeline.training.trainer",
    "TrainingCheckpointError": "geno_pipeline.errors",
    "TrainingReport": "geno_pipeline.training.documents",
    "run_training": "geno_pipeline.training.stage",
    "AcceleratorProbe": "geno_pipeline.preflight",
    "DependencyProbe": "geno_pipeline.preflight",
    "TrainingPreflightIssue": "geno_pipeline.preflight",
    "TrainingPreflightReport": "geno_pipeline.preflight",
    "TrainingPreflightRequest": "geno_pipeline.preflight",
    "MIN_CUDA_VRAM_GB": "geno_pipeline.preflight",
    "build_training_preflight_report": "geno_pipeline.preflight",
    "write_training_preflight_report": "geno_pipeline.preflight",
}

__all__ = [
    "DEFAULT_EDIT_TYPE_WEIGHTS",
    "DEFAULT_ROLLOUT_STEP_MIX",
    "EditType",
    "EditTypeWeight",
    "RolloutStepWeight",
    "draw_edit_type_counts",
    "draw_rollout_step_counts",
    "sample_edit_type",
    "sample_edit_types_array",
    "sample_rollout_steps",
    "sample_rollout_steps_array",
    "set_optimizer_lr",
    "wsd_lr_multiplier",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geno_pipeline.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
