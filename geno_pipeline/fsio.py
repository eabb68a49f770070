"""Atomic file and directory writes (temp file + fsync + rename, staging directories), and their cleanup.

Every write failure (read-only directory, full disk, permissions) becomes a `StorageError` naming the
path, with the temporary file or staging directory removed, so nothing is ever half-written. Every
temporary name has one of the shapes `sweep_temporaries` recognises, so a rerun after a kill removes
whatever the killed process left.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from geno_pipeline.errors import StorageError, shorten

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "is_temporary_name",
    "replace_dir_atomically",
    "require_writable",
    "staging_dir",
    "storage_error",
    "sweep_temporaries",
    "write_staged_bytes",
    "writing",
]

# `.NAME.XXXX.tmp` (atomic file), `.NAME.tmp-XXXX` (staging dir), `.NAME.old-PID` (replaced dir)
_TEMPORARY = re.compile(r"^\..+(\.[^.]+\.tmp|\.tmp-[^/]+|\.old-\d+)$")

_FIXES = {
    errno.ENOSPC: "free disk space (see `df -h`) and run again",
    errno.EDQUOT: "free space within your disk quota and run again",
    errno.EROFS: "the file system is read-only: run from a writable checkout or remount it read-write",
    errno.EACCES: "make the directory writable for this user (chmod/chown) and run again",
    errno.EPERM: "make the directory writable for this user (chmod/chown) and run again",
    errno.ENAMETOOLONG: "use a shorter path",
}


def storage_error(path: Path, exc: OSError, action: str = "cannot write") -> StorageError:
    """A `StorageError` naming `path`, the OS reason and a fix."""
    reason = exc.strerror or type(exc).__name__
    fix = _FIXES.get(exc.errno or 0, "check the path, its permissions and free space, then run again")
    return StorageError(f"{shorten(str(path), 200)}: {action}: {reason} (errno {exc.errno}); nothing was half-written; fix: {fix}")


def require_writable(directories: Iterable[Path]) -> None:
    """Before a stage writes anything: each directory its outputs go to exists (or can be made) and takes a new file,
    else a `StorageError` naming it. So a stage whose last output cannot be written writes none of them."""
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".writable-probe.", suffix=".tmp", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise storage_error(directory, exc) from None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an `OSError` raised while writing `path` into a `StorageError` naming it."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(Path(path), exc) from None


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def write_staged_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a new file inside a staging directory (see `staging_dir`).

    No temporary file, fsync or rename of its own: nothing outside sees the staging directory, and
    `replace_dir_atomically` fsyncs every file in it before publishing it in one rename."""
    path = Path(path)
    with writing(path), open(path, "xb") as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 variant of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir_atomically(staging: Path, final: Path) -> None:
    """Move a fully written `staging` directory to `final`, replacing any previous one.

    The old directory is moved aside first and deleted only after the new one is in place, so a
    failure at any point leaves either the old or the new complete directory at `final`.
    """
    staging, final = Path(staging), Path(final)
    with writing(final):
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(staging)
        old: Path | None = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(staging, final)
        fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh empty directory beside `final` to build its replacement in (stale ones are removed first)."""
    final = Path(final)
    with writing(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(final.parent, recursive=False, only=final.name)
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        path.chmod(0o755)
    return path


def is_temporary_name(name: str) -> bool:
    """Whether `name` is one of the temporary names this module creates."""
    return bool(_TEMPORARY.match(name))


def sweep_temporaries(directory: Path, *, recursive: bool = True, only: str | None = None) -> list[Path]:
    """Remove temporary files and staging directories a killed process left in `directory`; returns them.

    With `only`, just the temporaries of that one name (`.NAME.*`) are removed.
    """
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return []
    removed: list[Path] = []
    for path in sorted(directory.iterdir()):
        if is_temporary_name(path.name) and (only is None or path.name.startswith(f".{only}.")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        elif recursive and path.is_dir() and not path.is_symlink():
            removed += sweep_temporaries(path, recursive=True, only=only)
    return removed
