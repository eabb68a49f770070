"""Error hierarchy: every expected failure is a `GenoPipelineError` with an actionable message."""

from __future__ import annotations

__all__ = [
    "EXIT_CHECKPOINT",
    "EXIT_DISTRIBUTED",
    "EXIT_INTERNAL",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_PREFLIGHT",
    "EXIT_RELEASE_GATE",
    "EXIT_STORAGE",
    "EXIT_TRAINING_STOPPED",
    "EXIT_VERIFY",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "GenoPipelineError",
    "PreflightError",
    "ReleaseError",
    "ReproCheckError",
    "SchemaValidationError",
    "StorageError",
    "TrainingCheckpointError",
    "TrainingError",
    "VerifyError",
    "WorkspaceBusyError",
    "WriterDiedError",
    "shorten",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_PREFLIGHT = 3
EXIT_TRAINING_STOPPED = 4
EXIT_CHECKPOINT = 5
EXIT_RELEASE_GATE = 6
EXIT_VERIFY = 7
EXIT_STORAGE = 8
EXIT_DISTRIBUTED = 9


def shorten(text: str, limit: int = 80) -> str:
    """`text`, or its head and tail and its length when longer than `limit` (over-long paths in messages)."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-(limit // 4) :]} ({len(text)} characters)"


class GenoPipelineError(Exception):
    """Base class for errors the CLI reports as one clear message (no traceback)."""

    exit_code: int = EXIT_INVALID


class ConfigError(GenoPipelineError):
    """params.yaml (or an override) is invalid; the message lists every problem."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class SchemaValidationError(GenoPipelineError):
    """A JSON document does not match its schema."""


class DataError(GenoPipelineError):
    """The dataset source or the built dataset is unusable."""


class ChecksumError(GenoPipelineError):
    """A SHA256SUMS file is malformed or does not match the files."""


class PreflightError(GenoPipelineError):
    """Preflight could not produce its report."""


class TrainingError(GenoPipelineError):
    """Training cannot start or could not finish."""


class WriterDiedError(TrainingError):
    """The checkpoint writer process died (killed, out of memory) before finishing its job: training stopped early."""

    exit_code = EXIT_TRAINING_STOPPED


class TrainingCheckpointError(TrainingError):
    """A checkpoint is missing, corrupt, or bound to different inputs."""

    exit_code = EXIT_CHECKPOINT


class ReleaseError(GenoPipelineError):
    """A release gate failed or the bundle could not be written."""

    exit_code = EXIT_RELEASE_GATE


class VerifyError(GenoPipelineError):
    """A release bundle failed verification."""

    exit_code = EXIT_VERIFY


class ReproCheckError(GenoPipelineError):
    """The reproducibility check could not run."""


class WorkspaceBusyError(GenoPipelineError):
    """Another geno-pipeline run holds this workspace's lock."""


class StorageError(GenoPipelineError):
    """A file could not be written or read back: read-only directory, full disk, permissions. Nothing is half-written."""

    exit_code = EXIT_STORAGE


class OutputError(StorageError):
    """The command's console output (stdout) could not be written: a full disk or device behind a redirection, a
    closed pipe. Files the command writes are complete or untouched, as always."""


class DistributedError(TrainingError):
    """A multi-process run could not start, or a worker died or hung past `runtime.dist_timeout_s`; the job stopped."""

    exit_code = EXIT_DISTRIBUTED
