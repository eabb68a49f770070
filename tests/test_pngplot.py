"""The PNG charts: valid PNG files (chunk CRCs, the pixels they were given), the same bytes for the same data, and
charts drawn for every series shape a run can produce."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.training.pngplot import HEIGHT, WIDTH, Series, line_chart_png, png_bytes


def decode(data: bytes) -> np.ndarray:
    """A minimal reader for what `png_bytes` writes (8-bit RGB, filter 0), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * 3)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_png_bytes_holds_exactly_the_pixels(height: int, width: int, seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    assert np.array_equal(decode(png_bytes(image)), image)


values = st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf))


@given(st.lists(st.lists(values, min_size=0, max_size=30), min_size=1, max_size=3))
def test_charts_of_any_series_are_valid_and_deterministic(ys: list[list[float]]) -> None:
    series = [Series(f"series {i}", [float(x) for x in range(len(y))], y) for i, y in enumerate(ys)]
    first = line_chart_png("A chart", "step", series)
    assert first == line_chart_png("A chart", "step", series)
    image = decode(first)
    assert image.shape == (HEIGHT, WIDTH, 3)
    blue = int((image == np.array([31, 119, 180], dtype=np.uint8)).all(axis=-1).sum())
    swatch = 7 * 8  # the legend's colour box
    points = [y for y in ys[0] if math.isfinite(y)]
    if len(ys) == 1:  # (a later series may be drawn over the first)
        assert blue > swatch if points else blue == swatch  # the line is drawn where the series has points
