"""The bad-input corpus: every malformed params, FASTA, dataset, environment, checkpoint, release and JSON file.

Each case copies a finished tiny project, breaks one input, runs one command in process and asserts:
the exit code from the README's table, no traceback, a message naming the file or key, and that every
declared output is byte-identical before and after (nothing half-written, nothing removed).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from geno_pipeline.checksums import sha256_file, write_sha256sums
from geno_pipeline.cli import main
from geno_pipeline.config import load_params
from geno_pipeline.errors import VerifyError
from geno_pipeline.release.loader import load_released_model
from geno_pipeline.tensorfile import serialize_tensors
from tests.conftest import TINY, copy_project, write_params
from tools.reliability import declared_outputs

REPO = Path(__file__).resolve().parent.parent
CKPT = "artifacts/train/checkpoints/step-000012"
DATASET = "artifacts/dataset"
RELEASE = "artifacts/release"


@pytest.fixture(scope="module")
def finished(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's tiny pipeline, run to a release."""
    return copy_project(tiny_released, tmp_path_factory.mktemp("finished") / "project")


# ------------------------------------------------------------------ mutation helpers


def text(rel: str, content: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)

    return mutate


def raw(rel: str, content: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)

    return mutate


def params(**sections: dict) -> Callable[[Path], None]:
    return lambda root: write_params(root, **sections) and None


def params_text(transform: Callable[[str], str]) -> Callable[[Path], None]:
    return lambda root: (root / "params.yaml").write_text(transform(TINY.read_text())) and None


def fasta(content: bytes, name: str = "ref.fa", **data: object) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        write_params(root, data={"source": "fasta", "fasta_path": f"genomes/{name}", **data})
        (root / "genomes" / name).write_bytes(content)

    return mutate


def _resum(directory: Path) -> None:
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    write_sha256sums(directory, names)


def dataset(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """Edit a dataset file, then recompute the manifest's entries and SHA256SUMS so every digest passes."""

    def mutate(root: Path) -> None:
        directory = root / DATASET
        edit(directory)
        manifest = json.loads((directory / "dataset_manifest.json").read_text())
        for entry in manifest["files"]:
            entry["sha256"] = sha256_file(directory / entry["path"])
            entry["bytes"] = (directory / entry["path"]).stat().st_size
        (directory / "dataset_manifest.json").write_text(json.dumps(manifest))
        _resum(directory)

    return mutate


def npy(array: np.ndarray, name: str = "train_windows.npy", allow_pickle: bool = False) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        np.save(directory / name, array, allow_pickle=allow_pickle)

    return dataset(edit)


def checkpoint(edit: Callable[[Path, dict], None]) -> Callable[[Path], None]:
    """Edit a checkpoint's state (and files), then recompute the tensor digests and SHA256SUMS so every digest passes."""

    def mutate(root: Path) -> None:
        directory = root / CKPT
        state = json.loads((directory / "state.json").read_text())
        edit(directory, state)
        state["tensors"] = {n: sha256_file(directory / n) if (directory / n).is_file() else d for n, d in state["tensors"].items()}
        (directory / "state.json").write_text(json.dumps(state))
        _resum(directory)

    return mutate


def state_field(key: str, value: object) -> Callable[[Path], None]:
    return checkpoint(lambda _d, state: state.__setitem__(key, value))


def model_tensors(change: Callable[[dict[str, torch.Tensor]], None], name: str = "model.safetensors") -> Callable[[Path], None]:
    """Edit a checkpoint's tensors, keeping the file's metadata, then re-sum."""

    def edit(directory: Path, _state: dict) -> None:
        tensors = load_file(directory / name)
        with safe_open(directory / name, "pt") as handle:
            metadata = handle.metadata()
        change(tensors)
        (directory / name).write_bytes(serialize_tensors(tensors, metadata))

    return checkpoint(edit)


def moved(rel: str, to: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).rename(root / to)

    return mutate


def _moved_out_and_linked(root: Path) -> None:
    elsewhere = root.parent / "elsewhere"
    (root / CKPT).rename(elsewhere)
    (root / CKPT).symlink_to(elsewhere, target_is_directory=True)


def _logs_of_step_8(_directory: Path, state: dict) -> None:
    earlier = json.loads((_directory.parent / "step-000008" / "state.json").read_text())
    state["logs"] = earlier["logs"]


def _first_nan(tensors: dict[str, torch.Tensor]) -> None:
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))


def _adam_steps(tensors: dict[str, torch.Tensor]) -> None:
    for name in [n for n in tensors if n.endswith(".step")]:
        tensors[name] = tensors[name] + 1


def bundle(edit: Callable[[Path], None], resum: bool = True) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        edit(root / RELEASE)
        if resum:
            _resum(root / RELEASE)

    return mutate


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        (root / rel).symlink_to(target)

    return mutate


def remove(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return mutate


def truncate(rel: str, size: int) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes((root / rel).read_bytes()[:size]) and None


def flip_byte(rel: str, offset: int = -20) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        data = bytearray((root / rel).read_bytes())
        data[offset] ^= 0xFF
        (root / rel).write_bytes(bytes(data))

    return mutate


def both(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for m in mutations:
            m(root)

    return mutate


def _corrupt_gzip_middle() -> bytes:
    data = bytearray(gzip.compress((">r\n" + "ACGT" * 20000 + "\n").encode(), mtime=0))
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0x5A
    return bytes(data)


def _truncated_gzip() -> bytes:
    rng = np.random.default_rng(0)
    data = gzip.compress(b">r\n" + bytes(rng.choice(list(b"ACGT"), 40000).astype(np.uint8)), mtime=0)
    return data[: len(data) // 2]


def _env_edit(key: str, value: object) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "artifacts/preflight/environment.json"
        document = json.loads(path.read_text())
        document[key] = value
        path.write_text(json.dumps(document))

    return mutate


def _huge_npy_header(directory: Path) -> None:
    """A .npy header claiming 10^12 rows in front of a few bytes: loading it as it says would allocate ~96 TB."""
    import io

    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 96)})
    (directory / "train_windows.npy").write_bytes(stream.getvalue() + b"\x00" * 96)


def _put_code(directory: Path, code: int) -> None:
    windows = np.load(directory / "train_windows.npy")
    windows[3, 5] = code
    np.save(directory / "train_windows.npy", windows)


def _group_rename(_directory: Path, state: dict) -> None:
    state["optimizer_groups"][0]["group_name"] = "renamed"


def _add_tensor(tensors: dict[str, torch.Tensor]) -> None:
    tensors["predictor.extra"] = torch.zeros(3)


def _reshape_first(tensors: dict[str, torch.Tensor]) -> None:
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(tensors[name].numel() + 1)


def _rename_tensor_file(directory: Path, state: dict) -> None:
    state["tensors"] = {"weights.safetensors": state["tensors"]["model.safetensors"], **{"optimizer.safetensors": "0" * 64}}


