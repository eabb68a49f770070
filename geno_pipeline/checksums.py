"""SHA-256 helpers and the coreutils `SHA256SUMS` format (`<hex>  <name>`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geno_pipeline.errors import ChecksumError
from geno_pipeline.fsio import atomic_write_text

__all__ = [
    "SumsEntry",
    "check_sha256sums",
    "format_sha256sums",
    "is_plain_relative_name",
    "parse_sha256sums",
    "sha256_bytes",
    "sha256_file",
    "write_sha256sums",
]

_CHUNK = 1 << 20
_LINE = re.compile(r"^([0-9a-f]{64}) ([ *])(.+)$")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a regular file, streamed in 1 MiB chunks (a FIFO or device raises `NotRegularFileError`, an
    OSError, instead of blocking or never ending)."""
    from geno_pipeline.readers import open_regular

    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SumsEntry:
    """One line of a SHA256SUMS file."""

    digest: str
    name: str


def is_plain_relative_name(name: str) -> bool:
    """True for a relative POSIX path with no `..`, no empty part, no backslash or newline."""
    if not name or name.startswith("/") or "\\" in name or "\n" in name or "\r" in name:
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def format_sha256sums(entries: Iterable[SumsEntry]) -> str:
    """Coreutils text format, sorted by name (byte order) for determinism."""
    rows = sorted(entries, key=lambda e: e.name.encode("utf-8"))
    for entry in rows:
        if not is_plain_relative_name(entry.name):
            raise ChecksumError(f"refusing to list unsafe file name {entry.name!r} in SHA256SUMS")
    return "".join(f"{e.digest}  {e.name}\n" for e in rows)


def write_sha256sums(directory: Path, names: Iterable[str]) -> list[SumsEntry]:
    """Hash `names` (relative to `directory`) and write `directory/SHA256SUMS` atomically."""
    entries = [SumsEntry(sha256_file(directory / name), name) for name in names]
    atomic_write_text(directory / "SHA256SUMS", format_sha256sums(entries))
    return entries


def parse_sha256sums(text: str) -> tuple[list[SumsEntry], list[str]]:
    """Parse coreutils SHA256SUMS text; returns (entries, problems), one problem per bad line."""
    entries: list[SumsEntry] = []
    problems: list[str] = []
    if text and not text.endswith("\n"):
        problems.append("SHA256SUMS: last line has no trailing newline")
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line)
        if match is None:
            problems.append(f"SHA256SUMS line {number}: malformed line {line[:80]!r}")
            continue
        digest, _mode, name = match.groups()
        if not is_plain_relative_name(name):
            problems.append(f"SHA256SUMS line {number}: unsafe name {name!r} (absolute or '..')")
            continue
        if name in seen:
            problems.append(f"SHA256SUMS line {number}: duplicate entry {name!r}")
            continue
        seen.add(name)
        entries.append(SumsEntry(digest, name))
    return entries, problems


def check_sha256sums(directory: Path, *, allow_extra: frozenset[str] = frozenset()) -> list[str]:
    """Check `directory/SHA256SUMS` strictly; return every problem found (empty when fine).

    Listed files must exist as regular files (not symlinks) with matching hashes; files present
    but not listed are problems unless named in `allow_extra` (SHA256SUMS itself always is), and so is
    a directory that holds no listed file: a bundle holds exactly its listed files.
    """
    directory = Path(directory)
    sums = directory / "SHA256SUMS"
    if sums.is_symlink() or not sums.is_file():
        return [f"{sums}: missing"]
    entries, problems = parse_sha256sums(sums.read_text(encoding="utf-8", errors="replace"))
    listed = {e.name for e in entries}
    parents = {parent.as_posix() for name in listed for parent in Path(name).parents}
    for entry in entries:
        path = directory / entry.name
        if path.is_symlink():
            problems.append(f"{entry.name}: is a symlink")
        elif not path.exists():
            problems.append(f"{entry.name}: listed but missing")
        elif not path.is_file():
            problems.append(f"{entry.name}: not a regular file")
        elif sha256_file(path) != entry.digest:
            problems.append(f"{entry.name}: sha256 mismatch")
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if rel == "SHA256SUMS" or rel in allow_extra:
            continue
        if path.is_symlink():
            if rel not in listed:
                problems.append(f"{rel}: symlink not allowed in bundle")
            continue
        if path.is_dir():
            if rel not in parents and not any(path.iterdir()):  # an unlisted one with files: each file is named above
                problems.append(f"{rel}: empty directory, not listed in SHA256SUMS (a bundle holds exactly its listed files)")
            continue
        if rel not in listed:
            problems.append(f"{rel}: present but not listed in SHA256SUMS")
    return problems
