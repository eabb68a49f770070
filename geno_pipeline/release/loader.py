"""Consumer API: verify a release bundle, then rebuild the model from it (never unpickling)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from geno_pipeline.config import ModelParams
from geno_pipeline.errors import VerifyError
from geno_pipeline.readers import read_tensors
from geno_pipeline.release.verify import safetensors_metadata, verify_bundle
from geno_pipeline.training.checkpoint_load import shape_problems, tensor_specs
from geno_pipeline.training.model import WorldModel, build_world_model

__all__ = ["load_released_model"]


def load_released_model(directory: Path | str, *, device: str = "cpu") -> WorldModel:
    """Verify the bundle at `directory` and return the released model in eval mode.

    Raises `VerifyError` listing every problem when the bundle does not verify, and naming every tensor that the model
    its header describes lacks, does not have, or has in another shape or dtype (a bundle whose sums and signature were
    redone over other weights verifies, and is still refused here).
    """
    directory = Path(directory)
    problems = verify_bundle(directory)
    if problems:
        raise VerifyError(f"{directory}: bundle does not verify:\n" + "\n".join(f"  - {p}" for p in problems))
    path = directory / "model.safetensors"
    fix = "use a bundle written by `geno-pipeline release` (check it with `geno-pipeline verify`)"
    try:
        meta = safetensors_metadata(path)
        model = build_world_model(
            window_length=int(meta["window_length"]),
            params=ModelParams.model_validate(json.loads(meta["model_params"])),
            encoder_seed=int(meta["encoder_seed"]),
            init_seed=int(meta["init_seed"]),
        )
    except (OSError, KeyError, ValueError, ValidationError) as exc:
        raise VerifyError(f"{path}: the header cannot rebuild the model ({type(exc).__name__}: {exc}); fix: {fix}") from None
    tensors = read_tensors(path, error=VerifyError, fix=fix)
    problems = shape_problems(path.name, tensor_specs(tensors), tensor_specs(model.state_dict()))
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise VerifyError(f"{path}: the tensors do not fit the model the header describes:\n{body}\nfix: {fix}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise VerifyError(f"{path}: the tensors do not fit the model the header describes ({exc}); fix: {fix}") from None
    return model.to(device).eval()
