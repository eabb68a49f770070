"""Line charts as PNG files, from numpy and zlib alone: readable offline, in a model card, without a browser.

A chart is a title, axes with five labelled ticks each, one coloured polyline per series and a legend. Text is drawn
with a built-in 5x7 bitmap font (upper case, digits and a few signs), so the bytes depend only on the data: the same
series give the same file.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Series", "line_chart_png", "png_bytes"]

# 5x7 glyphs: seven rows of five bits, most significant bit on the left
_GLYPHS: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 10, 4, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8), "-": (0, 0, 0, 31, 0, 0, 0), "+": (0, 4, 4, 31, 4, 4, 0),
    "/": (1, 1, 2, 4, 8, 16, 16), "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8), "=": (0, 0, 31, 0, 31, 0, 0),
    ":": (0, 12, 12, 0, 12, 12, 0), "%": (24, 25, 2, 4, 8, 19, 3), "_": (0, 0, 0, 0, 0, 0, 31),
}  # fmt: skip
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
_INK, _GRID, _PAPER = (40, 40, 40), (225, 225, 225), (255, 255, 255)
WIDTH, HEIGHT = 640, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 16, 40, 44


@dataclass(frozen=True)
class Series:
    """One line of a chart: its legend label, x and y values (non-finite points are skipped)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB uint8 [H, W, 3] image as PNG bytes (8-bit truecolour, no filter, zlib level 9)."""
    height, width, _ = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _text(image: np.ndarray, text: str, x: int, y: int, *, scale: int = 1, colour: tuple[int, int, int] = _INK) -> None:
    """Draw `text` (upper-cased; unknown characters as spaces) with its top-left corner at (x, y)."""
    for i, char in enumerate(text.upper()):
        rows = _GLYPHS.get(char, _GLYPHS[" "])
        for r, bits in enumerate(rows):
            for c in range(5):
                if bits >> (4 - c) & 1:
                    top, left = y + r * scale, x + (i * 6 + c) * scale
                    image[max(top, 0) : max(top + scale, 0), max(left, 0) : max(left + scale, 0)] = colour


def _text_width(text: str, scale: int = 1) -> int:
    return len(text) * 6 * scale


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """`count` evenly spaced values from `low` to `high`."""
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _label(value: float, integral: bool = False) -> str:
    """A tick label: a whole number on an integral axis (steps), else three significant digits."""
    return f"{round(value):d}" if integral else f"{value:.3g}".upper()


def _segments(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A 2-pixel polyline through the pixel points (xs, ys)."""
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1], strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px = np.rint(np.linspace(x0, x1, steps)).astype(int)
        py = np.rint(np.linspace(y0, y1, steps)).astype(int)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            image[np.clip(py + dy, 0, image.shape[0] - 1), np.clip(px + dx, 0, image.shape[1] - 1)] = colour


def _bounds(series: Sequence[Series]) -> tuple[float, float, float, float]:
    xs = [v for s in series for v in s.x if math.isfinite(v)]
    ys = [v for s in series for y, v in zip(s.x, s.y, strict=True) if math.isfinite(v) and math.isfinite(y)]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    return x0, (x1 if x1 > x0 else x0 + 1.0), y0 - pad, y1 + pad


def line_chart_png(title: str, x_label: str, series: Sequence[Series]) -> bytes:
    """A line chart of `series` on shared axes, as PNG bytes."""
    image = np.full((HEIGHT, WIDTH, 3), _PAPER, dtype=np.uint8)
    x0, x1, y0, y1 = _bounds(series)
    left, right, top, bottom = _LEFT, WIDTH - _RIGHT, _TOP, HEIGHT - _BOTTOM

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for value in _ticks(y0, y1):
        row = round(py(value))
        image[row, left:right] = _GRID
        _text(image, _label(value), left - 6 - _text_width(_label(value)), row - 3)
    integral = all(float(x).is_integer() for s in series for x in s.x)
    for value in _ticks(x0, x1):
        col, label = round(px(value)), _label(value, integral)
        image[top:bottom, col] = _GRID
        _text(image, label, min(col - _text_width(label) // 2, WIDTH - 2 - _text_width(label)), bottom + 6)
    image[top:bottom, left] = _INK
    image[bottom, left:right] = _INK
    _text(image, title, left, 12, scale=2)
    _text(image, x_label, (left + right - _text_width(x_label)) // 2, HEIGHT - 16)
    for k, s in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [(px(x), py(y)) for x, y in zip(s.x, s.y, strict=True) if math.isfinite(x) and math.isfinite(y)]
        if points:
            xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
            _segments(image, xs, ys, colour) if len(points) > 1 else _segments(image, np.repeat(xs, 2), np.repeat(ys, 2), colour)
        legend_y = top + 6 + 12 * k
        legend_x = right - 12 - _text_width(s.label)
        image[legend_y : legend_y + 7, legend_x - 12 : legend_x - 4] = colour
        _text(image, s.label, legend_x, legend_y)
    return png_bytes(image)