def _truncate_ckpt_model(directory: Path, _state: dict) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _bad_subject(directory: Path) -> None:
    path = directory / "provenance.intoto.json"
    document = json.loads(path.read_text())
    document["subject"][0]["digest"]["sha256"] = "0" * 64
    path.write_text(json.dumps(document))


def _tiny_model() -> dict:
    return {"state_dim": 16, "hidden_dim": 32, "conv_channels": 8, "kernel_size": 5, "segments": 4, "residual": True}


def _card_as_symlink(directory: Path) -> None:
    (directory / "MODEL_CARD.md").unlink()
    (directory / "MODEL_CARD.md").symlink_to("metrics.json")


# ------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[Path], None]
    argv: tuple[str, ...]
    code: int
    needle: str  # must appear in the output, naming the file or key


P = "params.yaml"
_HUGE_MODEL = {"state_dim": 16, "hidden_dim": 1 << 16, "conv_channels": 8, "kernel_size": 5, "segments": 4, "residual": True}
DUP = "data:\n  seed: 1\n"
CASES = [
    # ---------------- params: the file itself
    Case("params-binary", raw(P, b"\x89PNG\r\n\x1a\n\x00\x00\xff"), ("train",), 2, "params.yaml: not UTF-8"),
    Case("params-utf16", raw(P, TINY.read_text().encode("utf-16")), ("data",), 2, "params.yaml: not UTF-8"),
    Case("params-nul", raw(P, TINY.read_bytes() + b"\x00"), ("data",), 2, "params.yaml: contains NUL"),
    Case("params-directory", lambda r: (r / "pdir").mkdir(), ("data", "--params", "{root}/pdir"), 2, "pdir: is a directory"),
    Case("params-missing", lambda r: None, ("train", "--params", "{root}/nope.yaml"), 2, "nope.yaml: file not found"),
    Case(
        "params-path-nul", lambda r: None, ("data", "--params", "{root}/a\x00b.yaml"), 2, "a\\x00b.yaml: a path cannot contain a NUL byte"
    ),
    Case(
        "params-path-surrogate",
        lambda r: None,
        ("train", "--params", "{root}/a\ud800.yaml"),
        2,
        "a\\ud800.yaml: the path holds a character",
    ),
    Case("params-empty", text(P, ""), ("data",), 2, "params.yaml: empty params file"),
    Case("params-comments-only", text(P, "# nothing\n"), ("train",), 2, "params.yaml: empty params file"),
    Case("params-missing-sections", text(P, "data:\n  seed: 1\n"), ("data",), 2, "runtime: missing section"),
    Case("params-duplicate-section", params_text(lambda t: t + DUP), ("data",), 2, "duplicate key 'data'"),
    Case(
        "params-duplicate-key",
        params_text(lambda t: t.replace("  seed: 5\n", "  seed: 5\n  seed: 6\n")),
        ("train",),
        2,
        "duplicate key 'seed'",
    ),
    Case("params-invalid-yaml", params_text(lambda t: t + "extra: [1, 2\n"), ("data",), 2, "params.yaml: not valid YAML"),
    Case("params-tab-indent", params_text(lambda t: t.replace("  seed: 3", "\tseed: 3")), ("data",), 2, "params.yaml: not valid YAML"),
    Case("params-top-list", text(P, "- a\n- b\n"), ("data",), 2, "top level must be a mapping"),
    Case("params-top-scalar", text(P, "42\n"), ("release",), 2, "top level must be a mapping"),
    Case("params-mapping-key", params_text(lambda t: t + "? [a, b]\n: 1\n"), ("data",), 2, "a mapping key must be a plain value"),
    # ---------------- params: values
    Case("params-unknown-section", params(extra={"a": 1}), ("data",), 2, "extra: unknown key"),
    Case("params-unknown-key", params(data={"colour": 1}), ("data",), 2, "data.colour: unknown key"),
    Case("params-lr-exponent", params_text(lambda t: t.replace("lr: 0.003", "lr: 3e-3")), ("train",), 2, "write 0.003 or 3.0e-3"),
    Case(
        "params-lr-nan", params_text(lambda t: t.replace("lr: 0.003", "lr: .nan")), ("train",), 2, "train.lr = nan: is not a finite number"
    ),
    Case("params-lr-inf", params_text(lambda t: t.replace("lr: 0.003", "lr: .inf")), ("train",), 2, "train.lr = inf"),
    Case("params-lr-negative", params(train={"lr": -1.0}), ("train",), 2, "train.lr = -1.0"),
    Case("params-steps-text", params(train={"steps": "ten"}), ("train",), 2, "train.steps = 'ten'"),
    Case("params-steps-exponent", params_text(lambda t: t.replace("steps: 12", "steps: 1e3")), ("train",), 2, "write the integer 1000"),
    Case("params-steps-bool", params(train={"steps": True}), ("train",), 2, "train.steps = True"),
    Case("params-batch-zero", params(train={"batch_size": 0}), ("train",), 2, "train.batch_size = 0"),
    Case("params-segments", params(train={"model": {**_tiny_model(), "segments": 7}}), ("preflight",), 3, "train.model.segments = 7"),
    Case("params-flank-short", params(data={"flank_length": 12}), ("train",), 2, "data.flank_length = 12: is too short"),
    Case(
        "params-cross-both",
        params(data={"flank_length": 5}, train={"model": {**_tiny_model(), "segments": 5}}),
        ("data",),
        2,
        "2 problems",
    ),
    Case("params-warmup", params(train={"warmup_steps": 12}), ("train",), 2, "train.warmup_steps = 12"),
    Case("params-kernel-even", params(train={"model": {**_tiny_model(), "kernel_size": 4}}), ("train",), 2, "kernel_size = 4: must be odd"),
    Case("params-edit-unknown", params(train={"edit_type_weights": {"XYZ": 1.0}}), ("train",), 2, "unknown entry 'XYZ'"),
    Case("params-edit-zero", params(train={"edit_type_weights": {"SNV": 0.0}}), ("train",), 2, "edit_type_weights.SNV = 0.0"),
    Case(
        "params-edit-empty",
        params_text(
            lambda t: t.replace("edit_type_weights: {SNV: 0.40, INS: 0.20, DEL: 0.20, MNV: 0.10, INDEL: 0.10}", "edit_type_weights: {}")
        ),
        ("train",),
        2,
        "must not be empty",
    ),
    Case("params-rollout-zero", params(train={"rollout_step_mix": {0: 1.0}}), ("train",), 2, "rollout length K must be >= 1"),
    Case("params-device", params(runtime={"device": "gpu"}), ("train",), 2, "runtime.device = 'gpu'"),
    Case("params-threads-zero", params(runtime={"cpu_threads": 0}), ("train",), 2, "runtime.cpu_threads = 0"),
    Case("params-schedule", params(train={"schedule": "linear"}), ("train",), 2, "train.schedule = 'linear'"),
    Case("params-on-alert", params(collapse={"on_alert": "stop"}), ("train",), 2, "collapse.on_alert = 'stop'"),
    Case("params-vram-negative", params(preflight={"min_vram_gib": -1.0}), ("release",), 2, "preflight.min_vram_gib = -1.0"),
    Case("params-valid-zero", params(data={"valid_windows": 0}), ("data",), 2, "data.valid_windows = 0"),
    Case("params-window-small", params(data={"window_length": 8}), ("data",), 2, "data.window_length = 8"),
    Case("params-genome-short", params(data={"genome_length": 1000}), ("data",), 2, "data.genome_length = 1000"),
    Case(
        "dataset-npy-huge-header", dataset(_huge_npy_header), ("train",), 2, "train_windows.npy: its header describes (1000000000000, 96)"
    ),
    Case("dataset-window-with-n", dataset(lambda d: _put_code(d, 4)), ("train",), 2, "holds code 4; a window holds only A=0 C=1 G=2 T=3"),
    Case("params-genome-huge", params(data={"genome_length": 10**11}), ("data",), 2, "GiB of memory"),
    Case("params-genome-absurd", params(data={"genome_length": 10**14}), ("data",), 2, "data.genome_length = 100000000000000"),
    Case("params-steps-absurd", params(train={"steps": 2**70}), ("train",), 2, "train.steps = 1180591620717411303424"),
    Case("params-seed-64-bit", params(train={"seed": 2**64}), ("train",), 2, "train.seed = 18446744073709551616"),
    Case(
        "params-timeout-absurd", params(runtime={"dist_timeout_s": 10**20}), ("train",), 2, "runtime.dist_timeout_s = 100000000000000000000"
    ),
    Case("params-threads-absurd", params(runtime={"cpu_threads": 100000}), ("preflight",), 3, "runtime.cpu_threads = 100000"),
    Case("params-workers-absurd", params(runtime={"nproc_per_node": 1000}), ("train",), 2, "runtime.nproc_per_node = 1000"),
    Case("params-hidden-absurd", params(train={"model": {**_tiny_model(), "hidden_dim": 10**6}}), ("train",), 2, "hidden_dim = 1000000"),
    Case("params-fasta-no-path", params(data={"source": "fasta"}), ("data",), 2, "data.fasta_path = None"),
    Case(
        "params-fasta-outside",
        params(data={"source": "fasta", "fasta_path": "../ref.fa"}),
        ("data",),
        2,
        "data.fasta_path = '../ref.fa' is outside",
    ),
    Case("params-fasta-absolute", params(data={"source": "fasta", "fasta_path": "/etc/hostname"}), ("data",), 2, "is outside"),
    Case("params-fasta-too-long", params(data={"source": "fasta", "fasta_path": "genomes/" + "a" * 5000}), ("data",), 2, "too long"),
    Case("validate-params-binary", raw(P, b"\xff\xfe\x00"), ("validate", "{root}/params.yaml"), 2, "params.yaml: not UTF-8"),
    Case("validate-params-invalid-yaml", text(P, "a: [\n"), ("validate", "{root}/params.yaml"), 2, "not valid YAML"),
    # ---------------- FASTA
    Case("fasta-missing", params(data={"source": "fasta", "fasta_path": "genomes/nope.fa"}), ("data",), 2, "nope.fa: FASTA file not found"),
    Case("fasta-empty", fasta(b""), ("data",), 2, "ref.fa: empty FASTA"),
    Case("fasta-invalid-char", fasta(b">r\nACGTXACGT\n"), ("data",), 2, "ref.fa: line 2, column 5: invalid character 'X'"),
    Case("fasta-before-header", fasta(b"ACGT\n>r\nACGT\n"), ("data",), 2, "sequence before the first '>' header"),
    Case("fasta-empty-record", fasta(b">a\n>b\nACGT\n"), ("data",), 2, "record 'a' (line 1) has no sequence"),
    Case("fasta-gzip-corrupt-middle", fasta(_corrupt_gzip_middle(), "ref.fa.gz"), ("data",), 2, "ref.fa.gz: corrupt gzip"),
    Case("fasta-gzip-truncated", fasta(_truncated_gzip(), "ref.fa.gz"), ("data",), 2, "ref.fa.gz: truncated gzip"),
    Case("fasta-gzip-binary", fasta(gzip.compress(bytes(range(256))), "ref.fa.gz"), ("data",), 2, "ref.fa.gz: line"),
    Case("fasta-binary", fasta(b">r\n\x00\x01\x02\xff\n"), ("data",), 2, "invalid character"),
    Case(
        "fasta-directory",
        both(params(data={"source": "fasta", "fasta_path": "genomes/dir"}), lambda r: (r / "genomes/dir").mkdir()),
        ("data",),
        2,
        "dir: is a directory",
    ),
    Case(
        "fasta-dangling-link",
        both(params(data={"source": "fasta", "fasta_path": "genomes/l.fa"}), symlink("genomes/l.fa", "/nonexistent/x.fa")),
        ("data",),
        2,
        "l.fa: FASTA file not found",
    ),
    Case("fasta-too-few-slots", fasta(b">r\n" + b"ACGT" * 50 + b"\n"), ("data",), 2, "non-overlapping N-free slots"),
    Case("fasta-all-n", fasta(b">r\n" + b"N" * 40000 + b"\n"), ("data",), 2, "non-overlapping N-free slots"),
    Case("fasta-utf16", fasta(">r\nACGT\n".encode("utf-16")), ("data",), 2, "ref.fa: line 1"),
    Case("fasta-duplicate-record", fasta(b">a x\nACGT\n>a y\nACGT\n"), ("data",), 2, "line 3: record name 'a' is used again"),
    Case("fasta-gzip-trailing-garbage", fasta(gzip.compress(b">r\nACGT\n") + b"junk", "ref.fa.gz"), ("data",), 2, "not gzip"),
    Case("fasta-dash-in-record", fasta(b">r1\nACGT\n>r2\nAC-GT\n"), ("data",), 2, "line 4, column 3: invalid character '-' in record 'r2'"),
    Case(
        "fasta-unknown-record",
        fasta(b">chr1\nACGT\n>chr2\nACGT\n", records=["chr1", "chrM"]),
        ("data",),
        2,
        "data.records names 'chrM', which",
    ),
    Case(
        "fasta-unknown-valid-record",
        fasta(b">chr1\nACGT\n>chr2\nACGT\n", valid_records=["chrX"]),
        ("data",),
        2,
        "its records are: chr1, chr2 (2 records)",
    ),
    Case("params-records-synthetic", params(data={"records": ["chr1"]}), ("data",), 2, "selects FASTA records, but source is not 'fasta'"),
    Case("params-records-empty", params(data={"records": []}), ("data",), 2, "data.records = []"),
    Case("params-records-not-list", params(data={"records": "chr1"}), ("data",), 2, "data.records = 'chr1'"),
    # ---------------- dataset
    Case("dataset-missing", remove(DATASET), ("train",), 2, "dataset_manifest.json: missing"),
    Case("dataset-manifest-missing", remove(f"{DATASET}/dataset_manifest.json"), ("train",), 2, "dataset_manifest.json: missing"),
    Case("dataset-manifest-not-json", text(f"{DATASET}/dataset_manifest.json", "{nope"), ("train",), 2, "dataset_manifest.json: invalid"),
    Case(
        "dataset-manifest-binary", raw(f"{DATASET}/dataset_manifest.json", b"\xff\xd8\xff"), ("train",), 2, "dataset_manifest.json: invalid"
    ),
    Case(
        "dataset-object-array",
        npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
        ("train",),
        2,
        "train_windows.npy: holds Python objects, not numbers",
    ),
    Case(
        "dataset-npy-truncated",
        dataset(lambda d: (d / "valid_windows.npy").write_bytes((d / "valid_windows.npy").read_bytes()[:90])),
        ("train",),
        2,
        "valid_windows.npy: not a numeric .npy",
    ),
    Case("dataset-npy-dtype", npy(np.zeros((96, 96), dtype=np.int64)), ("train",), 2, "train_windows.npy: expected uint8"),
    Case(
        "dataset-npy-shape",
        npy(np.zeros((10, 96), dtype=np.uint8)),
        ("train",),
        2,
        "train_windows.npy: expected uint8 codes of shape (96, 96)",
    ),
    Case("dataset-npy-codes", npy(np.full((96, 96), 9, dtype=np.uint8)), ("train",), 2, "train_windows.npy: row 0, column 0 holds code 9"),
    Case(
        "dataset-file-deleted",
        remove(f"{DATASET}/valid_windows.npy"),
        ("train",),
        2,
        "valid_windows.npy: listed in the manifest but missing",
    ),
    Case("dataset-tampered", flip_byte(f"{DATASET}/train_windows.npy"), ("train",), 2, "train_windows.npy: sha256 does not match"),
    Case("dataset-sums-edited", text(f"{DATASET}/SHA256SUMS", "not a sums line\n"), ("train",), 2, "SHA256SUMS"),
    # ---------------- environment fingerprint
    Case("environment-binary", raw("artifacts/preflight/environment.json", b"\x00\xff\xfe"), ("train",), 2, "environment.json: not UTF-8"),
    Case("environment-not-json", text("artifacts/preflight/environment.json", "{"), ("train",), 2, "environment.json: not valid JSON"),
    Case(
        "environment-schema",
        text("artifacts/preflight/environment.json", '{"a": 1}'),
        ("train",),
        2,
        "environment.json does not match schema",
    ),
    Case("environment-missing", remove("artifacts/preflight/environment.json"), ("train",), 2, "environment.json: missing"),
    Case("environment-other-class", _env_edit("torch_version", "0.0.1"), ("train",), 2, "torch_version: preflight '0.0.1'"),
    # ---------------- checkpoints (digests recomputed so they pass)
    Case(
        "ckpt-missing-tensor-file",
        checkpoint(_rename_tensor_file),
        ("train", "--resume", "auto"),
        5,
        "names tensor files ['optimizer.safetensors', 'weights.safetensors']",
    ),
    Case(
        "ckpt-truncated-tensors",
        checkpoint(_truncate_ckpt_model),
        ("train", "--resume", "auto"),
        5,
        "model.safetensors: not a readable safetensors",
    ),
    Case(
        "ckpt-step-999",
        both(state_field("step", 999), moved(CKPT, "artifacts/train/checkpoints/step-000999")),
        ("train", "--resume", "auto"),
        5,
        "step 999 is outside 1..train.steps (12)",
    ),
    Case(
        "ckpt-step-0",
        both(state_field("step", 0), moved(CKPT, "artifacts/train/checkpoints/step-000000")),
        ("train", "--resume", "{root}/artifacts/train/checkpoints/step-000000"),
        5,
        "step 0 is outside",
    ),
    # ---------------- checkpoints that contradict themselves, their folder, their logs or the params
    Case(
        "ckpt-step-of-another-folder",
        state_field("step", 4),
        ("train", "--resume", "auto"),
        5,
        "state.json says step 4:\n  - the checkpoint of step 4 is step-000004, not step-000012",
    ),
    Case(
        "ckpt-renamed-folder",
        moved(CKPT, "artifacts/train/checkpoints/step-000011"),
        ("train", "--resume", "auto"),
        5,
        "the checkpoint of step 12 is step-000012, not step-000011",
    ),
    Case(
        "ckpt-renamed-folder-by-path",
        moved(CKPT, "artifacts/train/checkpoints/mine"),
        ("train", "--resume", "{root}/artifacts/train/checkpoints/mine"),
        5,
        "is step-000012, not mine",
    ),
    Case(
        "ckpt-symlinked-folder",
        _moved_out_and_linked,
        ("train", "--resume", "auto"),
        5,
        "step-000012 is a symbolic link, not a file of its own",
    ),
    Case(
        "ckpt-initial-lr",
        checkpoint(lambda _d, s: s["optimizer_groups"][0].__setitem__("initial_lr", 0.3)),
        ("train", "--resume", "auto"),
        5,
        "state.json optimizer_groups[decay].initial_lr = 0.3, this run's is 0.003",
    ),
    Case(
        "ckpt-lr-off-schedule",
        checkpoint(lambda _d, s: s["optimizer_groups"][1].__setitem__("lr", 0.003)),
        ("train", "--resume", "auto"),
        5,
        "state.json optimizer_groups[no_decay].lr = 0.003, the schedule's at step 12 is",
    ),
    Case(
        "ckpt-weight-decay",
        checkpoint(lambda _d, s: s["optimizer_groups"][1].__setitem__("weight_decay", 0.05)),
        ("train", "--resume", "auto"),
        5,
        "optimizer_groups[no_decay].weight_decay = 0.05, this run's is 0.0",
    ),
    Case(
        "ckpt-rng-overflow",
        checkpoint(lambda _d, s: s["sampler"]["state"].__setitem__("state", 1 << 200)),
        ("train", "--resume", "auto"),
        5,
        "state.json does not match schema",
    ),
    Case(
        "ckpt-rng-flag",
        checkpoint(lambda _d, s: s["sampler"].__setitem__("has_uint32", 7)),
        ("train", "--resume", "auto"),
        5,
        "state.json does not match schema",
    ),
    Case(
        "ckpt-rng-even-increment",
        checkpoint(lambda _d, s: s["sampler"]["state"].__setitem__("inc", s["sampler"]["state"]["inc"] + 1)),
        ("train", "--resume", "auto"),
        5,
        "sampler.state.inc is even",
    ),
    Case("ckpt-nan-weights", model_tensors(_first_nan), ("train", "--resume", "auto"), 5, "holds non-finite values"),
    Case(
        "ckpt-adam-step-count",
        model_tensors(_adam_steps, "optimizer.safetensors"),
        ("train", "--resume", "auto"),
        5,
        "counts 13 steps, the state says step 12",
    ),
    Case(
        "ckpt-tensors-of-another-step",
        checkpoint(lambda d, _s: shutil.copy(d.parent / "step-000008" / "model.safetensors", d / "model.safetensors")),
        ("train", "--resume", "auto"),
        5,
        "model.safetensors: metadata step = '8', state.json says '12'",
    ),
    Case(
        "ckpt-logs-of-another-step",
        checkpoint(_logs_of_step_8),
        ("train", "--resume", "auto"),
        5,
        "metrics.jsonl: the prefix the checkpoint of step 12 recorded ends at step 8",
    ),
    Case(
        "ckpt-nan-baseline",
        state_field("monitor_baseline_pairwise", -1.0),
        ("train", "--resume", "auto"),
        5,
        "monitor_baseline_pairwise = -1.0; it is a finite distance > 0",
    ),
    Case("ckpt-steps-total", state_field("steps_total", 99), ("train", "--resume", "auto"), 5, "steps_total: checkpoint has 99"),
    Case(
        "ckpt-package-version",
        checkpoint(lambda _d, s: s["bindings"].__setitem__("package_version", "0.0.0")),
        ("train", "--resume", "auto"),
        5,
        "package_version: checkpoint has '0.0.0'",
    ),
    Case(
        "ckpt-params-key",
        params(train={"lr": 0.004}),
        ("train", "--resume", "auto"),
        5,
        "params train.lr: checkpoint has 0.003, this run has 0.004",
    ),
    Case("ckpt-tensor-shape", model_tensors(_reshape_first), ("train", "--resume", "auto"), 5, "model.safetensors: tensor"),
    Case(
        "ckpt-extra-tensor", model_tensors(_add_tensor), ("train", "--resume", "auto"), 5, "tensor 'predictor.extra' is not in this model"
    ),
    Case("ckpt-optimizer-groups", checkpoint(_group_rename), ("train", "--resume", "auto"), 5, "optimizer groups"),
    Case(
        "ckpt-state-not-json",
        both(text(f"{CKPT}/state.json", "{"), lambda r: _resum(r / CKPT)),
        ("train", "--resume", "auto"),
        5,
        "state.json: not valid JSON",
    ),
    Case("ckpt-state-schema", state_field("run_id", 7), ("train", "--resume", "auto"), 5, "state.json does not match schema"),
    Case(
        "ckpt-state-binary",
        both(raw(f"{CKPT}/state.json", b"\xff\x00"), lambda r: _resum(r / CKPT)),
        ("train", "--resume", "auto"),
        5,
        "state.json: not UTF-8",
    ),
    Case(
        "ckpt-tampered",
        flip_byte(f"{CKPT}/optimizer.safetensors"),
        ("train", "--resume", "auto"),
        5,
        "optimizer.safetensors: sha256 mismatch",
    ),
    Case("ckpt-not-a-checkpoint", lambda r: None, ("train", "--resume", "{root}/artifacts/train"), 5, "not a checkpoint (no state.json)"),
    Case(
        "ckpt-log-prefix",
        truncate("artifacts/train/metrics.jsonl", 10),
        ("train", "--resume", "auto"),
        5,
        "metrics.jsonl: does not start with",
    ),
    # ---------------- absurd sizes: refused up front by the memory budget, nothing removed
    Case("train-memory-hidden-dim", params(train={"model": _HUGE_MODEL}), ("train",), 2, "training needs about"),
    Case("preflight-memory-hidden-dim", params(train={"model": _HUGE_MODEL}), ("preflight",), 3, "memory.insufficient"),
    Case(
        "train-memory-batch",
        params(train={"batch_size": 1 << 20, "micro_batches": 1, "model": {**_HUGE_MODEL, "hidden_dim": 32, "conv_channels": 4096}}),
        ("train",),
        2,
        "largest parts per worker: batch activations",
    ),
    # ---------------- release gates
    Case("release-train-report-binary", raw("reports/train.json", b"\xff\xfe"), ("release",), 2, "train.json: not UTF-8"),
    Case("release-train-report-missing", remove("reports/train.json"), ("release",), 6, "train.json is missing"),
    Case("release-outcome-not-json", text("artifacts/preflight/outcome.json", "[}"), ("release",), 2, "outcome.json: not valid JSON"),
    Case("release-params-changed", params(train={"lr": 0.004}), ("release",), 6, "params unchanged since training"),
    Case(
        "release-model-truncated",
        truncate("artifacts/train/model.safetensors", 64),
        ("release",),
        6,
        "model.safetensors: not a readable safetensors",
    ),
    # ---------------- verify (exit 7, every problem listed)
    Case("verify-tampered", flip_byte(f"{RELEASE}/model.safetensors"), ("verify", "{root}/" + RELEASE), 7, "model.safetensors"),
    Case("verify-extra-file", text(f"{RELEASE}/extra.txt", "x"), ("verify", "{root}/" + RELEASE), 7, "extra.txt"),
    Case("verify-missing-file", remove(f"{RELEASE}/MODEL_CARD.md"), ("verify", "{root}/" + RELEASE), 7, "MODEL_CARD.md"),
    Case(
        "verify-empty-extra-dir",
        lambda r: (r / RELEASE / "extra").mkdir(),
        ("verify", "{root}/" + RELEASE),
        7,
        "extra: empty directory, not listed in SHA256SUMS",
    ),
    Case("verify-listed-symlink", bundle(_card_as_symlink, resum=False), ("verify", "{root}/" + RELEASE), 7, "MODEL_CARD.md"),
    Case(
        "verify-sums-malformed", text(f"{RELEASE}/SHA256SUMS", "zzz  model.safetensors\n"), ("verify", "{root}/" + RELEASE), 7, "SHA256SUMS"
    ),
    Case(
        "verify-metadata-not-json",
        bundle(lambda d: (d / "metadata.json").write_text("{")),
        ("verify", "{root}/" + RELEASE),
        7,
        "metadata.json: not valid JSON",
    ),
    Case(
        "verify-metadata-binary",
        bundle(lambda d: (d / "metadata.json").write_bytes(b"\xff\xfe\x00")),
        ("verify", "{root}/" + RELEASE),
        7,
        "metadata.json: not valid JSON",
    ),
    Case(
        "verify-metadata-array",
        bundle(lambda d: (d / "metadata.json").write_text("[]")),
        ("verify", "{root}/" + RELEASE),
        7,
        "metadata.json does not match schema",
    ),
    Case("verify-provenance-subject", bundle(_bad_subject), ("verify", "{root}/" + RELEASE), 7, "provenance.intoto.json: subject"),
    Case(
        "verify-model-truncated",
        bundle(lambda d: (d / "model.safetensors").write_bytes(b"\x01\x02")),
        ("verify", "{root}/" + RELEASE),
        7,
        "model.safetensors",
    ),
    Case(
        "verify-model-header-garbage",
        bundle(lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 16)),
        ("verify", "{root}/" + RELEASE),
        7,
        "model.safetensors: unreadable header",
    ),
    Case("verify-bundle-missing", remove(RELEASE), ("verify", "{root}/" + RELEASE), 7, "release: not a directory"),
    Case(
        "verify-bundle-is-file", both(remove(RELEASE), text(RELEASE, "x")), ("verify", "{root}/" + RELEASE), 7, "release: not a directory"
    ),
    # ---------------- validate (our JSON files)
    Case("validate-not-json", text("reports/train.json", "{"), ("validate", "{root}/reports/train.json"), 2, "train.json: not valid JSON"),
    Case(
        "validate-binary",
        raw("reports/metrics.json", b"\x89PNG\x00"),
        ("validate", "{root}/reports/metrics.json"),
        2,
        "metrics.json: not UTF-8",
    ),
    Case(
        "validate-schema",
        text("reports/release.json", '{"run_id": 1}'),
        ("validate", "{root}/reports/release.json"),
        2,
        "does not match schema 'release_report'",
    ),
    Case(
        "validate-jsonl-line",
        lambda r: (r / "artifacts/train/metrics.jsonl").write_text('{"step": 1}\n{oops\n'),
        ("validate", "{root}/artifacts/train/metrics.jsonl"),
        2,
        "metrics.jsonl line 2: not valid JSON",
    ),
    Case("validate-unknown", text("notes.json", "{}"), ("validate", "{root}/notes.json"), 2, "cannot tell which schema"),
    Case("validate-missing", lambda r: None, ("validate", "{root}/none.json"), 2, "none.json: file not found"),
    Case("validate-directory", lambda r: (r / "adir.json").mkdir(), ("validate", "{root}/adir.json"), 2, "adir.json: is a directory"),
    Case(
        "validate-deep-json",
        text("reports/train.json", "[" * 100_000 + "]" * 100_000),
        ("validate", "{root}/reports/train.json"),
        2,
        "train.json: ",
    ),
]


