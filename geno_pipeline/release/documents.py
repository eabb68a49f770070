"""JSON documents of the release bundle and the release report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from geno_pipeline.config import Params
from geno_pipeline.data.manifest import DatasetSource, RecordSummary
from geno_pipeline.documents import ArtifactIdentity, Document
from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.preflight.documents import PreflightOutcome
from geno_pipeline.sweep.documents import SweepSummary
from geno_pipeline.training.seeds import TorchDeterminismReport, TrainerSeeds

__all__ = [
    "ConsumedInput",
    "ProvenanceStatement",
    "ReleaseMetadata",
    "ReleaseMetrics",
    "ReleaseReport",
    "ReleaseSweep",
]


class ConsumedInput(Document):
    """A file the release stage read."""

    path: str
    """Path relative to the project root."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256."""


class ReleaseMetrics(Document):
    """metrics.json of the bundle."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    run_id: str
    """Run id."""
    steps: int = Field(ge=1)
    """Optimizer steps trained."""
    final_train_loss: float
    """Loss of the last step."""
    final_heldout_loss: float
    """Held-out prediction loss at the final step."""
    identity_baseline_heldout_loss: float
    """Held-out loss of predicting 'no change'."""
    heldout_to_baseline: float
    """final_heldout_loss / identity baseline."""
    collapse_alerts: int = Field(ge=0)
    """Alerts raised during training."""
    final_pred_var_ratio: float | None
    """Final pred_var_per_dim / target_var_per_dim."""
    final_pairwise_ratio: float | None
    """Final pairwise distance / step-0 baseline."""
    final_effective_rank: float | None
    """Final effective rank of held-out predictions."""


class ReleaseSweep(Document):
    """The seed sweep the release gate compared the released run with (release.sweep_max_ratio set)."""

    seeds: list[int]
    """Seeds of the sweep."""
    summary: SweepSummary
    """Spread across the sweep's seeds."""
    released_heldout_to_baseline: float
    """The released run's held-out / identity-baseline ratio."""
    spread_low: float
    """Sweep mean - release.sweep_spread_sigmas x std: the released ratio was at least this."""
    spread_high: float
    """Sweep mean + release.sweep_spread_sigmas x std: the released ratio was at most this."""
    max_ratio: float
    """release.sweep_max_ratio: every seed's ratio was under it."""


class ReleaseMetadata(Document):
    """metadata.json of the bundle: everything needed to know what was released and how."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    run_id: str
    """Content-derived run id."""
    package_version: str
    """geno-pipeline version."""
    source_digest: str
    """Content hash of the package source, pyproject.toml and the lock file (not the git commit)."""
    created_at: str | None
    """From SOURCE_DATE_EPOCH when set, else null (no wall-clock time in the bundle)."""
    params: Params
    """The full params."""
    params_sha256: str
    """Hash of the params the train stage read."""
    seeds: TrainerSeeds
    """Per-purpose training seeds."""
    determinism: TorchDeterminismReport
    """Reproducibility settings training applied."""
    environment: EnvironmentFingerprint
    """Environment fingerprint."""
    dataset_id: str
    """Dataset id."""
    dataset_manifest_sha256: str
    """SHA-256 of dataset_manifest.json."""
    dataset_source: DatasetSource
    """Where the reference came from: the FASTA's path and sha256 (null for the synthetic genome) and the records read."""
    dataset_records: list[RecordSummary]
    """The reference's records and the split each fed (the dataset manifest's `records`)."""
    inputs: list[ConsumedInput]
    """sha256 of every input file the release stage consumed."""
    preflight: PreflightOutcome
    """Preflight outcome."""
    collapse_status: Literal["no_alerts", "alerts_acknowledged"]
    """Final collapse observation clean, or alerts released under release.allow_collapse_alerts."""
    model_file: str
    """Weights file name."""
    sweep: ReleaseSweep | None = None
    """The seed sweep the release was gated on; null when release.sweep_max_ratio is not set."""


class ResourceDescriptor(Document):
    """in-toto ResourceDescriptor."""

    name: str | None = None
    """Name."""
    uri: str | None = None
    """URI."""
    digest: dict[str, str] | None = None
    """Digests by algorithm."""


class Subject(Document):
    """A bundle file named by the statement."""

    name: str
    """File name in the bundle."""
    digest: dict[str, str]
    """{"sha256": hex}."""


class BuildDefinition(Document):
    """SLSA v1 buildDefinition."""

    buildType: str
    """What kind of build this was."""
    externalParameters: dict[str, Any]
    """Inputs a user controls: the params."""
    internalParameters: dict[str, Any]
    """Inputs the pipeline set: seeds, determinism."""
    resolvedDependencies: list[ResourceDescriptor]
    """Source digest, dataset manifest and locked packages."""


class Builder(Document):
    """SLSA builder."""

    id: str
    """Builder id."""


class BuildMetadata(Document):
    """SLSA run metadata."""

    invocationId: str
    """Run id."""
    startedOn: str | None = None
    """SOURCE_DATE_EPOCH time, if set."""


class RunDetails(Document):
    """SLSA v1 runDetails."""

    builder: Builder
    """Who built it."""
    metadata: BuildMetadata
    """Run metadata."""


class SlsaPredicate(Document):
    """SLSA provenance v1 predicate."""

    buildDefinition: BuildDefinition
    """How it was built."""
    runDetails: RunDetails
    """The run."""


class ProvenanceStatement(Document):
    """provenance.intoto.json: an unsigned in-toto Statement v1 with a SLSA provenance v1 predicate."""

    model_config = ConfigDict(populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field("https://in-toto.io/Statement/v1", alias="_type")
    """Statement type."""
    subject: list[Subject]
    """Every other bundle file with its sha256."""
    predicateType: Literal["https://slsa.dev/provenance/v1"] = "https://slsa.dev/provenance/v1"
    """Predicate type."""
    predicate: SlsaPredicate
    """SLSA provenance."""


class ReleaseReport(Document):
    """reports/release.json."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    run_id: str
    """Run id."""
    bundle_dir: str
    """Bundle directory relative to the project root."""
    files: list[ArtifactIdentity]
    """Every bundle file (SHA256SUMS included)."""
    verify_command: str
    """How to check the bundle."""
