"""The source digest: a content hash naming the code (package source, pyproject.toml, lock file)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["LOCK_FILE", "package_root", "source_digest", "source_files"]

LOCK_FILE = "requirements.lock"


def package_root() -> Path:
    """Directory holding the geno_pipeline package (the project root for an editable install)."""
    return Path(__file__).resolve().parent.parent


def source_files(root: Path | None = None) -> list[Path]:
    """Files the digest covers: every .py under geno_pipeline/, plus pyproject.toml and the lock file."""
    root = package_root() if root is None else Path(root)
    files = sorted(p for p in (root / "geno_pipeline").rglob("*.py") if "__pycache__" not in p.parts)
    files += [p for p in (root / "pyproject.toml", root / LOCK_FILE) if p.is_file()]
    return files


@lru_cache(maxsize=4)
def source_digest(root: Path | None = None) -> str:
    """`sha256:<hex>` over (relative path, file sha256) of `source_files`, in sorted order."""
    root = package_root() if root is None else Path(root)
    outer = hashlib.sha256()
    for path in source_files(root):
        rel = path.relative_to(root).as_posix()
        outer.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()