def test_corpus_is_large_and_unique() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    case.mutate(root)
    before = declared_outputs(root) if not (root / RELEASE).is_symlink() else {}
    argv = [a.replace("{root}", str(root)) for a in case.argv]
    if argv[0] in ("data", "preflight", "train", "release"):
        argv += ["--root", str(root)] + (["--no-progress"] if argv[0] == "train" else [])
    code = main(argv)
    out = capsys.readouterr()
    both_streams = out.out + out.err
    assert "Traceback" not in both_streams
    assert code == case.code, both_streams
    assert case.needle in both_streams, both_streams
    if case.code not in (3,):  # preflight writes its report even when the machine is not ready
        assert declared_outputs(root) == before, "a failed command changed a declared output"


@pytest.mark.parametrize(
    "mutate",
    [
        flip_byte(f"{RELEASE}/model.safetensors"),
        remove(f"{RELEASE}/metadata.json"),
        bundle(lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 8)),
    ],
    ids=["tampered", "missing-file", "garbage-model-resummed"],
)
def test_load_released_model_raises_verify_error(finished: Path, tmp_path: Path, mutate: Callable[[Path], None]) -> None:
    root = tmp_path / "p"
    shutil.copytree(finished, root)
    mutate(root)
    with pytest.raises(VerifyError):
        load_released_model(root / RELEASE)


