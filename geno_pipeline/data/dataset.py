"""The dataset: reference -> non-overlapping train/valid windows + manifest + SHA256SUMS, and its verified loader."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geno_pipeline.checksums import check_sha256sums, is_plain_relative_name, sha256_bytes, sha256_file, write_sha256sums
from geno_pipeline.config import DataParams
from geno_pipeline.data.genome import N_CODE, Record, read_fasta, synthetic_genome
from geno_pipeline.data.manifest import DatasetCounts, DatasetFile, DatasetManifest, DatasetSource
from geno_pipeline.errors import DataError, shorten
from geno_pipeline.jsonio import atomic_write_bytes, canonical_json, read_json, replace_dir_atomically, staging_dir, write_json
from geno_pipeline.layout import Layout
from geno_pipeline.readers import read_npy
from geno_pipeline.seeding import derive_seed

__all__ = [
    "MANIFEST_NAME",
    "TRAIN_FILE",
    "VALID_FILE",
    "Dataset",
    "DatasetResult",
    "build_dataset",
    "candidate_slots",
    "check_memory",
    "dataset_problems",
    "load_dataset",
    "memory_needed",
    "npy_bytes",
    "resolve_fasta",
]

MANIFEST_NAME = "dataset_manifest.json"
TRAIN_FILE = "train_windows.npy"
VALID_FILE = "valid_windows.npy"


@dataclass(frozen=True)
class DatasetResult:
    """What the data stage built."""

    directory: Path
    manifest: DatasetManifest


@dataclass(frozen=True)
class Dataset:
    """A loaded, verified dataset: uint8 code arrays of shape [n, window + flank]."""

    train: np.ndarray
    valid: np.ndarray
    manifest: DatasetManifest
    manifest_sha256: str


def candidate_slots(records: list[Record], slot: int) -> list[tuple[int, int]]:
    """Non-overlapping (record, start) slots of `slot` bases that contain no N.

    Slots are packed left to right inside each maximal N-free run.
    """
    out: list[tuple[int, int]] = []
    for index, record in enumerate(records):
        ok = np.concatenate(([False], record.codes < N_CODE, [False]))
        edges = np.flatnonzero(np.diff(ok.astype(np.int8)))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            count = (int(end) - int(start)) // slot
            out.extend((index, int(start) + k * slot) for k in range(count))
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    """Deterministic .npy serialisation."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def resolve_fasta(fasta_path: str, root: Path) -> Path:
    """The file `data.fasta_path` names, which must lie under the project's genomes/ folder (a dependency of `data`).

    A file outside it would change without DVC noticing; a symlink inside genomes/ to a file elsewhere is fine.
    """
    genomes = Layout.for_root(root).genomes
    path = Path(os.path.normpath(Path(root) / fasta_path))
    if not path.is_relative_to(os.path.normpath(genomes)):
        raise DataError(
            f"params: data.fasta_path = {fasta_path!r} is outside {genomes}/, so `dvc repro` could not notice when the file "
            f"changes; fix: move the FASTA into genomes/ (or link it there: ln -s /abs/path/ref.fa genomes/) and set "
            "data.fasta_path: genomes/<name>"
        )
    try:
        os.stat(path)
    except FileNotFoundError:
        pass  # read_fasta names the missing file
    except OSError as exc:
        raise DataError(
            f"params: data.fasta_path = {shorten(fasta_path)!r}: {exc.strerror}; fix: point data.fasta_path at a FASTA file under genomes/"
        ) from None
    return path


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_needed(params: DataParams, fasta: Path | None = None) -> int:
    """Peak bytes the data stage needs, estimated before any work (reference codes, masks and the windows)."""
    windows = (params.train_windows + params.valid_windows) * (params.window_length + params.flank_length) * 2
    if fasta is None:
        return 4 * params.genome_length + windows
    size = fasta.stat().st_size if fasta.is_file() else 0
    uncompressed = size * 4 if fasta.suffix == ".gz" else size  # gzip compresses DNA about 4x
    return 7 * uncompressed + windows


def check_memory(params: DataParams, fasta: Path | None = None, available: int | None = None) -> None:
    """Refuse up front, naming the memory the reference would need, when this machine does not have it."""
    need = memory_needed(params, fasta)
    have = _available_memory() if available is None else available
    if have is not None and need > have:
        what = f"data.genome_length = {params.genome_length}" if fasta is None else f"the FASTA {fasta}"
        raise DataError(
            f"params: {what} needs about {need / 2**30:.1f} GiB of memory to build the dataset, but this machine has "
            f"{have / 2**30:.1f} GiB available; fix: use a smaller genome_length or reference, or a machine with more memory"
        )


def _reference(params: DataParams, root: Path) -> tuple[list[Record], DatasetSource]:
    if params.source == "synthetic":
        check_memory(params)
        codes = synthetic_genome(params.seed, params.genome_length)
        source = DatasetSource(kind="synthetic", fasta_path=None, fasta_sha256=None, records=1, reference_bases=int(codes.size))
        return [Record("synthetic", codes)], source
    assert params.fasta_path is not None  # guaranteed by DataParams validation
    path = resolve_fasta(params.fasta_path, root)
    if path.is_file():
        check_memory(params, path)
    records = read_fasta(path)
    source = DatasetSource(
        kind="fasta",
        fasta_path=params.fasta_path,
        fasta_sha256=sha256_file(path),
        records=len(records),
        reference_bases=sum(int(r.codes.size) for r in records),
    )
    return records, source


