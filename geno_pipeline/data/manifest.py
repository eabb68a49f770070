"""The dataset manifest model (`artifacts/dataset/dataset_manifest.json`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.config import DataParams
from geno_pipeline.documents import Document

__all__ = ["DatasetCounts", "DatasetFile", "DatasetManifest", "DatasetSource"]


class DatasetFile(Document):
    """One file of the dataset."""

    path: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Name relative to the dataset directory (plain, no directories)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the file."""
    bytes: int = Field(ge=0)
    """Size in bytes."""


class DatasetSource(Document):
    """Where the reference came from."""

    kind: Literal["synthetic", "fasta"]
    """`synthetic` (seeded generator) or `fasta` (user file)."""
    fasta_path: str | None
    """The FASTA path as given in params (null for synthetic)."""
    fasta_sha256: str | None
    """SHA-256 of the FASTA file's bytes (null for synthetic)."""
    records: int = Field(ge=1)
    """Reference records read."""
    reference_bases: int = Field(ge=0)
    """Total bases in the reference (N included)."""


class DatasetCounts(Document):
    """Sizes of the splits."""

    train_windows: int = Field(ge=1)
    """Training windows."""
    valid_windows: int = Field(ge=1)
    """Validation windows."""
    window_length: int = Field(ge=1)
    """Bases per window."""
    flank_length: int = Field(ge=0)
    """Reference bases stored after each window."""
    candidate_slots: int = Field(ge=0)
    """Non-overlapping N-free slots the windows were drawn from."""
    train_gc_fraction: float = Field(ge=0, le=1)
    """GC fraction over training windows."""


class DatasetManifest(Document):
    """Identity and contents of a built dataset."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    dataset_id: str = Field(pattern=r"^ds-[0-9a-f]{16}$")
    """Content-derived id: hash of the params and every file's sha256."""
    source: DatasetSource
    """Reference source."""
    params: DataParams
    """The `data` params the dataset was built from."""
    counts: DatasetCounts
    """Split sizes."""
    files: list[DatasetFile]
    """Every data file with its sha256 and size (the manifest and SHA256SUMS excluded)."""