# ------------------------------------------------------------------ hostile inputs, in a child process with bounds
# Reads that never end and expansion bombs: each case runs the CLI in a child process under a wall-time limit and an
# address-space limit, so a regression fails the test instead of hanging or exhausting the machine.

HOSTILE_TIMEOUT_S = 180
HOSTILE_MEMORY = 8 << 30
MESSAGE_BOUND = 8_000  # characters on stderr: a message never quotes an unbounded value


def _replace_with_fifo(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        os.mkfifo(root / rel)

    return mutate


def _fasta_fifo(root: Path) -> None:
    write_params(root, data={"source": "fasta", "fasta_path": "genomes/ref.fa"})
    os.mkfifo(root / "genomes" / "ref.fa")


_LAUGHS = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)
_HUGE_NAME = b"n" * (20 << 20)

HOSTILE = [
    Case("params-dev-zero", symlink(P, "/dev/zero"), ("data",), 2, "params.yaml: a character device, not a regular file"),
    Case("params-dev-urandom", symlink(P, "/dev/urandom"), ("train",), 2, "params.yaml: a character device"),
    Case("params-fifo", _replace_with_fifo(P), ("train",), 2, "params.yaml: a FIFO (named pipe), not a regular file"),
    Case("fasta-fifo", _fasta_fifo, ("data",), 2, "ref.fa: a FIFO (named pipe), not a regular file"),
    Case("validate-dev-zero", lambda r: None, ("validate", "/dev/zero"), 2, "/dev/zero: a character device"),
    Case("validate-fifo", _replace_with_fifo("reports/train.json"), ("validate", "{root}/reports/train.json"), 2, "a FIFO"),
    Case("params-too-large", params_text(lambda t: t + ("#" * 1023 + "\n") * 2048), ("data",), 2, "more than the 1.0 MiB"),
    Case("params-alias-bomb", text(P, _LAUGHS), ("data",), 2, "line 2: a YAML alias (*a0) repeats another node"),
    Case(
        "verify-listed-fifo",
        _replace_with_fifo(f"{RELEASE}/MODEL_CARD.md"),
        ("verify", "{root}/" + RELEASE),
        7,
        "MODEL_CARD.md: not a regular file",
    ),
    Case("verify-unlisted-fifo", _replace_with_fifo(f"{RELEASE}/pipe"), ("verify", "{root}/" + RELEASE), 7, "pipe: present but not listed"),
    Case("fasta-huge-name", fasta(b">" + _HUGE_NAME + b"\nACGT\n>" + _HUGE_NAME + b"\nACGT\n"), ("data",), 2, "is used again"),
]


