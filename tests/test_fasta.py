"""Real genomes: the streaming FASTA reader, windows at scale, record selection and chromosome hold-out."""

from __future__ import annotations

import dataclasses
import gzip
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.config import DataParams
from geno_pipeline.data.dataset import TRAIN_COORDS_FILE, VALID_COORDS_FILE, build_dataset, load_dataset
from geno_pipeline.data.fasta import IUPAC_CODES, read_fasta
from geno_pipeline.data.genome import RecordStats, Reference
from geno_pipeline.data.windows import candidate_slots, draw_split, gather_windows, n_free_runs, slot_starts
from geno_pipeline.errors import DataError
from tests.conftest import write_params
from tools.bench import bgzf_compress
from tools.benchio import fasta_lines

LETTERS = "ACGTNacgtn" + IUPAC_CODES + IUPAC_CODES.lower()


# ---------------------------------------------------------------- the reference decoder


def reference_decode(text: bytes) -> list[tuple[str, list[int], int, int]]:
    """The specification, one line and one character at a time: (name, codes, IUPAC count, lowercase count) per record."""
    records: list[tuple[str, list[int], list[int]]] = []
    for line in text.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        if line.startswith(b">"):
            words = line[1:].decode("utf-8", "replace").split()
            records.append((words[0] if words else f"record{len(records) + 1}", [], [0, 0]))
            continue
        if line.startswith(b";"):
            continue
        for char in line.decode("ascii"):
            if char in " \t\r\v\f":
                continue
            _, codes, counts = records[-1]
            upper = char.upper()
            if upper in "ACGTN":
                codes.append("ACGTN".index(upper))
            else:
                assert upper in IUPAC_CODES, char
                codes.append(4)
                counts[0] += 1
            counts[1] += char.islower()
    return [(name, codes, counts[0], counts[1]) for name, codes, counts in records]


def streamed(reference: Reference) -> list[tuple[str, list[int], int, int]]:
    return [(r.name, reference.sequence(r).tolist(), r.iupac_bases, r.soft_masked_bases) for r in reference.records]


# ---------------------------------------------------------------- a FASTA strategy

_seq_line = st.text(alphabet=LETTERS, min_size=1, max_size=40)
_line = st.one_of(
    _seq_line,
    _seq_line.map(lambda s: f" {s}\t"),  # white space around sequence is ignored
    st.just(""),  # blank line
    st.text(alphabet="abc >;", max_size=10).map(lambda s: ";" + s),  # comment
)


@st.composite
def fasta_texts(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 4))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    parts = []
    for index in range(n):
        description = draw(st.sampled_from(["", " some description", "\tx y"]))
        lines = draw(st.lists(_line, min_size=1, max_size=8))
        lines.append(draw(_seq_line))  # at least one base per record
        parts.append(f">r{index}{description}" + eol + eol.join(lines))
    text = eol.join(parts) + draw(st.sampled_from([eol, ""]))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode()


def _pack(text: bytes, how: str, cut: int) -> tuple[str, bytes]:
    if how == "plain":
        return "ref.fa", text
    if how == "gzip":
        return "ref.fa.gz", gzip.compress(text, mtime=0)
    if how == "members":  # two gzip members, split anywhere
        cut = cut % (len(text) + 1)
        return "ref.fa.gz", gzip.compress(text[:cut], mtime=0) + gzip.compress(text[cut:], mtime=0)
    return "ref.fa.gz", bgzf_compress(text)


@settings(max_examples=300, deadline=None)
@given(
    text=fasta_texts(),
    chunk=st.integers(1, 64),
    how=st.sampled_from(["plain", "gzip", "members", "bgzip"]),
    cut=st.integers(0, 10_000),
)
def test_fasta_streamed_codes_equal_reference_decoder_for_any_chunking(text: bytes, chunk: int, how: str, cut: int) -> None:
    name, data = _pack(text, how, cut)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        reference = read_fasta(path, chunk_bytes=chunk)
    assert streamed(reference) == reference_decode(text)
    for record in reference.records:
        assert record.length == len(reference.sequence(record))
        assert record.n_bases == int(np.count_nonzero(reference.sequence(record) == 4))


