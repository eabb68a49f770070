"""The one boundary for untrusted bytes: every file the pipeline reads goes through these readers.

Each failure (missing, a directory, unreadable, too long a name, not UTF-8, not JSON, not YAML, a
malformed array or tensor file) becomes the caller's typed project error naming the file, saying
what is wrong and how to fix it; no `OSError`, `UnicodeDecodeError` or parser exception escapes.

Reads are bounded: a file is read only when it is a regular file once links are resolved (a FIFO, a device such as
/dev/zero or a socket could block or never end: `open_regular` opens without blocking and refuses them before reading
a byte), and documents whose format allows it have a size cap checked before reading (`MAX_YAML_BYTES` for params,
`MAX_JSON_BYTES` for JSON documents).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geno_pipeline.errors import GenoPipelineError, shorten
from geno_pipeline.tensorfile import TensorBytes

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_YAML_BYTES",
    "NotRegularFileError",
    "open_regular",
    "read_bytes",
    "read_chunks",
    "read_json_text",
    "read_npy",
    "read_tensor_bytes",
    "read_tensors",
    "read_tensors_with_metadata",
    "read_text",
    "read_yaml",
]

MAX_YAML_BYTES = 1 << 20  # a params file is a few KiB
MAX_JSON_BYTES = 64 << 20  # the largest document we write (a manifest of a many-record genome) is far below this

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


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class NotRegularFileError(OSError):
    """The path is not a regular file (after links are resolved), or is larger than its cap."""


def _size_words(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def open_regular(path: Path, *, limit: int | None = None) -> io.BufferedReader:
    """Open `path` for reading only if it is a regular file (links resolved) of at most `limit` bytes.

    The open does not block (O_NONBLOCK: a FIFO without a writer would wait forever); anything that is not a regular
    file, or is over `limit`, raises `NotRegularFileError` before a byte is read. Other failures are the usual OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFDIR:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if kind != stat.S_IFREG:
            what = _KINDS.get(kind, "not a regular file")
            raise NotRegularFileError(errno.EINVAL, f"{what}, not a regular file: reading it could block or never end")
        if limit is not None and info.st_size > limit:
            raise NotRegularFileError(errno.EFBIG, f"{_size_words(info.st_size)}, more than the {_size_words(limit)} such a file may be")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _oserror_message(path: Path, exc: OSError, fix: str) -> str:
    if isinstance(exc, NotRegularFileError):
        return f"{path}: {exc.strerror}; fix: {fix}"
    return _os_message(path, exc, fix)


def _checked_path(path: Path, *, error: ErrorType, fix: str) -> Path:
    """`path`, or `error` when no file system could hold it (a NUL byte, or a lone surrogate that has no bytes)."""
    path = Path(path)
    shown = str(path).replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in str(path):
        raise error(f"{shown}: a path cannot contain a NUL byte; fix: {fix}")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise error(f"{shown}: the path holds a character no file name can (a lone surrogate); fix: {fix}") from None
    return path