def _bounded_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (HOSTILE_MEMORY, HOSTILE_MEMORY))


@pytest.mark.slow  # child processes: the full suite runs it
@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_input(case: Case, finished: Path, tmp_path: Path) -> None:
    """Exit code, no traceback, the named file, a bounded message, no declared output changed, within a time and
    memory bound enforced on the child (a hang or a bomb fails here instead of taking the machine)."""
    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    case.mutate(root)
    before = declared_outputs(root)
    argv = [a.replace("{root}", str(root)) for a in case.argv]
    if argv[0] in ("data", "preflight", "train", "release"):
        argv += ["--root", str(root)] + (["--no-progress"] if argv[0] == "train" else [])
    proc = subprocess.run(
        [sys.executable, "-m", "geno_pipeline", *argv], capture_output=True, text=True, timeout=HOSTILE_TIMEOUT_S,
        preexec_fn=_bounded_memory, cwd=root, errors="replace",
    )  # fmt: skip
    both_streams = proc.stdout + proc.stderr
    assert "Traceback" not in both_streams
    assert proc.returncode == case.code, both_streams[-3000:]
    assert case.needle in both_streams, both_streams[-3000:]
    assert len(proc.stderr) < MESSAGE_BOUND, f"{len(proc.stderr)} characters on stderr"
    assert declared_outputs(root) == before, "a refused command changed a declared output"