@settings(max_examples=100, deadline=None)
@given(text=fasta_texts(), chunk=st.integers(1, 64), keep=st.sets(st.sampled_from(["r0", "r1", "r2", "r3"])))
def test_fasta_selected_records_only_are_kept_every_record_is_counted(text: bytes, chunk: int, keep: set[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref.fa"
        path.write_bytes(text)
        reference = read_fasta(path, chunk_bytes=chunk, select=keep.__contains__)
    expected = reference_decode(text)
    assert [r.name for r in reference.records] == [e[0] for e in expected]
    assert [(r.length, r.iupac_bases, r.soft_masked_bases) for r in reference.records] == [(len(e[1]), e[2], e[3]) for e in expected]
    kept = [e for e in expected if e[0] in keep]
    assert reference.codes.tolist() == [c for e in kept for c in e[1]]
    assert [r.name for r in reference.selected] == [e[0] for e in kept]


# ---------------------------------------------------------------- formats and errors


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_fasta_multi_record_iupac_softmask_n_runs(tmp_path: Path) -> None:
    text = b">chr1 first record\nACGTRYKMacgtnnNN\nSWBDHVswbdhv\n>chr2\nNNNNNNNNNN\nacgtACGT\n"
    reference = read_fasta(_write(tmp_path, "ref.fa", text))
    one, two = reference.records
    assert (one.name, one.length, one.n_bases, one.iupac_bases, one.soft_masked_bases) == ("chr1", 28, 4 + 4 + 12, 16, 4 + 2 + 6)
    assert (two.name, two.length, two.n_bases, two.iupac_bases, two.soft_masked_bases) == ("chr2", 18, 10, 0, 4)
    assert reference.sequence(two).tolist() == [4] * 10 + [0, 1, 2, 3] * 2


def test_fasta_crlf_blank_lines_comments_and_bom(tmp_path: Path) -> None:
    text = b"\xef\xbb\xbf; a comment before the first record\r\n\r\n>r1 x\r\nACGT\r\n\r\n; comment > inside\r\nacgt\r\n>r2\r\nNNAC"
    reference = read_fasta(_write(tmp_path, "ref.fa", text), chunk_bytes=3)
    assert streamed(reference) == [("r1", [0, 1, 2, 3] * 2, 0, 4), ("r2", [4, 4, 0, 1], 0, 0)]


def test_fasta_bgzip_multi_member_equals_plain(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b"ACGTacgtN", dtype=np.uint8)[rng.integers(0, 9, 300_000)]
    text = b">a\n" + fasta_lines(letters[:200_000]) + b">b desc\n" + fasta_lines(letters[200_000:])
    packed = bgzf_compress(text)
    assert packed.count(b"\x1f\x8b\x08\x04") >= 5  # several BGZF members plus the EOF block
    plain = read_fasta(_write(tmp_path, "ref.fa", text))
    bgzip = read_fasta(_write(tmp_path, "ref.fa.gz", packed), chunk_bytes=4096)
    assert streamed(bgzip) == streamed(plain)
    assert bgzip.sha256 != plain.sha256  # the sha256 is of the file's own bytes
    padded = read_fasta(_write(tmp_path, "pad.fa.gz", gzip.compress(text) + b"\x00" * 100))  # zero padding is accepted
    assert streamed(padded) == streamed(plain)


_RANDOM_FASTA = b">r\n" + fasta_lines(np.frombuffer(b"ACGT", dtype=np.uint8)[np.random.default_rng(0).integers(0, 4, 20_000)])


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (gzip.compress(_RANDOM_FASTA)[:-100], "truncated gzip data"),
        (gzip.compress(_RANDOM_FASTA) + b"garbage!", "data after the gzip stream that is not gzip"),
        (b"\x1f\x8b" + b"\x00" * 40, "corrupt gzip data"),
    ],
    ids=["truncated", "trailing-garbage", "corrupt-header"],
)
def test_fasta_damaged_gzip_is_one_error_with_a_fix(tmp_path: Path, data: bytes, needle: str) -> None:
    with pytest.raises(DataError, match=needle) as caught:
        read_fasta(_write(tmp_path, "ref.fa.gz", data), chunk_bytes=1000)
    assert "ref.fa.gz" in str(caught.value) and "fix:" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b">chr1\nACGT\n>chr2\nAC\nAC-T\n", "line 5, column 3: invalid character '-' in record 'chr2'"),
        (b">chr1\nACGU\n", "line 2, column 4: invalid character 'U' in record 'chr1'"),
        (b">chr1\nAC\xc3\xa9\n", "line 2, column 3: invalid character byte 0xc3 in record 'chr1'"),
        (b">a\nAC\n>a\nGT\n", "line 3: record name 'a' is used again (first at line 1)"),
        (b"ACGT\n>a\nAC\n", "line 1: sequence before the first '>' header"),
        (b">a\n\n>b\nAC\n", "record 'a' (line 1) has no sequence"),
    ],
)
def test_fasta_bad_input_names_file_record_line_column(tmp_path: Path, text: bytes, needle: str) -> None:
    for chunk in (1, 5, 1 << 20):
        with pytest.raises(DataError, match=re.escape(needle)) as caught:
            read_fasta(_write(tmp_path, "ref.fa", text), chunk_bytes=chunk)
        assert str(caught.value).startswith(f"{tmp_path}/ref.fa: ") and "; fix: " in str(caught.value)