def build_windows(params: DataParams, records: list[Record]) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw disjoint train and valid windows (with flanks); returns (train, valid, candidate count)."""
    slot = params.window_length + params.flank_length
    slots = candidate_slots(records, slot)
    need = params.train_windows + params.valid_windows
    if len(slots) < need:
        raise DataError(
            f"data: the reference has {len(slots)} non-overlapping N-free slots of {slot} bases "
            f"(window_length + flank_length) but data.train_windows + data.valid_windows = {need}; "
            "fix: lower train_windows/valid_windows, window_length or flank_length, or use a longer reference"
        )
    rng = np.random.default_rng(derive_seed(params.seed, "data.windows"))
    chosen = rng.permutation(len(slots))[:need]
    train_idx = np.sort(chosen[: params.train_windows])
    valid_idx = np.sort(chosen[params.train_windows :])

    def gather(indices: np.ndarray) -> np.ndarray:
        rows = [records[slots[i][0]].codes[slots[i][1] : slots[i][1] + slot] for i in indices.tolist()]
        return np.stack(rows).astype(np.uint8)

    return gather(train_idx), gather(valid_idx), len(slots)


def build_dataset(params: DataParams, *, root: Path, out_dir: Path) -> DatasetResult:
    """Build the dataset into `out_dir` atomically (a failure leaves the previous dataset intact)."""
    records, source = _reference(params, root)
    train, valid, n_slots = build_windows(params, records)
    stage = staging_dir(out_dir)
    try:
        files: list[DatasetFile] = []
        for name, array in ((TRAIN_FILE, train), (VALID_FILE, valid)):
            data = npy_bytes(array)
            atomic_write_bytes(stage / name, data)
            files.append(DatasetFile(path=name, sha256=sha256_bytes(data), bytes=len(data)))
        window = train[:, : params.window_length]
        gc = float(np.isin(window, (1, 2)).mean())
        counts = DatasetCounts(
            train_windows=params.train_windows,
            valid_windows=params.valid_windows,
            window_length=params.window_length,
            flank_length=params.flank_length,
            candidate_slots=n_slots,
            train_gc_fraction=round(gc, 6),
        )
        identity = canonical_json({"params": params, "files": files, "source": source})
        manifest = DatasetManifest(
            dataset_id="ds-" + sha256_bytes(identity.encode())[:16],
            source=source,
            params=params,
            counts=counts,
            files=files,
        )
        write_json(stage / MANIFEST_NAME, manifest, schema="dataset_manifest")
        write_sha256sums(stage, [MANIFEST_NAME, TRAIN_FILE, VALID_FILE])
        replace_dir_atomically(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return DatasetResult(out_dir, manifest)


def dataset_problems(directory: Path) -> list[tuple[str, str]]:
    """Every integrity problem of a built dataset as (issue code, message); empty when sound."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        return [("dataset.missing", f"{manifest_path}: missing; fix: run `geno-pipeline data`")]
    try:
        manifest = DatasetManifest.model_validate(read_json(manifest_path, schema="dataset_manifest"))
    except Exception as exc:  # schema or model error -> a problem, not a crash
        return [("dataset.invalid_manifest", f"{manifest_path}: invalid ({exc})")]
    problems: list[tuple[str, str]] = []
    for entry in manifest.files:
        path = directory / entry.path
        if not is_plain_relative_name(entry.path) or "/" in entry.path:
            problems.append(("dataset.unsafe_path", f"{manifest_path}: unsafe file name {entry.path!r}"))
        elif path.is_symlink():
            problems.append(("dataset.unsafe_path", f"{path}: is a symlink"))
        elif not path.is_file():
            problems.append(("dataset.file_missing", f"{path}: listed in the manifest but missing"))
        elif sha256_file(path) != entry.sha256:
            problems.append(("dataset.checksum_mismatch", f"{path}: sha256 does not match the manifest"))
    if manifest.counts.train_windows < 1 or manifest.counts.valid_windows < 1:
        problems.append(("dataset.empty_split", f"{manifest_path}: a split is empty"))
    problems += [("dataset.checksum_mismatch", f"{directory}: {p}") for p in check_sha256sums(directory)]
    return problems


def load_dataset(directory: Path) -> Dataset:
    """Load and verify a dataset; raise `DataError` listing every problem."""
    directory = Path(directory)
    problems = dataset_problems(directory)
    if problems:
        raise DataError(
            "dataset is not usable:\n"
            + "\n".join(f"  - {m}" for _, m in problems)
            + "\nfix: rerun `geno-pipeline data` (or `dvc repro data`)"
        )
    fix = "rerun `geno-pipeline data` (or `dvc repro data`)"
    manifest = DatasetManifest.model_validate(read_json(directory / MANIFEST_NAME, error=DataError, fix=fix))
    train = read_npy(directory / TRAIN_FILE, error=DataError, fix=fix)
    valid = read_npy(directory / VALID_FILE, error=DataError, fix=fix)
    slot = manifest.counts.window_length + manifest.counts.flank_length
    for name, array, n in ((TRAIN_FILE, train, manifest.counts.train_windows), (VALID_FILE, valid, manifest.counts.valid_windows)):
        if array.dtype != np.uint8 or array.shape != (n, slot) or array.size == 0 or int(array.max()) > 3:
            raise DataError(f"{directory / name}: expected uint8 codes of shape ({n}, {slot}), got {array.dtype} {array.shape}")
    return Dataset(train, valid, manifest, sha256_file(directory / MANIFEST_NAME))