def test_a_gzip_that_inflates_past_the_memory_budget_stops_as_it_streams(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small .fa.gz whose bases exceed what memory can hold passes the up-front estimate (4 bases per gzip byte) and
    is stopped while it inflates, before the reader's buffer grows past the budget."""
    from geno_pipeline.data import dataset

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    bases = 192 << 20
    payload = gzip.compress(b">r\n" + b"ACGT" * (bases // 4) + b"\n", compresslevel=1)
    fasta(payload, name="ref.fa.gz")(root)
    before = declared_outputs(root)
    data = load_params(root / "params.yaml").data
    slot = data.window_length + data.flank_length
    budget = dataset._READER_OVERHEAD + (data.train_windows + data.valid_windows) * (2 * slot + 32) + (16 << 20)
    assert dataset.memory_needed(data, root / "genomes/ref.fa.gz") < budget < bases  # the estimate lets it through
    monkeypatch.setattr(dataset, "available_host_memory", lambda: budget)
    assert main(["data", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "ref.fa.gz: the records kept hold more than" in err and "a gzip file can inflate" in err
    assert declared_outputs(root) == before


# ------------------------------------------------------------------ console output that cannot be written


@pytest.mark.slow  # child processes: the full suite runs it
@pytest.mark.parametrize("argv", [("verify", RELEASE), ("validate", "reports/train.json"), ("preflight", "--root", ".")])
def test_stdout_on_a_full_device_is_named_not_blamed_on_the_disk(finished: Path, tmp_path: Path, argv: tuple[str, ...]) -> None:
    """stdout on /dev/full: exit 8 naming stdout (not the project folder), one line, no traceback, and no second error
    from the interpreter's own flush at exit."""
    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    before = declared_outputs(root)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "geno_pipeline", *argv], stdout=full, stderr=subprocess.PIPE, text=True, cwd=root,
                              timeout=HOSTILE_TIMEOUT_S)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 8, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert lines[-1].startswith(f"geno-pipeline {argv[0]}: error: stdout: cannot write this command's output: No space left on device")
    if argv[0] != "preflight":  # preflight writes its report before it prints
        assert declared_outputs(root) == before


# ------------------------------------------------------------------ rendezvous


def test_the_rendezvous_deadline_ends_a_stuck_join_naming_the_port(capsys: pytest.CaptureFixture[str]) -> None:
    from geno_pipeline.distributed import JobEnv
    from geno_pipeline.distributed.group import rendezvous_deadline

    job = JobEnv(rank=1, world_size=2, local_rank=1, master_addr="127.0.0.1", master_port=29511)
    exits: list[int] = []
    ended = threading.Event()

    def exit_process(code: int) -> None:
        exits.append(code)
        ended.set()

    with rendezvous_deadline(job, 0.0, grace_s=0.05, exit_process=exit_process):
        assert ended.wait(timeout=HOSTILE_TIMEOUT_S)  # a join that never returns, as TCPStore's client against a silent listener
    assert exits == [9]
    err = capsys.readouterr().err
    assert "rank 1 of 2: joining the job at 127.0.0.1:29511 did not finish within runtime.dist_timeout_s (0.0 s)" in err
    assert "set MASTER_PORT to a free port" in err
    with rendezvous_deadline(job, 5.0, exit_process=exits.append):
        pass  # a join that finishes: the deadline goes with it
    assert exits == [9]


@pytest.mark.slow  # child processes: the full suite runs it
def test_a_worker_whose_master_port_answers_nothing_stops_within_the_timeout(finished: Path, tmp_path: Path) -> None:
    """A listener at MASTER_PORT that accepts and never answers (it took the port after any check could see it free):
    the worker exits 9 naming the port within runtime.dist_timeout_s plus the grace, instead of waiting forever."""
    import socket

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    write_params(root, runtime={"dist_timeout_s": 2})
    before = declared_outputs(root)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "train", "--root", str(root), "--no-progress"], env=env, cwd=root,
                              capture_output=True, text=True, timeout=HOSTILE_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < MESSAGE_BOUND
    assert f"joining the job at 127.0.0.1:{port} did not finish within runtime.dist_timeout_s (2 s)" in proc.stderr
    assert declared_outputs(root) == before


# ------------------------------------------------------------------ one run per workspace; SIGTERM


def _cli_child(root: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)] + (["--no-progress"] if args[0] == "train" else [])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)


