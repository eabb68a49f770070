"""The one base class of every JSON document and params section, and the shapes they share."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["ArtifactIdentity", "Document", "FiniteFloat"]


class Document(BaseModel):
    """Frozen, no unknown keys, field docstrings flow into the generated JSON Schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
"""A float that must not be NaN or infinite."""


class ArtifactIdentity(Document):
    """A file a stage wrote."""

    path: str
    """Path relative to the project root."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256."""
    bytes: int = Field(ge=0)
    """Size."""
