"""Reference sequences: a seeded synthetic genome with structure, or a user FASTA.

Sequences are uint8 codes: A=0, C=1, G=2, T=3, N=4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geno_pipeline.seeding import derive_seed

__all__ = ["BASES", "N_CODE", "RecordStats", "Reference", "decode", "synthetic_genome", "synthetic_reference"]

BASES = "ACGT"
N_CODE = 4


@dataclass
class RecordStats:
    """One record of a reference: its name, where its header is, and what its sequence holds."""

    name: str
    line: int
    """Line of its '>' header (1 for the synthetic genome)."""
    offset: int | None
    """Where its codes start in `Reference.codes`; None when `data.records` leaves it out (its codes are not kept)."""
    length: int = 0
    """Bases (N and IUPAC codes included)."""
    n_bases: int = 0
    """Bases that are N after mapping, IUPAC ambiguity codes included."""
    iupac_bases: int = 0
    """IUPAC ambiguity codes (R Y K M S W B D H V, either case), read as N."""
    soft_masked_bases: int = 0
    """Lowercase (soft-masked) bases."""

    @property
    def selected(self) -> bool:
        return self.offset is not None


@dataclass(frozen=True)
class Reference:
    """A reference genome: the selected records' codes back to back, and every record's counts in file order."""

    codes: np.ndarray
    """uint8 codes A=0, C=1, G=2, T=3, N=4 of the selected records, concatenated."""
    records: list[RecordStats]
    sha256: str | None = None
    """SHA-256 of the FASTA file's bytes (None for the synthetic genome)."""

    @property
    def selected(self) -> list[RecordStats]:
        return [r for r in self.records if r.selected]

    def sequence(self, record: RecordStats) -> np.ndarray:
        """A selected record's codes (a view)."""
        if record.offset is None:
            raise ValueError(f"record {record.name!r} was not selected")
        return self.codes[record.offset : record.offset + record.length]


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


def synthetic_reference(seed: int, length: int) -> Reference:
    """The synthetic genome as a one-record reference named `synthetic`."""
    codes = synthetic_genome(seed, length)
    return Reference(codes, [RecordStats("synthetic", line=1, offset=0, length=int(codes.size))])