@pytest.mark.slow  # child processes: the full suite runs it
@pytest.mark.parametrize("command", ["train", "release", "data"])
def test_a_second_run_in_a_busy_workspace_stops_at_once(finished: Path, tmp_path: Path, command: str) -> None:
    """While another process holds the workspace (here: this test, through the same lock a run takes), a stage exits 2
    at once naming that process, and changes nothing."""
    from geno_pipeline.workspace import workspace_lock

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    before = declared_outputs(root)
    with workspace_lock(root, "train --params other.yaml"):
        proc = _cli_child(root, command)
        out, err = proc.communicate(timeout=HOSTILE_TIMEOUT_S)
    assert proc.returncode == 2 and "Traceback" not in out + err
    assert f"another geno-pipeline run is using this workspace (pid {os.getpid()}: geno-pipeline train --params other.yaml)" in err
    assert declared_outputs(root) == before


@pytest.mark.slow  # child processes: the full suite runs it
def test_a_lock_left_by_a_killed_run_does_not_block(finished: Path, tmp_path: Path) -> None:
    """The lock is the kernel's and went with the killed process: the file it left (naming a dead pid) blocks nothing."""
    from geno_pipeline.workspace import LOCK_NAME

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    (root / LOCK_NAME).write_text("pid 4194303: geno-pipeline train\n")
    proc = _cli_child(root, "release")
    _, err = proc.communicate(timeout=HOSTILE_TIMEOUT_S)
    assert proc.returncode == 0, err
    assert (root / LOCK_NAME).read_text() == f"pid {proc.pid}: geno-pipeline release\n"


def test_a_sigterm_during_a_fork_is_remembered_not_raised_into_the_forks_callbacks() -> None:
    """Inside a fork's callbacks the handler only remembers the SIGTERM (an exception there would be printed and lost);
    the block raises it at its next safe point, and a real fork resets the guard."""
    from geno_pipeline import workspace

    with pytest.raises(workspace.Terminated), workspace.terminate_as_interrupt():
        workspace._fork_started()
        workspace._raise_terminated(signal.SIGTERM, None)  # no exception here
        workspace._fork_done()
        workspace.check_terminated()  # ...but here
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not workspace._forking[0] else 1)
    assert os.waitpid(pid, 0)[1] == 0 and not workspace._forking[0]


