"""Per-purpose seeds derived from a base seed by hashing (no global RNG state involved)."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(base_seed: int, purpose: str) -> int:
    """A 63-bit seed for `purpose` derived from `base_seed` by SHA-256.

    Different purposes get independent streams; the same (seed, purpose) always gives the same value.
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
        raise ValueError(f"base_seed must be a non-negative int, got {base_seed!r}")
    digest = hashlib.sha256(f"geno-pipeline:{base_seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
