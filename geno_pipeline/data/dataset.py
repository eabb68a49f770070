"""The dataset: reference -> non-overlapping train/valid windows + manifest + SHA256SUMS, and its verified loader."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from geno_pipeline.checksums import check_sha256sums, is_plain_relative_name, sha256_bytes, sha256_file, write_sha256sums
from geno_pipeline.config import DataParams
from geno_pipeline.data.fasta import read_fasta
from geno_pipeline.data.genome import Reference, synthetic_reference
from geno_pipeline.data.manifest import DatasetCounts, DatasetFile, DatasetManifest, DatasetSource, RecordSummary
from geno_pipeline.data.windows import candidate_slots, draw_split, gather_windows
from geno_pipeline.errors import DataError, shorten
from geno_pipeline.hostmem import available_host_memory
from geno_pipeline.jsonio import atomic_write_bytes, canonical_json, read_json, replace_dir_atomically, staging_dir, write_json
from geno_pipeline.layout import Layout
from geno_pipeline.readers import read_npy

__all__ = [
    "MANIFEST_NAME",
    "TRAIN_COORDS_FILE",
    "TRAIN_FILE",
    "VALID_COORDS_FILE",
    "VALID_FILE",
    "Dataset",
    "DatasetResult",
    "build_dataset",
    "build_windows",
    "check_dataset_params",
    "check_memory",
    "check_record_names",
    "dataset_problems",
    "load_dataset",
    "memory_needed",
    "npy_bytes",
    "resolve_fasta",
]

MANIFEST_NAME = "dataset_manifest.json"
TRAIN_FILE = "train_windows.npy"
VALID_FILE = "valid_windows.npy"
TRAIN_COORDS_FILE = "train_coords.npy"
VALID_COORDS_FILE = "valid_coords.npy"
_READER_OVERHEAD = 96 << 20  # chunk-sized temporaries of the streaming reader, and slack


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


def memory_needed(params: DataParams, fasta: Path | None = None) -> int:
    """Peak bytes the data stage needs, estimated before any work.

    The streaming reader keeps one byte per base of the selected records plus chunk-sized temporaries, so a
    plain FASTA needs at most its size; a gzipped one is taken to hold 4 bases per byte (DNA compresses about
    3.3-4x). The slot table (16 bytes per slot) and the windows (gathered, then serialised) come on top.
    """
    slot = params.window_length + params.flank_length
    windows = (params.train_windows + params.valid_windows) * (slot * 2 + 32)
    if fasta is None:
        bases = params.genome_length
        return 4 * bases + windows  # the synthetic generator's blocks and masks
    size = fasta.stat().st_size if fasta.is_file() else 0
    bases = size * 4 if fasta.suffix in (".gz", ".bgz") else size
    return bases + 32 * (bases // slot) + windows + _READER_OVERHEAD


def max_reference_bases(params: DataParams, available: int | None) -> int | None:
    """The most bases of kept records the reader may hold on a machine with `available` bytes: what is left after the
    windows and the reader's own needs, at 1 byte per base plus the slot table's 32 bytes per slot (None: unknown)."""
    if available is None:
        return None
    slot = params.window_length + params.flank_length
    windows = (params.train_windows + params.valid_windows) * (slot * 2 + 32)
    return max((available - windows - _READER_OVERHEAD) * slot // (slot + 32), 0)


def check_memory(params: DataParams, fasta: Path | None = None, available: int | None = None) -> None:
    """Refuse up front, naming the memory the reference would need, when this machine does not have it."""
    need = memory_needed(params, fasta)
    have = available_host_memory() if available is None else available
    if have is not None and need > have:
        what = f"data.genome_length = {params.genome_length}" if fasta is None else f"the FASTA {fasta}"
        raise DataError(
            f"params: {what} needs about {need / 2**30:.1f} GiB of memory to build the dataset, but this machine has "
            f"{have / 2**30:.1f} GiB available; fix: use a smaller genome_length or reference, or a machine with more memory"
        )


def _names_list(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} records)" if len(names) > limit else f" ({len(names)} records)")


def check_record_names(params: DataParams, reference: Reference, path: Path) -> None:
    """Refuse `data.records` / `data.valid_records` names the FASTA does not have, listing the names it has."""
    have = [r.name for r in reference.records]
    known = set(have)
    for key, names in (("records", params.records), ("valid_records", params.valid_records)):
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise DataError(
                f"params: data.{key} names {', '.join(map(repr, unknown))}, which {path} does not have; its records are: "
                f"{_names_list(have)}; fix: use names from that list (the first word of each '>' line)"
            )
    if params.valid_records is not None and set(params.valid_records) >= {r.name for r in reference.selected}:
        raise DataError(
            f"params: data.valid_records holds every selected record of {path}, leaving none for training; "
            "fix: keep at least one record out of valid_records (or set data.records)"
        )


def _reference(params: DataParams, root: Path, progress: Callable[[int, int], None] | None) -> tuple[Reference, DatasetSource]:
    if params.source == "synthetic":
        check_memory(params)
        reference = synthetic_reference(params.seed, params.genome_length)
        source = DatasetSource(kind="synthetic", fasta_path=None, fasta_sha256=None, records=1, reference_bases=params.genome_length)
        return reference, source
    assert params.fasta_path is not None  # guaranteed by DataParams validation
    path = resolve_fasta(params.fasta_path, root)
    size = path.stat().st_size if path.is_file() else 0
    if path.is_file():
        check_memory(params, path)
    wanted = set(params.records) if params.records is not None else None
    reference = read_fasta(
        path,
        select=None if wanted is None else wanted.__contains__,
        progress=None if progress is None else (lambda done: progress(done, size)),
        max_bases=max_reference_bases(params, available_host_memory()),  # a gzip's inflated size is known only as it streams
    )
    check_record_names(params, reference, path)
    source = DatasetSource(
        kind="fasta",
        fasta_path=params.fasta_path,
        fasta_sha256=reference.sha256,
        records=len(reference.records),
        reference_bases=sum(r.length for r in reference.records),
    )
    return reference, source


@dataclass(frozen=True)
class Windows:
    """The drawn windows, their (record index, start) coordinates, and the per-record summary."""

    train: np.ndarray
    valid: np.ndarray
    train_coords: np.ndarray  # int64 (n, 2): index into Reference.records, start within that record
    valid_coords: np.ndarray
    candidate_slots: int
    records: list[RecordSummary]


def _not_enough_slots(params: DataParams, have: int, need: int, pool: str) -> DataError:
    slot = params.window_length + params.flank_length
    return DataError(
        f"data: the {pool} has {have} non-overlapping N-free slots of {slot} bases (window_length + flank_length) but "
        f"{need} windows are asked for (data.train_windows = {params.train_windows}, data.valid_windows = {params.valid_windows}); "
        "fix: lower train_windows/valid_windows, window_length or flank_length, or use a longer reference"
        + (" or move records between data.valid_records and the training records" if params.valid_records is not None else "")
    )


def build_windows(params: DataParams, reference: Reference) -> Windows:
    """Draw disjoint train and valid windows (with flanks) from the selected records."""
    slot = params.window_length + params.flank_length
    slots = candidate_slots(reference, slot)
    held_out = None
    if params.valid_records is None:
        if slots.count < params.train_windows + params.valid_windows:
            raise _not_enough_slots(params, slots.count, params.train_windows + params.valid_windows, "reference")
    else:
        names = set(params.valid_records)
        held_out = np.array([r.name in names for r in reference.records], dtype=bool)
        in_valid = int(np.count_nonzero(held_out[slots.record]))
        if in_valid < params.valid_windows:
            raise _not_enough_slots(params, in_valid, params.valid_windows, "validation records (data.valid_records)")
        if slots.count - in_valid < params.train_windows:
            raise _not_enough_slots(params, slots.count - in_valid, params.train_windows, "training records")
    train_idx, valid_idx = draw_split(
        slots, seed=params.seed, train_windows=params.train_windows, valid_windows=params.valid_windows, valid_records=held_out
    )
    offsets = np.array([r.offset or 0 for r in reference.records], dtype=np.int64)

    def coords(indices: np.ndarray) -> np.ndarray:
        record = slots.record[indices]
        return np.stack((record, slots.start[indices] - offsets[record]), axis=1).astype(np.int64)

    n = len(reference.records)
    per_record = [np.bincount(slots.record[i], minlength=n) for i in (np.arange(slots.count), train_idx, valid_idx)]
    summaries = [
        RecordSummary(
            name=r.name,
            length=r.length,
            n_bases=r.n_bases,
            iupac_bases=r.iupac_bases,
            soft_masked_bases=r.soft_masked_bases,
            role=_role(r.selected, held_out is not None and bool(held_out[i]), params.valid_records is not None),
            candidate_slots=int(per_record[0][i]),
            train_windows=int(per_record[1][i]),
            valid_windows=int(per_record[2][i]),
        )
        for i, r in enumerate(reference.records)
    ]
    return Windows(
        train=gather_windows(reference.codes, slots.start[train_idx], slot),
        valid=gather_windows(reference.codes, slots.start[valid_idx], slot),
        train_coords=coords(train_idx),
        valid_coords=coords(valid_idx),
        candidate_slots=slots.count,
        records=summaries,
    )


def _role(selected: bool, held_out: bool, hold_out_split: bool) -> Literal["train+valid", "train", "valid", "excluded"]:
    if not selected:
        return "excluded"
    if not hold_out_split:
        return "train+valid"
    return "valid" if held_out else "train"


def build_dataset(params: DataParams, *, root: Path, out_dir: Path, progress: Callable[[int, int], None] | None = None) -> DatasetResult:
    """Build the dataset into `out_dir` atomically (a failure leaves the previous dataset intact).

    `progress(done, total)` is called with the FASTA bytes read so far while it is read.
    """
    reference, source = _reference(params, root, progress)
    windows = build_windows(params, reference)
    del reference  # the windows are copies: free the genome before writing
    stage = staging_dir(out_dir)
    try:
        files: list[DatasetFile] = []
        arrays = (
            (TRAIN_FILE, windows.train),
            (VALID_FILE, windows.valid),
            (TRAIN_COORDS_FILE, windows.train_coords),
            (VALID_COORDS_FILE, windows.valid_coords),
        )
        for name, array in arrays:
            data = npy_bytes(array)
            atomic_write_bytes(stage / name, data)
            files.append(DatasetFile(path=name, sha256=sha256_bytes(data), bytes=len(data)))
        window = windows.train[:, : params.window_length]
        gc = float(np.isin(window, (1, 2)).mean())
        counts = DatasetCounts(
            train_windows=params.train_windows,
            valid_windows=params.valid_windows,
            window_length=params.window_length,
            flank_length=params.flank_length,
            candidate_slots=windows.candidate_slots,
            train_gc_fraction=round(gc, 6),
        )
        identity = canonical_json({"params": params, "files": files, "source": source})
        manifest = DatasetManifest(
            dataset_id="ds-" + sha256_bytes(identity.encode())[:16],
            source=source,
            params=params,
            counts=counts,
            records=windows.records,
            files=files,
        )
        write_json(stage / MANIFEST_NAME, manifest, schema="dataset_manifest")
        write_sha256sums(stage, [MANIFEST_NAME, *(name for name, _ in arrays)])
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


def check_dataset_params(directory: Path, data: DataParams) -> None:
    """The dataset at `directory` was built from `data` (the params file's `data` section), else `DataError` naming the
    keys that differ: a dataset swapped for one built from other params is not trained on or released as these. A
    manifest that is missing or unreadable is left to the stage's own dataset check, which names what is wrong."""
    fix = "rerun `geno-pipeline data` (or `dvc repro`) so the dataset matches params.yaml"
    try:
        manifest = DatasetManifest.model_validate(read_json(directory / MANIFEST_NAME, error=DataError, fix=fix))
    except (DataError, ValidationError):
        return
    if manifest.params == data:
        return
    built, asked = manifest.params.model_dump(), data.model_dump()
    keys = [k for k in asked if built.get(k) != asked[k]]
    shown = "; ".join(
        f"data.{k}: {shorten(repr(built.get(k)), 60)} in the dataset, {shorten(repr(asked[k]), 60)} in the params" for k in keys
    )
    raise DataError(f"{directory}: built from other data params ({shown}); fix: {fix}")


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
        if array.dtype != np.uint8 or array.shape != (n, slot) or array.size == 0:
            raise DataError(f"{directory / name}: expected uint8 codes of shape ({n}, {slot}), got {array.dtype} {array.shape}; fix: {fix}")
        if int(array.max()) > 3:
            row, column = (int(i) for i in np.argwhere(array > 3)[0])
            raise DataError(
                f"{directory / name}: row {row}, column {column} holds code {int(array[row, column])}; a window holds only "
                f"A=0 C=1 G=2 T=3 (windows with N are never drawn); fix: {fix}"
            )
    return Dataset(train, valid, manifest, sha256_file(directory / MANIFEST_NAME))
