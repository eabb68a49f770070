"""Streaming FASTA reader: plain, gzip and bgzip (multi-member) files in bounded memory.

The file is read in fixed-size chunks (decompressed chunk by chunk). Each chunk is classified with one
256-entry lookup table and split into lines and records with array operations: Python runs once per
chunk and once per header or comment line, never once per sequence line or base. Chunks may end in
the middle of a line; the parser carries only which kind of line it is in (and a header's bytes).

Alphabet: A C G T N in either case. IUPAC ambiguity codes (R Y K M S W B D H V, either case) become N
and are counted per record; lowercase (soft-masked) bases are counted per record. Spaces, tabs and CR
inside sequence lines are ignored; blank lines and lines starting with ';' are skipped. Any other
character is an error naming the file, record, line, column and character.

Memory: the selected records' codes (one byte per base, grown in place) plus a few chunk-sized
temporaries; records that `select` leaves out are checked and counted but not kept.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from geno_pipeline.data.genome import N_CODE, RecordStats, Reference
from geno_pipeline.errors import DataError, shorten
from geno_pipeline.readers import read_chunks

__all__ = ["CHUNK_BYTES", "IUPAC_CODES", "class_table", "classify", "read_fasta"]

CHUNK_BYTES = 4 << 20
NAME_SHOWN = 200  # characters of a record name a message quotes (a header line can be megabytes)
IUPAC_CODES = "RYKMSWBDHV"

# One byte per input byte: the base code in the low bits, and flags.
CODE_MASK = 0x07
LOWER = 0x08  # soft-masked (lowercase) base
IUPAC = 0x10  # an ambiguity code, read as N
SKIP = 0x40  # newline or white space: not sequence
INVALID = 0x80

_NEWLINE, _HEADER, _COMMENT = 0x0A, ord(">"), ord(";")
_BOM = b"\xef\xbb\xbf"
_INFLATE_SLICE = 64 << 10
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_FIX = "the file is damaged (an interrupted download or copy?): fetch it again, check it with `gzip -t`, or use a plain FASTA"
_READ_FIX = "point data.fasta_path at a readable FASTA file under genomes/"
_ALPHABET_FIX = "use A, C, G, T, N or IUPAC ambiguity codes (R Y K M S W B D H V), in either case"


def class_table() -> np.ndarray:
    """The 256-entry table from an input byte to its class: base code | LOWER | IUPAC, SKIP or INVALID."""
    table = np.full(256, INVALID, dtype=np.uint8)
    for code, base in enumerate("ACGTN"):
        table[ord(base)] = code
        table[ord(base.lower())] = code | LOWER
    for base in IUPAC_CODES:
        table[ord(base)] = N_CODE | IUPAC
        table[ord(base.lower())] = N_CODE | IUPAC | LOWER
    for space in b" \t\r\n\v\f":
        table[space] = SKIP
    return table


_TABLE = class_table()
# The same table over byte pairs (65536 entries, native byte order): one lookup classifies two bytes, about 3x faster.
_PAIR_TABLE = _TABLE[np.arange(65536, dtype=np.uint16).view(np.uint8)].view(np.uint16)


def classify(data: np.ndarray) -> np.ndarray:
    """The class of every byte of `data` (uint8), looked up two bytes at a time."""
    out = np.empty(data.size, dtype=np.uint8)
    even = data.size & ~1
    np.take(_PAIR_TABLE, data[:even].view(np.uint16), out=out[:even].view(np.uint16))
    if even < data.size:
        out[even] = _TABLE[data[even]]
    return out


def _show(byte: int) -> str:
    return repr(chr(byte)) if 0x20 <= byte < 0x7F else f"byte 0x{byte:02x}"


class _Parser:
    """The state between chunks: records so far, the kept codes, and the line the last chunk ended in."""

    def __init__(self, path: Path, select: Callable[[str], bool] | None, capacity: int, max_bases: int | None = None) -> None:
        self.path = path
        self.max_bases = max_bases
        self.select = select
        self.codes = np.empty(max(capacity, 1), dtype=np.uint8)
        self.size = 0
        self.records: list[RecordStats] = []
        self.header_lines: dict[str, int] = {}
        self.current: RecordStats | None = None
        self.lines = 0  # newlines before the current chunk
        self.consumed = 0  # bytes before the current chunk
        self.partial: int | None = None  # the first byte of the unfinished line the last chunk ended in (None: at a line start)
        self.partial_start = 0  # stream offset where that line starts
        self.header = bytearray()  # bytes of an unfinished header line
        # per-chunk line tables, for error positions
        self._ends = np.empty(0, dtype=np.int64)
        self._data = np.empty(0, dtype=np.uint8)

    # ---- chunk work ----
    def feed(self, block: bytes | memoryview) -> None:
        data = np.frombuffer(block, dtype=np.uint8)
        if data.size == 0:
            return
        self._data = data
        classes = classify(data)
        ends = np.flatnonzero(data == _NEWLINE)
        self._ends = ends
        starts = ends + 1
        if starts.size and starts[-1] == data.size:
            starts = starts[:-1]
        if self.partial is None:
            starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
        cursor = self._finish_partial_line(block, classes, ends)
        kinds = data[starts]
        for start in starts[(kinds == _HEADER) | (kinds == _COMMENT)].tolist():
            end_index = int(np.searchsorted(ends, start))
            end = int(ends[end_index]) if end_index < ends.size else data.size
            classes[start:end] = SKIP
            if data[start] == _COMMENT:
                continue
            self._sequence(classes, cursor, start)
            self._close()
            if end == data.size:  # the header continues in the next chunk
                self.header = bytearray(block[start + 1 : end])
            else:
                self._open(bytes(block[start + 1 : end]), self.lines + end_index + 1)
            cursor = end
        self._sequence(classes, cursor, data.size)
        last_start = int(ends[-1]) + 1 if ends.size else None
        if last_start is None:  # the whole chunk is one line, or continues one
            if self.partial is None:
                self.partial, self.partial_start = int(data[0]), self.consumed
        elif last_start < data.size:
            self.partial, self.partial_start = int(data[last_start]), self.consumed + last_start
        else:
            self.partial = None
        if self.partial != _HEADER:
            self.header = bytearray()
        self.lines += int(ends.size)
        self.consumed += int(data.size)

    def _finish_partial_line(self, block: bytes | memoryview, classes: np.ndarray, ends: np.ndarray) -> int:
        """Handle the head of a chunk that continues a header or comment line; returns where sequence may start."""
        if self.partial not in (_HEADER, _COMMENT):
            return 0
        end = int(ends[0]) if ends.size else classes.size
        classes[:end] = SKIP
        if self.partial == _HEADER:
            self.header += bytes(block[:end])
            if ends.size:
                self._open(bytes(self.header), self.lines + 1)
        return end

    def _sequence(self, classes: np.ndarray, start: int, stop: int) -> None:
        """Append classes[start:stop] (sequence lines and skipped bytes) to the current record."""
        part = classes[start:stop]
        if part.size == 0:
            return
        if self.current is None:
            found = np.flatnonzero(part != SKIP)
            if found.size:
                line, _ = self._position(start + int(found[0]))
                raise DataError(f"{self.path}: line {line}: sequence before the first '>' header; fix: add a header line")
            return
        if int(part.max()) >= INVALID:
            self._invalid(start + int(np.argmax(part >= INVALID)))
        seq = part[part < SKIP]
        if seq.size == 0:
            return
        record = self.current
        record.length += int(seq.size)
        record.soft_masked_bases += int(np.count_nonzero(seq & LOWER))
        record.iupac_bases += int(np.count_nonzero(seq >= IUPAC))
        if not record.selected:
            record.n_bases += int(np.count_nonzero((seq & CODE_MASK) == N_CODE))
            return
        out = self._reserve(int(seq.size))
        np.bitwise_and(seq, CODE_MASK, out=out)
        record.n_bases += int(np.count_nonzero(out == N_CODE))

    def _reserve(self, n: int) -> np.ndarray:
        need = self.size + n
        if self.max_bases is not None and need > self.max_bases:  # checked as the stream inflates, before memory grows
            raise DataError(
                f"{self.path}: the records kept hold more than {self.max_bases} bases, more than this machine's memory can hold "
                "while the dataset is built (a gzip file can inflate far beyond what DNA does); fix: select fewer records "
                "(data.records), use a smaller reference, or a machine with more memory"
            )
        if need > self.codes.size:  # grow in place (realloc): no second copy of the genome
            self.codes.resize(max(need, self.codes.size + self.codes.size // 4 + CHUNK_BYTES), refcheck=False)
        out = self.codes[self.size : need]
        self.size = need
        return out

    def _position(self, index: int) -> tuple[int, int]:
        """(line, column), 1-based, of byte `index` of the current chunk."""
        before = int(np.searchsorted(self._ends, index))
        if before:
            line_start = self.consumed + int(self._ends[before - 1]) + 1
        else:
            line_start = self.consumed if self.partial is None else self.partial_start
        return self.lines + before + 1, self.consumed + index - line_start + 1

    def _invalid(self, index: int) -> None:
        line, column = self._position(index)
        name = self.current.name if self.current is not None else "?"
        raise DataError(
            f"{self.path}: line {line}, column {column}: invalid character {_show(int(self._data[index]))} in record "
            f"'{shorten(name, NAME_SHOWN)}'; fix: {_ALPHABET_FIX}"
        )

    # ---- records ----
    def _open(self, header: bytes, line: int) -> None:
        text = header.decode("utf-8", errors="replace").strip()
        name = text.split()[0] if text else f"record{len(self.records) + 1}"
        if name in self.header_lines:
            raise DataError(
                f"{self.path}: line {line}: record name {shorten(repr(name), NAME_SHOWN)} is used again "
                f"(first at line {self.header_lines[name]}); "
                "fix: give every record a unique name (the first word of its '>' line)"
            )
        self.header_lines[name] = line
        keep = self.select is None or self.select(name)
        self.current = RecordStats(name=name, line=line, offset=self.size if keep else None)
        self.records.append(self.current)
        self.header = bytearray()

    def _close(self) -> None:
        record = self.current
        if record is not None and record.length == 0:
            raise DataError(
                f"{self.path}: record '{shorten(record.name, NAME_SHOWN)}' (line {record.line}) has no sequence; "
                "fix: remove it or add its sequence"
            )
        self.current = None

    def finish(self, sha256: str) -> Reference:
        if self.partial == _HEADER:
            self._open(bytes(self.header), self.lines + 1)
        self._close()
        if not self.records:
            raise DataError(f"{self.path}: empty FASTA (no records); fix: provide at least one '>' record with sequence")
        self.codes.resize(self.size, refcheck=False)
        return Reference(self.codes, self.records, sha256)


def _inflate(path: Path, raws: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """Decompress gzip members one after another (plain gzip, concatenated gzip, bgzip), at most `limit` bytes at a time.

    Input goes to zlib in small slices: zlib copies the input left over after each member, and a bgzip
    file has a member every 64 KiB, so whole chunks would be copied over and over.
    """
    member: zlib._Decompress | None = None
    members = 0
    for raw in raws:
        view = memoryview(raw)
        for first in range(0, len(view), _INFLATE_SLICE):
            data: bytes | memoryview = view[first : first + _INFLATE_SLICE]
            while data:
                if member is None:
                    if members and not bytes(data).strip(b"\x00"):
                        break  # zero padding after the last member, which gzip accepts too
                    member = zlib.decompressobj(wbits=31)
                try:
                    out = member.decompress(data, limit)
                except zlib.error as exc:
                    damaged = members == 0 or bytes(data[:2]) == _GZIP_MAGIC
                    what = "corrupt gzip data" if damaged else "data after the gzip stream that is not gzip"
                    raise DataError(f"{path}: {what} ({exc}); fix: {_GZIP_FIX}") from None
                if out:
                    yield out
                if member.eof:
                    data, member, members = member.unused_data, None, members + 1
                else:
                    data = member.unconsumed_tail
    while member is not None and not member.eof:  # input ended: drain what inflate still holds
        try:
            out = member.decompress(b"", limit)
        except zlib.error as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc}); fix: {_GZIP_FIX}") from None
        if not out:
            raise DataError(f"{path}: truncated gzip data (the stream ends early); fix: {_GZIP_FIX}")
        yield out


def _coalesced(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Join small pieces into chunks of about `size` bytes (fewer, larger array passes)."""
    pending: list[bytes] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def _stream(path: Path, chunk_bytes: int, hasher: hashlib._Hash, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The file's decoded bytes in chunks (gzip detected by its magic bytes); hashes the raw bytes as they pass."""
    done = 0

    def raws() -> Iterator[bytes]:
        nonlocal done
        for raw in read_chunks(path, size=chunk_bytes, error=DataError, fix=_READ_FIX):
            hasher.update(raw)
            done += len(raw)
            if progress is not None:
                progress(done)
            yield raw

    chunks = raws()
    head = b""
    for raw in chunks:  # the first bytes decide the format
        head += raw
        if len(head) >= 2:
            break
    rest = _chained([head], chunks)
    yield from _coalesced(_inflate(path, rest, chunk_bytes), chunk_bytes) if head[:2] == _GZIP_MAGIC else rest


def _chained(first: list[bytes], then: Iterator[bytes]) -> Iterator[bytes]:
    yield from (b for b in first if b)
    yield from then


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Drop a UTF-8 byte-order mark at the start of the text (it is not sequence)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(_BOM):
            break
    yield head.removeprefix(_BOM)
    yield from chunks


def read_fasta(
    path: Path,
    *,
    select: Callable[[str], bool] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    max_bases: int | None = None,
) -> Reference:
    """Read a plain or gzipped (also multi-member or bgzip) FASTA in chunks, keeping the records `select` accepts.

    Every record is checked and counted; `progress` is called with the raw bytes read so far. Raises
    `DataError` naming the file (and the record, line and column where they apply) for a missing or empty
    file, sequence before the first header, an empty record, a repeated record name, a character outside
    the alphabet, a truncated or corrupt gzip stream, or more kept bases than `max_bases` (checked as it streams).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: FASTA file not found (data.fasta_path); fix: point data.fasta_path at an existing file under genomes/")
    size = path.stat().st_size if path.is_file() else 0
    hasher = hashlib.sha256()
    parser = _Parser(
        path, select, capacity=size if max_bases is None else min(size, max_bases), max_bases=max_bases
    )  # plain text holds at most one base per byte; gzip grows in place
    for chunk in _without_bom(_stream(path, chunk_bytes, hasher, progress)):
        parser.feed(chunk)
    return parser.finish(hasher.hexdigest())
