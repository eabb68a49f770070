"""Reference sequences: a seeded synthetic genome with structure, or a user FASTA.

Sequences are uint8 codes: A=0, C=1, G=2, T=3, N=4.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geno_pipeline.errors import DataError
from geno_pipeline.readers import read_bytes
from geno_pipeline.seeding import derive_seed

__all__ = ["BASES", "N_CODE", "Record", "decode", "encode_text", "read_fasta", "synthetic_genome"]

BASES = "ACGT"
N_CODE = 4
_INVALID = 255
_TABLE = np.full(256, _INVALID, dtype=np.uint8)
for _code, _base in enumerate("ACGTN"):
    _TABLE[ord(_base)] = _code
    _TABLE[ord(_base.lower())] = _code  # soft-masked lowercase is accepted


@dataclass(frozen=True)
class Record:
    """One reference sequence."""

    name: str
    codes: np.ndarray  # uint8 codes, N_CODE for N


def encode_text(text: bytes) -> np.ndarray:
    """Map ASCII bases to codes; invalid characters map to 255."""
    return _TABLE[np.frombuffer(text, dtype=np.uint8)]


def decode(codes: np.ndarray) -> str:
    """Codes back to an upper-case string (for logs and tests)."""
    return "".join("ACGTN"[int(c)] for c in codes)


def _mutate(rng: np.random.Generator, codes: np.ndarray, rate: float) -> np.ndarray:
    hit = rng.random(codes.size) < rate
    shifted = (codes + rng.integers(1, 4, size=codes.size)) % 4
    return np.where(hit, shifted, codes).astype(np.uint8)


def synthetic_genome(seed: int, length: int) -> np.ndarray:
    """A seeded synthetic genome that is not i.i.d. uniform.

    Blocks alternate between (1) random sequence with a block-specific GC content,
    (2) mutated copies of earlier sequence (interspersed repeats), (3) tandem repeats of a short
    unit, and (4) low-complexity runs (homopolymers, dinucleotides), so windows differ in structure.
    """
    if length <= 0:
        raise ValueError("length must be > 0")
    rng = np.random.default_rng(derive_seed(seed, "data.genome"))
    out = np.empty(length, dtype=np.uint8)
    pos = 0
    while pos < length:
        kind = int(rng.choice(4, p=[0.62, 0.16, 0.12, 0.10]))
        if kind == 0:  # 1) GC-varied random block
            n = int(rng.integers(300, 4000))
            gc = 0.2 + 0.6 * float(rng.beta(3.0, 3.0))
            probs = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
            block = rng.choice(4, size=n, p=probs).astype(np.uint8)
        elif kind == 1 and pos > 2000:  # 2) mutated copy of earlier sequence
            n = int(rng.integers(200, min(3000, pos)))
            src = int(rng.integers(0, pos - n + 1))
            block = _mutate(rng, out[src : src + n].copy(), rate=float(rng.uniform(0.01, 0.15)))
        elif kind == 2:  # 3) tandem repeat of a 2..40 base unit
            unit = rng.integers(0, 4, size=int(rng.integers(2, 41))).astype(np.uint8)
            n = int(rng.integers(100, 1500))
            block = _mutate(rng, np.resize(unit, n), rate=0.03)
        else:  # 4) low complexity: homopolymer or dinucleotide run
            unit = rng.integers(0, 4, size=int(rng.integers(1, 3))).astype(np.uint8)
            n = int(rng.integers(20, 400))
            block = _mutate(rng, np.resize(unit, n), rate=0.02)
        n = min(block.size, length - pos)
        out[pos : pos + n] = block[:n]
        pos += n
    return out


_GZIP_FIX = "the file is damaged (an interrupted download or copy?): fetch it again, check it with `gzip -t`, or use a plain FASTA"


def _open_text(path: Path) -> bytes:
    raw = read_bytes(path, error=DataError, fix="point data.fasta_path at a readable FASTA file under genomes/")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise DataError(f"{path}: truncated gzip data (the stream ends early); fix: {_GZIP_FIX}") from None
        except (OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc}); fix: {_GZIP_FIX}") from None
    return raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not sequence


def read_fasta(path: Path) -> list[Record]:
    """Parse a plain or gzipped, possibly multi-record FASTA; validate its alphabet.

    Raises `DataError` naming the file, record and line for a missing file, an empty file,
    sequence before the first header, an empty record, or a character outside ACGTN/acgtn.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: FASTA file not found (data.fasta_path); fix: point data.fasta_path at an existing file under genomes/")
    text = _open_text(path)
    records: list[Record] = []
    name: str | None = None
    chunks: list[np.ndarray] = []
    header_line = 0

    def close() -> None:
        if name is None:
            return
        codes = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint8)
        if codes.size == 0:
            raise DataError(f"{path}: record '{name}' (line {header_line}) has no sequence; fix: remove it or add its sequence")
        records.append(Record(name, codes))

    for number, line in enumerate(text.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        if line.startswith(b">"):
            close()
            name = line[1:].decode("utf-8", errors="replace").split()[0] if line[1:].strip() else f"record{len(records) + 1}"
            header_line = number
            chunks = []
            continue
        if line.startswith(b";"):
            continue
        if name is None:
            raise DataError(f"{path}: line {number}: sequence before the first '>' header; fix: add a header line")
        codes = encode_text(line.strip())
        bad = np.flatnonzero(codes == _INVALID)
        if bad.size:
            char = chr(line.strip()[int(bad[0])])
            raise DataError(
                f"{path}: line {number}, column {int(bad[0]) + 1}: invalid character {char!r} in record '{name}'; "
                "fix: use only A, C, G, T, N (any case)"
            )
        chunks.append(codes)
    close()
    if not records:
        raise DataError(f"{path}: empty FASTA (no records); fix: provide at least one '>' record with sequence")
    return records
