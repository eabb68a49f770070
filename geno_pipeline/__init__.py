"""geno-pipeline: preflight, deterministic training and verifiable release of a DNA latent world model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geno_pipeline.version import __version__

__all__ = ["Edit", "WorldModel", "__version__", "load_released_model"]

if TYPE_CHECKING:
    from geno_pipeline.data.records import Edit as Edit
    from geno_pipeline.release.loader import load_released_model as load_released_model
    from geno_pipeline.training.model import WorldModel as WorldModel


def __getattr__(name: str) -> Any:
    # Lazy so that `import geno_pipeline` stays cheap (no torch import) for the CLI and preflight.
    if name == "load_released_model":
        from geno_pipeline.release.loader import load_released_model

        return load_released_model
    if name == "Edit":
        from geno_pipeline.data.records import Edit

        return Edit
    if name == "WorldModel":
        from geno_pipeline.training.model import WorldModel

        return WorldModel
    raise AttributeError(name)
