"""The dataset manifest model (`artifacts/dataset/dataset_manifest.json`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geno_pipeline.config import DataParams
from geno_pipeline.documents import Document

__all__ = ["DatasetCounts", "DatasetFile", "DatasetManifest", "DatasetSource", "RecordSummary"]


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


class RecordSummary(Document):
    """One reference record: what its sequence holds and which split it fed."""

    name: str
    """Record name (the first word of its '>' line; `synthetic` for the synthetic genome)."""
    length: int = Field(ge=1)
    """Bases, N and IUPAC codes included."""
    n_bases: int = Field(ge=0)
    """Bases read as N (IUPAC ambiguity codes included)."""
    iupac_bases: int = Field(ge=0)
    """IUPAC ambiguity codes (R Y K M S W B D H V), read as N."""
    soft_masked_bases: int = Field(ge=0)
    """Lowercase (soft-masked) bases."""
    role: Literal["train+valid", "train", "valid", "excluded"]
    """Which split it fed: both (random split), only train or only valid (chromosome hold-out), or none (not in data.records)."""
    candidate_slots: int = Field(ge=0)
    """Non-overlapping N-free slots of window + flank bases in it (0 when excluded)."""
    train_windows: int = Field(ge=0)
    """Training windows drawn from it."""
    valid_windows: int = Field(ge=0)
    """Validation windows drawn from it."""


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
    records: list[RecordSummary]
    """Every record of the reference in file order. Row i of train_coords.npy / valid_coords.npy is (record index, start)."""
    files: list[DatasetFile]
    """Every data file with its sha256 and size (the manifest and SHA256SUMS excluded)."""