def test_a_sigterm_whose_exception_python_swallowed_still_stops_the_run(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python ignores an exception a signal handler raises inside an at-fork callback (the checkpoint writer's fork):
    the SIGTERM is remembered, and training stops at its next step with exit 143 and its line, resumable."""
    from geno_pipeline import workspace
    from geno_pipeline.training.tuples import TupleSampler

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    draw, calls = TupleSampler.draw, [0]

    def swallowed(self: TupleSampler, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 6:
            with contextlib.suppress(workspace.Terminated):  # Python printed and ignored the exception of...
                workspace._raise_terminated(signal.SIGTERM, None)  # ...the handler, as if it ran inside a callback
        return draw(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TupleSampler, "draw", swallowed)
    assert main(["train", "--root", str(root), "--no-progress"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "geno-pipeline train: terminated (SIGTERM); nothing was half-written"
    assert calls[0] == 6  # stopped before drawing step 7's batch
    monkeypatch.setattr(TupleSampler, "draw", draw)
    assert main(["train", "--root", str(root), "--no-progress", "--resume", "auto"]) == 0
    assert declared_outputs(root) == declared_outputs(finished)


@pytest.mark.slow  # child processes: the full suite runs it
def test_a_sigterm_as_the_stage_finishes_is_handled_never_a_bare_kill(finished: Path, tmp_path: Path) -> None:
    """SIGTERM the moment a train run has written its last report: the process ends with the handled exit (143 and its
    line) or, when the command had already finished, with its own code, never killed by the signal mid-teardown."""
    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    marker = root / "reports" / "runtime" / "train.json"
    codes = []
    for _ in range(3):
        before = marker.stat().st_mtime_ns
        proc = _cli_child(root, "train")
        deadline = time.monotonic() + HOSTILE_TIMEOUT_S
        while proc.poll() is None and marker.stat().st_mtime_ns == before and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HOSTILE_TIMEOUT_S)
        assert "Traceback" not in err
        assert proc.returncode in (0, 143), (proc.returncode, err[-500:])
        if proc.returncode == 143:
            assert err.strip().splitlines()[-1] == "geno-pipeline train: terminated (SIGTERM); nothing was half-written"
        codes.append(proc.returncode)
    assert declared_outputs(root) == declared_outputs(finished)


@pytest.mark.slow  # child processes: the full suite runs it
def test_sigterm_stops_train_like_ctrl_c_and_resume_finishes(finished: Path, tmp_path: Path) -> None:
    """SIGTERM (what a scheduler sends before a kill) mid-run: exit 143, one line, no traceback, nothing half-written;
    `--resume auto` then finishes the run."""
    from tools.reliability import temporaries

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    write_params(root, train={"steps": 400})
    shutil.rmtree(root / "artifacts/train")
    assert main(["preflight", "--root", str(root)]) == 0
    proc = _cli_child(root, "train")
    metrics = root / "artifacts/train/metrics.jsonl"
    deadline = time.monotonic() + HOSTILE_TIMEOUT_S
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HOSTILE_TIMEOUT_S)
    assert proc.returncode == 143, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "geno-pipeline train: terminated (SIGTERM); nothing was half-written"
    assert temporaries(root) == []
    resumed = _cli_child(root, "train", "--resume", "auto")
    _, err = resumed.communicate(timeout=HOSTILE_TIMEOUT_S)
    assert resumed.returncode == 0, err
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == 400


# ------------------------------------------------------------------ stale or swapped inputs


def _swap_dataset(root: Path) -> None:
    """artifacts/dataset replaced by one built from other data params (params.yaml unchanged)."""
    other = root.parent / "other"
    shutil.copytree(root, other, symlinks=True)
    write_params(other, data={"seed": 99})
    assert main(["data", "--root", str(other)]) == 0
    shutil.rmtree(root / DATASET)
    shutil.copytree(other / DATASET, root / DATASET)


@pytest.mark.parametrize(("command", "code", "needle"), [
    ("train", 2, "built from other data params (data.seed: 99 in the dataset, 3 in the params)"),
    ("release", 6, "dataset unchanged since training: artifacts/dataset/dataset_manifest.json is not the manifest the model"),
])  # fmt: skip
def test_a_swapped_dataset_is_refused(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, code: int, needle: str
) -> None:
    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    _swap_dataset(root)
    capsys.readouterr()
    before = declared_outputs(root)
    argv = [command, "--root", str(root)] + (["--no-progress"] if command == "train" else [])
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert declared_outputs(root) == before


# ------------------------------------------------------------------ all or nothing per stage


@pytest.mark.parametrize(("command", "blocked"), [("release", "reports"), ("train", "reports/plots")])
def test_a_stage_whose_report_folder_is_read_only_writes_nothing(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, blocked: str
) -> None:
    """The report folder refuses new files (EROFS, injected where the stage creates files, as a read-only mount does):
    exit 8 naming it, and the stage's other outputs are not replaced either."""
    import errno
    import tempfile

    root = tmp_path / "p"
    shutil.copytree(finished, root, symlinks=True)
    if command == "train":
        write_params(root, train={"steps": 16})  # a run that would replace artifacts/train
    before = declared_outputs(root)
    real = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir", ""))).resolve() == (root / blocked).resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))
        return real(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    argv = [command, "--root", str(root)] + (["--no-progress"] if command == "train" else [])
    assert main(argv) == 8
    err = capsys.readouterr().err
    assert f"{blocked}: cannot write: Read-only file system" in err and "Traceback" not in err
    assert declared_outputs(root) == before


_HOLDER = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
    "sys.stdin.read()"
)


def _reaped_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("recorded", ["gone", "alive"])
def test_the_lock_waits_for_a_killed_runs_children_only(tmp_path: Path, recorded: str) -> None:
    """The lock file names a process that is gone while another still holds the lock (a killed run's forked checkpoint
    writer, exiting): the new run waits for it and takes the lock. When the named process is alive, it is refused at
    once, without waiting."""
    from geno_pipeline import workspace

    path = tmp_path / workspace.LOCK_NAME
    path.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        pid = _reaped_pid() if recorded == "gone" else holder.pid
        path.write_text(f"pid {pid}: geno-pipeline train\n")
        fd = os.open(path, os.O_RDWR)
        try:
            if recorded == "alive":
                assert workspace._take(fd, sleep=lambda _s: pytest.fail("waited for a live holder")) is False
                return
            assert workspace._take(fd, wait_s=0.05) is False  # the children have not exited yet: refused after the wait
            sleeps: list[float] = []

            def release_on_first_sleep(seconds: float) -> None:  # the holder exits while the new run waits
                if not sleeps:
                    assert holder.stdin is not None
                    holder.stdin.close()
                    holder.wait(timeout=HOSTILE_TIMEOUT_S)
                sleeps.append(seconds)

            assert workspace._take(fd, sleep=release_on_first_sleep) is True and sleeps  # it waited, then took the lock
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=HOSTILE_TIMEOUT_S)
