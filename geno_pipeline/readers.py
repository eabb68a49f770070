"""The one boundary for untrusted bytes: every file the pipeline reads goes through these readers.

Each failure (missing, a directory, unreadable, too long a name, not UTF-8, not JSON, not YAML, a
malformed array or tensor file) becomes the caller's typed project error naming the file, saying
what is wrong and how to fix it; no `OSError`, `UnicodeDecodeError` or parser exception escapes.
"""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geno_pipeline.errors import GenoPipelineError, shorten

__all__ = ["read_bytes", "read_chunks", "read_json_text", "read_npy", "read_tensors", "read_text", "read_yaml"]

ErrorType = type[GenoPipelineError]

_OS_REASONS = {
    errno.ENOENT: "file not found",
    errno.EISDIR: "is a directory, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "the path is too long for the file system",
    errno.ENOTDIR: "a parent of the path is not a directory",
    errno.ELOOP: "too many levels of symbolic links",
}


def _os_message(path: Path, exc: OSError, fix: str) -> str:
    reason = _OS_REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    shown = shorten(str(path)) if exc.errno == errno.ENAMETOOLONG else str(path)
    return f"{shown}: {reason}; fix: {fix}"


def read_bytes(path: Path, *, error: ErrorType, fix: str) -> bytes:
    """The file's bytes, or `error` naming the file and the OS reason."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        return path.read_bytes()
    except OSError as exc:
        raise error(_os_message(path, exc, fix)) from None


def read_chunks(path: Path, *, size: int, error: ErrorType, fix: str) -> Iterator[bytes]:
    """The file's bytes in chunks of at most `size` (bounded memory for large inputs), or `error` as `read_bytes`."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        with path.open("rb") as handle:
            while chunk := handle.read(size):
                yield chunk
    except OSError as exc:
        raise error(_os_message(path, exc, fix)) from None


def _decode(path: Path, data: bytes, *, error: ErrorType, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"it looks binary or in another encoding; fix: give a UTF-8 {what} file"
        ) from None
    if "\x00" in text:
        raise error(f"{path}: contains NUL bytes, so it is not a {what} file; fix: give a UTF-8 {what} file")
    return text.removeprefix("\ufeff")


def read_text(path: Path, *, error: ErrorType, what: str, fix: str) -> str:
    """UTF-8 text of a file (a leading byte-order mark is dropped), or `error`."""
    return _decode(Path(path), read_bytes(path, error=error, fix=fix), error=error, what=what)


def read_json_text(path: Path, *, error: ErrorType, fix: str) -> Any:
    """A parsed JSON document, or `error` naming the file, the line and the column."""
    path = Path(path)
    text = read_text(path, error=error, what="JSON", fix=fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix: {fix}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read; fix: {fix}") from None


def read_yaml(path: Path, *, error: ErrorType, fix: str, syntax_fix: str = "correct the YAML at that line") -> Any:
    """A parsed YAML document (duplicate keys refused, as DVC refuses them), or `error`."""
    from geno_pipeline.yamlio import YamlError, parse_yaml

    path = Path(path)
    text = read_text(path, error=error, what="YAML", fix=fix)
    try:
        return parse_yaml(text)
    except YamlError as exc:
        raise error(f"{path}: {exc}; fix: {syntax_fix}") from None


def read_npy(path: Path, *, error: ErrorType, fix: str) -> np.ndarray:
    """A numeric .npy array (object arrays and pickles refused), or `error`."""
    path = Path(path)
    data = read_bytes(path, error=error, fix=fix)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise error(f"{path}: not a numeric .npy array ({exc}); fix: {fix}") from None
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise error(f"{path}: holds Python objects, not numbers; fix: {fix}")
    return array


def read_tensors(path: Path, *, error: ErrorType, fix: str) -> dict[str, Any]:
    """Tensors of a safetensors file (never unpickled), or `error` for a truncated or malformed file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = read_bytes(path, error=error, fix=fix)
    try:
        return dict(load(data))
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt; fix: {fix}") from None