def read_bytes(path: Path, *, error: ErrorType, fix: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or `error` naming the file and the reason."""
    path = _checked_path(path, error=error, fix=fix)
    try:
        with open_regular(path, limit=limit) as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    except OSError as exc:
        raise error(_oserror_message(path, exc, fix)) from None
    if limit is not None and len(data) > limit:  # it grew after the check
        raise error(f"{path}: more than the {_size_words(limit)} such a file may be; fix: {fix}")
    return data


def read_chunks(path: Path, *, size: int, error: ErrorType, fix: str) -> Iterator[bytes]:
    """The bytes of a regular file in chunks of at most `size` (bounded memory for large inputs), or `error` as
    `read_bytes`."""
    path = _checked_path(path, error=error, fix=fix)
    try:
        with open_regular(path) as handle:
            while chunk := handle.read(size):
                yield chunk
    except OSError as exc:
        raise error(_oserror_message(path, exc, fix)) from None


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


def read_text(path: Path, *, error: ErrorType, what: str, fix: str, limit: int | None = None) -> str:
    """UTF-8 text of a regular file of at most `limit` bytes (a leading byte-order mark is dropped), or `error`."""
    return _decode(Path(path), read_bytes(path, error=error, fix=fix, limit=limit), error=error, what=what)


def read_json_text(path: Path, *, error: ErrorType, fix: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A parsed JSON document of at most `limit` bytes, or `error` naming the file, the line and the column."""
    path = Path(path)
    text = read_text(path, error=error, what="JSON", fix=fix, limit=limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix: {fix}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read; fix: {fix}") from None


def read_yaml(
    path: Path, *, error: ErrorType, fix: str, syntax_fix: str = "correct the YAML at that line", limit: int = MAX_YAML_BYTES
) -> Any:
    """A parsed YAML document of at most `limit` bytes (duplicate keys and aliases refused), or `error`."""
    from geno_pipeline.yamlio import YamlError, parse_yaml

    path = Path(path)
    text = read_text(path, error=error, what="YAML", fix=fix, limit=limit)
    try:
        return parse_yaml(text)
    except YamlError as exc:
        raise error(f"{path}: {exc}; fix: {syntax_fix}") from None


def _npy_header_problem(data: bytes) -> str | None:
    """What is wrong with a .npy header before any array is allocated: a shape whose bytes the file does not hold (a
    header claiming 10^12 rows would otherwise be a MemoryError), or None when the header and the data agree."""
    stream = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        return f"not a numeric .npy array ({exc})"
    if dtype.hasobject:
        return "holds Python objects, not numbers"
    need, have = math.prod(int(n) for n in shape) * dtype.itemsize, len(data) - stream.tell()
    if need != have:
        return f"its header describes {shape} {dtype} ({need} bytes) but the file holds {have} bytes of data"
    return None


def read_npy(path: Path, *, error: ErrorType, fix: str) -> np.ndarray:
    """A numeric .npy array (object arrays and pickles refused, the header checked against the data before anything is
    allocated), or `error`."""
    path = Path(path)
    data = read_bytes(path, error=error, fix=fix)
    if (problem := _npy_header_problem(data)) is not None:
        raise error(f"{path}: {problem}; fix: {fix}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise error(f"{path}: not a numeric .npy array ({exc}); fix: {fix}") from None
    return array  # an object dtype was refused with the header


def read_tensors(path: Path, *, error: ErrorType, fix: str) -> dict[str, Any]:
    """Tensors of a safetensors file (never unpickled), or `error` for a truncated or malformed file."""
    return read_tensors_with_metadata(path, error=error, fix=fix)[0]


def _not_safetensors(path: Path, exc: Exception, *, error: ErrorType, fix: str) -> GenoPipelineError:
    return error(f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt; fix: {fix}")


def read_tensor_bytes(path: Path, *, error: ErrorType, fix: str) -> dict[str, TensorBytes]:
    """The tensors of a safetensors file as the bytes it stores (no torch; never unpickled), checked by safetensors
    itself as `read_tensors` is, or `error` for a truncated or malformed file."""
    from safetensors import SafetensorError, deserialize

    path = Path(path)
    data = read_bytes(path, error=error, fix=fix)
    try:
        entries = deserialize(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise _not_safetensors(path, exc, error=error, fix=fix) from None
    return {str(name): TensorBytes(str(e["dtype"]), tuple(int(n) for n in e["shape"]), bytes(e["data"])) for name, e in entries}


def read_tensors_with_metadata(path: Path, *, error: ErrorType, fix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and the `__metadata__` strings of a safetensors file (never unpickled), or `error` for a truncated or
    malformed file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = read_bytes(path, error=error, fix=fix)
    try:
        tensors = dict(load(data))
        (size,) = struct.unpack("<Q", data[:8])  # load() has checked the header: 8-byte length, then that much JSON
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, RuntimeError, struct.error) as exc:
        raise _not_safetensors(path, exc, error=error, fix=fix) from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}