# ---------------------------------------------------------------- windows at scale


def naive_slots(codes: list[int], slot: int) -> list[int]:
    """Slot starts packed left to right in each maximal N-free run, one base at a time."""
    out, run_start = [], None
    for i, code in enumerate([*codes, 4]):
        if code != 4 and run_start is None:
            run_start = i
        elif code == 4 and run_start is not None:
            out += [run_start + k * slot for k in range((i - run_start) // slot)]
            run_start = None
    return out


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.tuples(st.booleans(), st.integers(1, 40)), min_size=1, max_size=30),
    slot=st.integers(1, 17),
    block=st.integers(1, 50),
)
def test_slots_equal_naive_enumeration_whatever_the_scan_block(runs: list[tuple[bool, int]], slot: int, block: int) -> None:
    codes = np.concatenate([np.full(n, 4 if is_n else 1, dtype=np.uint8) for is_n, n in runs])
    starts, ends = n_free_runs(codes, block=block)
    assert slot_starts(starts, ends, slot).tolist() == naive_slots(codes.tolist(), slot)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    lengths=st.lists(st.integers(20, 400), min_size=2, max_size=5),
    hold=st.integers(0, 4),
    slot=st.integers(4, 12),
)
def test_draw_split_disjoint_seeded_and_held_out(seed: int, lengths: list[int], hold: int, slot: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 5, sum(lengths)).astype(np.uint8)
    offsets = np.cumsum([0, *lengths])
    reference = Reference(codes, [RecordStats(f"r{i}", 1, int(offsets[i]), n) for i, n in enumerate(lengths)])
    slots = candidate_slots(reference, slot)
    held = np.zeros(len(lengths), dtype=bool)
    held[hold % len(lengths)] = True
    n_valid = int(np.count_nonzero(held[slots.record]))
    n_train = slots.count - n_valid
    for valid_records in (None, held):
        t_n, v_n = (n_train // 2, n_valid // 2) if valid_records is not None else (slots.count // 3, slots.count // 3)
        train, valid = draw_split(slots, seed=seed, train_windows=t_n, valid_windows=v_n, valid_records=valid_records)
        again = draw_split(slots, seed=seed, train_windows=t_n, valid_windows=v_n, valid_records=valid_records)
        assert train.tolist() == again[0].tolist() and valid.tolist() == again[1].tolist()
        assert (train.size, valid.size) == (t_n, v_n) and not set(train.tolist()) & set(valid.tolist())
        assert train.tolist() == sorted(train.tolist()) and valid.tolist() == sorted(valid.tolist())
        if valid_records is not None:
            assert held[slots.record[valid]].all() and not held[slots.record[train]].any()
        windows = gather_windows(codes, slots.start[train], slot)
        assert all((codes[s : s + slot] == w).all() and (w < 4).all() for s, w in zip(slots.start[train], windows, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    lengths=st.lists(st.integers(60, 400), min_size=3, max_size=5),
    hold=st.integers(0, 4),
    slot=st.integers(4, 12),
    data=st.data(),
)
def test_draw_split_each_purpose_draws_from_its_own_stream(
    seed: int, lengths: list[int], hold: int, slot: int, data: st.DataObject
) -> None:
    """What the per-purpose streams are for: the windows of one split stay where they are when only the other split's
    inputs change. With held-out records, the validation windows (their genome positions) do not move when a training
    record is left out or fewer training windows are asked for, and the training windows do not move when another
    number of validation windows is asked for or a held-out record's slots are gone; with a random split, the training
    windows do not move when only data.valid_windows changes."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, sum(lengths)).astype(np.uint8)
    offsets = np.cumsum([0, *lengths])
    records = [RecordStats(f"r{i}", 1, int(offsets[i]), n) for i, n in enumerate(lengths)]
    held = np.zeros(len(lengths), dtype=bool)
    held[hold % len(lengths)] = True
    held[(hold + 1) % len(lengths)] = True  # two held-out records, one of which can go

    def positions(kept: list[bool], t_n: int, v_n: int, valid_records: np.ndarray | None) -> tuple[list[int], list[int]]:
        reference = Reference(codes, [r if keep else dataclasses.replace(r, offset=None) for r, keep in zip(records, kept, strict=True)])
        slots = candidate_slots(reference, slot)
        train, valid = draw_split(slots, seed=seed, train_windows=t_n, valid_windows=v_n, valid_records=valid_records)
        return slots.start[train].tolist(), slots.start[valid].tolist()

    every = [True] * len(lengths)
    train_record = next(i for i in range(len(lengths)) if not held[i])
    without_train = [i != train_record for i in range(len(lengths))]
    without_held = [i != hold % len(lengths) for i in range(len(lengths))]
    pool = candidate_slots(Reference(codes, records), slot)
    n_valid = int(np.count_nonzero(held[pool.record]))
    n_train = pool.count - n_valid
    t_n = data.draw(st.integers(1, max(1, (n_train - lengths[train_record] // slot) // 2)))
    v_n = data.draw(st.integers(1, max(1, (n_valid - lengths[hold % len(lengths)] // slot) // 2)))
    train, valid = positions(every, t_n, v_n, held)
    assert positions(without_train, t_n, v_n, held)[1] == valid  # a training record fewer: the same validation windows
    assert positions(every, max(1, t_n // 2), v_n, held)[1] == valid
    assert positions(every, t_n, max(1, v_n // 2), held)[0] == train  # fewer validation windows: the same training windows
    assert positions(without_held, t_n, v_n, held)[0] == train  # a held-out record fewer: the same training windows
    third = pool.count // 3
    assert positions(every, third, third, None)[0] == positions(every, third, max(1, third // 2), None)[0]


# ---------------------------------------------------------------- the data stage on several records


def _genome(tmp_path: Path) -> tuple[bytes, dict[str, list[int]]]:
    rng = np.random.default_rng(7)
    text = b""
    for index, name in enumerate(["chrA", "chrB", "chrC", "chrD"]):
        letters = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, 12_000 + 1000 * index)].copy()
        letters[500:700] = ord("N")  # an assembly gap
        letters[2000:2600] |= 0x20  # soft-masked
        letters[rng.choice(np.arange(3000, letters.size), 5, replace=False)] = ord("R")  # outside the gap
        text += f">{name} test record\n".encode() + fasta_lines(letters, width=70 - index)
    (tmp_path / "genomes").mkdir(exist_ok=True)
    (tmp_path / "genomes" / "multi.fa").write_bytes(text)
    return text, {name: codes for name, codes, _, _ in reference_decode(text)}


def _data_params(**extra: object) -> DataParams:
    values: dict[str, object] = {
        "source": "fasta",
        "fasta_path": "genomes/multi.fa",
        "window_length": 64,
        "flank_length": 16,
        "train_windows": 150,
        "valid_windows": 40,
    }
    return DataParams(**{**values, **extra})  # type: ignore[arg-type]


def _assert_windows_at_coordinates(out: Path, codes: dict[str, list[int]]) -> None:
    ds = load_dataset(out)
    names = [r.name for r in ds.manifest.records]
    for windows, coords_file in ((ds.train, TRAIN_COORDS_FILE), (ds.valid, VALID_COORDS_FILE)):
        coords = np.load(out / coords_file)
        assert coords.shape == (windows.shape[0], 2)
        for window, (record, start) in zip(windows, coords.tolist(), strict=True):
            assert window.tolist() == codes[names[record]][start : start + windows.shape[1]]


def test_data_chromosome_hold_out(tmp_path: Path) -> None:
    text, codes = _genome(tmp_path)
    params = _data_params(records=["chrA", "chrB", "chrC"], valid_records=["chrC"])
    manifest = build_dataset(params, root=tmp_path, out_dir=tmp_path / "ds").manifest
    roles = {r.name: r.role for r in manifest.records}
    assert roles == {"chrA": "train", "chrB": "train", "chrC": "valid", "chrD": "excluded"}
    train_coords, valid_coords = np.load(tmp_path / "ds" / TRAIN_COORDS_FILE), np.load(tmp_path / "ds" / VALID_COORDS_FILE)
    assert set(valid_coords[:, 0].tolist()) == {2}  # every validation window from chrC
    assert not {2, 3} & set(train_coords[:, 0].tolist())  # no training window from chrC or the excluded chrD
    _assert_windows_at_coordinates(tmp_path / "ds", codes)
    by_name = {r.name: r for r in manifest.records}
    assert sum(r.train_windows for r in manifest.records) == 150 and by_name["chrC"].valid_windows == 40
    assert by_name["chrD"].candidate_slots == 0 and by_name["chrD"].train_windows == by_name["chrD"].valid_windows == 0
    for name, _codes, iupac, lower in reference_decode(text):
        r = by_name[name]
        assert (r.length, r.iupac_bases, r.soft_masked_bases) == (len(_codes), iupac, lower)
        assert r.n_bases == _codes.count(4) == 200 + iupac


def test_data_random_split_windows_match_coordinates(tmp_path: Path) -> None:
    _, codes = _genome(tmp_path)
    manifest = build_dataset(_data_params(), root=tmp_path, out_dir=tmp_path / "ds").manifest
    assert {r.role for r in manifest.records} == {"train+valid"}
    _assert_windows_at_coordinates(tmp_path / "ds", codes)
    again = build_dataset(_data_params(), root=tmp_path, out_dir=tmp_path / "ds2").manifest
    assert again == manifest


def _cli_data(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geno_pipeline", "data", "--root", str(root)], capture_output=True, text=True)


@pytest.mark.parametrize("key", ["records", "valid_records"])
def test_data_unknown_record_lists_the_files_records(tmp_path: Path, key: str) -> None:
    _genome(tmp_path)
    data = {"source": "fasta", "fasta_path": "genomes/multi.fa", "records": ["chrA", "chrB"], key: ["chrB", "chr7"]}
    if key == "records":
        data["valid_records"] = None
    write_params(tmp_path, data=data)
    proc = _cli_data(tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "Traceback" not in line
    if key == "records":
        assert "\n" not in line
        assert f"data.records names 'chr7', which {tmp_path}/genomes/multi.fa does not have" in line
        assert "its records are: chrA, chrB, chrC, chrD (4 records)" in line
    else:  # caught from params alone: valid_records must be among records
        assert "data.valid_records = ['chrB', 'chr7']: names chr7, not in data.records" in line
    assert not (tmp_path / "artifacts" / "dataset").exists()


def test_data_unknown_valid_record_without_records_lists_names(tmp_path: Path) -> None:
    _genome(tmp_path)
    write_params(tmp_path, data={"source": "fasta", "fasta_path": "genomes/multi.fa", "valid_records": ["chrZ"]})
    proc = _cli_data(tmp_path)
    assert proc.returncode == 2
    assert "data.valid_records names 'chrZ'" in proc.stderr and "its records are: chrA, chrB, chrC, chrD" in proc.stderr


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"records": ["chr1"]}, "data.records = ['chr1']: selects FASTA records, but source is not 'fasta'"),
        ({"source": "fasta", "fasta_path": "genomes/x.fa", "records": []}, "data.records = []: is an empty list"),
        ({"source": "fasta", "fasta_path": "genomes/x.fa", "records": ["a", "a"]}, "names a more than once"),
        (
            {"source": "fasta", "fasta_path": "genomes/x.fa", "records": ["a", "b"], "valid_records": ["b", "a"]},
            "holds every record of data.records, leaving none for training",
        ),
    ],
)
def test_data_record_lists_checked_in_params(tmp_path: Path, data: dict[str, object], needle: str) -> None:
    write_params(tmp_path, data=data)
    proc = _cli_data(tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_data_all_records_held_out_is_refused(tmp_path: Path) -> None:
    _genome(tmp_path)
    with pytest.raises(DataError, match="holds every selected record"):
        build_dataset(_data_params(records=None, valid_records=["chrA", "chrB", "chrC", "chrD"]), root=tmp_path, out_dir=tmp_path / "ds")


def test_data_hold_out_too_few_validation_slots_names_the_pool(tmp_path: Path) -> None:
    _genome(tmp_path)
    with pytest.raises(DataError, match=r"validation records \(data.valid_records\) has \d+ non-overlapping"):
        build_dataset(_data_params(valid_records=["chrA"], valid_windows=5000), root=tmp_path, out_dir=tmp_path / "ds")
