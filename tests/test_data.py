"""The data stage: determinism, checksums, FASTA input and bad input (one message, nothing half-written)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geno_pipeline.config import DataParams
from geno_pipeline.data.dataset import build_dataset as run
from geno_pipeline.data.dataset import dataset_problems, load_dataset
from geno_pipeline.data.fasta import read_fasta
from geno_pipeline.data.genome import RecordStats, Reference, synthetic_genome
from geno_pipeline.data.windows import candidate_slots
from tests.conftest import write_params


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)], capture_output=True, text=True)


def test_data_twice_identical_and_sha256sum_strict(tiny_root: Path) -> None:
    assert cli(tiny_root, "data").returncode == 0
    out = tiny_root / "artifacts" / "dataset"
    first = (out / "SHA256SUMS").read_bytes()
    assert cli(tiny_root, "data").returncode == 0
    assert (out / "SHA256SUMS").read_bytes() == first
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "dataset_manifest.json",
        "train_coords.npy",
        "train_windows.npy",
        "valid_coords.npy",
        "valid_windows.npy",
    ]
    assert dataset_problems(out) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), window=st.integers(16, 48), n_train=st.integers(1, 30), n_valid=st.integers(1, 10))
def test_data_deterministic_over_seeds_and_sizes(
    tmp_path_factory: pytest.TempPathFactory, seed: int, window: int, n_train: int, n_valid: int
) -> None:
    params = DataParams(
        seed=seed,
        genome_length=(window + 8) * (n_train + n_valid) * 2,
        window_length=window,
        flank_length=8,
        train_windows=n_train,
        valid_windows=n_valid,
    )
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    ra = run(params, root=a, out_dir=a / "ds")
    rb = run(params, root=b, out_dir=b / "ds")
    assert ra.manifest == rb.manifest
    assert sorted(p.name for p in (a / "ds").iterdir()) == sorted(p.name for p in (b / "ds").iterdir())
    for path in (a / "ds").iterdir():
        assert path.read_bytes() == (b / "ds" / path.name).read_bytes()
    ds = load_dataset(a / "ds")
    assert ds.train.shape == (n_train, window + 8) and ds.valid.shape == (n_valid, window + 8)


def test_data_synthetic_genome_has_structure() -> None:
    genome = synthetic_genome(17, 400_000)
    windows = genome[: 400_000 // 256 * 256].reshape(-1, 256)
    gc = np.isin(windows, (1, 2)).mean(axis=1)
    assert gc.std() > 0.05  # GC content varies between windows (uniform i.i.d. would give ~0.03)
    runs = np.flatnonzero(np.diff(genome) != 0)
    assert np.diff(runs).max() >= 20  # low-complexity homopolymer stretches exist
    assert not np.array_equal(synthetic_genome(18, 1000), synthetic_genome(17, 1000))


def test_data_windows_do_not_overlap() -> None:
    codes = np.zeros(1000, dtype=np.uint8)
    codes[100:110] = 4  # an N run
    slots = candidate_slots(Reference(codes, [RecordStats("r", line=1, offset=0, length=1000)]), 64)
    starts = slots.start.tolist()
    assert all(b - a >= 64 for a, b in itertools.pairwise(starts))
    assert all(not (s < 110 and s + 64 > 100) for s in starts)


def test_data_fasta_plain_gz_multi_record_softmask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seq = lambda n: "".join("ACGT"[i] for i in rng.integers(0, 4, n))  # noqa: E731
    text = f">chr1 first\n{seq(3000)}\n{seq(3000).lower()}\nNNNNNNNNNN\n{seq(2000)}\n>chr2\n{seq(4000)}\n"
    (tmp_path / "genomes").mkdir()
    (tmp_path / "genomes" / "ref.fa").write_text(text)
    (tmp_path / "genomes" / "ref.fa.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    assert [r.name for r in read_fasta(tmp_path / "genomes" / "ref.fa").records] == ["chr1", "chr2"]
    for name in ("genomes/ref.fa", "genomes/ref.fa.gz"):
        write_params(
            tmp_path,
            data={
                "source": "fasta",
                "fasta_path": name,
                "window_length": 64,
                "flank_length": 32,
                "train_windows": 100,
                "valid_windows": 20,
            },
        )
        proc = cli(tmp_path, "data")
        assert proc.returncode == 0, proc.stderr
        ds = load_dataset(tmp_path / "artifacts" / "dataset")
        assert ds.manifest.source.kind == "fasta" and ds.manifest.source.records == 2
        assert ds.manifest.source.fasta_sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


BAD = [
    ("unknown key", {"data": {"colour": 1}}, None, "data.colour: unknown key"),
    ("wrong type", {"data": {"seed": "seventeen"}}, None, "data.seed = 'seventeen': Input should be a valid integer"),
    ("negative window", {"data": {"window_length": -4}}, None, "data.window_length = -4: Input should be greater than 0"),
    (
        "window larger than genome",
        {"data": {"window_length": 70000}},
        None,
        "data.window_length = 70000: is larger than genome_length (60000)",
    ),
    (
        "non-positive weight",
        {"train": {"edit_type_weights": {"SNV": 0.0}}},
        None,
        "train.edit_type_weights.SNV = 0.0: weight must be a finite number > 0",
    ),
    (
        "nan weight",
        {"train": {"edit_type_weights": {"SNV": float("nan")}}},
        None,
        "train.edit_type_weights.SNV = nan: weight must be a finite number > 0",
    ),
    (
        "missing fasta",
        {"data": {"source": "fasta", "fasta_path": "genomes/nope.fa"}},
        None,
        "nope.fa: FASTA file not found (data.fasta_path)",
    ),
    (
        "invalid characters",
        {"data": {"source": "fasta", "fasta_path": "genomes/bad.fa"}},
        ">r\nACGTXACGT\n",
        "bad.fa: line 2, column 5: invalid character 'X'",
    ),
    ("empty fasta", {"data": {"source": "fasta", "fasta_path": "genomes/bad.fa"}}, "", "bad.fa: empty FASTA (no records)"),
]


@pytest.mark.parametrize(("case", "overrides", "fasta", "needle"), BAD, ids=[b[0] for b in BAD])
def test_data_bad_input_one_message_no_partial_output(tiny_root: Path, case: str, overrides: dict, fasta: str | None, needle: str) -> None:
    write_params(tiny_root, **overrides)
    if fasta is not None:
        (tiny_root / "genomes").mkdir()
        (tiny_root / "genomes" / "bad.fa").write_text(fasta)
    proc = cli(tiny_root, "data")
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("geno-pipeline data: error: ")
    artifacts = tiny_root / "artifacts"
    assert not (artifacts / "dataset").exists()
    assert not artifacts.exists() or not [p for p in artifacts.iterdir() if p.name.startswith(".dataset")]


def test_data_failure_keeps_previous_dataset(tiny_root: Path) -> None:
    assert cli(tiny_root, "data").returncode == 0
    before = (tiny_root / "artifacts" / "dataset" / "SHA256SUMS").read_bytes()
    write_params(tiny_root, data={"train_windows": 100000})
    proc = cli(tiny_root, "data")
    assert proc.returncode == 2 and "genome_length" in proc.stderr
    assert (tiny_root / "artifacts" / "dataset" / "SHA256SUMS").read_bytes() == before


def test_data_not_enough_slots_in_fasta(tmp_path: Path) -> None:
    (tmp_path / "genomes").mkdir()
    (tmp_path / "genomes" / "small.fa").write_text(">r\n" + "ACGT" * 50 + "\n")
    write_params(tmp_path, data={"source": "fasta", "fasta_path": "genomes/small.fa"})
    proc = cli(tmp_path, "data")
    assert proc.returncode == 2 and "non-overlapping N-free slots" in proc.stderr
