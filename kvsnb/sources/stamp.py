"""Stamp codec: burn a capture time and a frame index into a video frame, read them back.

A stamp is a band of large black and white cells across the top of the frame, placed by
fractions of the frame size, with reference cells per row and a CRC, so it reads back after
H.264 at ingest bitrates, scaling or stretching by GetImages and JPEG, and a wrong read is
detected instead of returned. The layout (``BAND_FRACTION``, ``COLUMNS``, ``ROWS``, 44 bits of
epoch ms, 24 bits of frame index, CRC-16/CCITT-FALSE) is in docs/design.md, "Stamped test
media".
"""

from __future__ import annotations

import binascii
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from kvsnb.errors import KvsnbError

logger = logging.getLogger(__name__)

BAND_FRACTION = 0.125  # the band is the top 1/8 of the frame
ROWS = 3
COLUMNS = 32
REFERENCE_COLUMNS = {0: 1, 1: 0, COLUMNS - 2: 0, COLUMNS - 1: 1}  # column -> bit (1 = white)
DATA_COLUMNS = tuple(c for c in range(COLUMNS) if c not in REFERENCE_COLUMNS)
CAPTURE_MS_BITS = 44
INDEX_BITS = 24
CRC_BITS = 16
PAYLOAD_BITS = CAPTURE_MS_BITS + INDEX_BITS
TOTAL_BITS = PAYLOAD_BITS + CRC_BITS
MAX_CAPTURE_MS = (1 << CAPTURE_MS_BITS) - 1
MAX_INDEX = (1 << INDEX_BITS) - 1
CRC_SEED = 0xFFFF
SAMPLE_OFFSETS = (-0.2, 0.0, 0.2)  # sample points inside a cell, in cell sizes from its centre
MIN_CONTRAST = 48.0  # luma levels (0-255) between the darkest white and the brightest black ref
RGB_WHITE = 255
RGB_BLACK = 0
Y_WHITE = 235
Y_BLACK = 16
CHROMA_NEUTRAL = 128
LUMA_FIRST_FORMATS = frozenset(  # PyAV pixel formats whose first plane is 8-bit luma
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601

assert len(DATA_COLUMNS) * ROWS == TOTAL_BITS


class StampError(KvsnbError, ValueError):
    """The image carries no readable stamp (no stamp found, or checksum mismatch)."""


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a stamped frame carries: its capture time and its frame index.

    ``capture_ms`` is wall-clock epoch milliseconds (0 .. 2**44-1) and ``index`` the frame
    index (0 .. 2**24-1); out-of-range values raise ``ValueError``.
    """

    capture_ms: int
    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.capture_ms <= MAX_CAPTURE_MS:
            raise ValueError(f"capture_ms {self.capture_ms} is outside 0..{MAX_CAPTURE_MS}")
        if not 0 <= self.index <= MAX_INDEX:
            raise ValueError(f"index {self.index} is outside 0..{MAX_INDEX}")


def _crc(payload: int) -> int:
    data = (payload << (72 - PAYLOAD_BITS)).to_bytes(9, "big")
    return binascii.crc_hqx(data, CRC_SEED)


def stamp_bits(stamp: Stamp) -> npt.NDArray[np.uint8]:
    """Return the 84 data bits (0/1, most significant first) that encode ``stamp``."""
    payload = (stamp.capture_ms << INDEX_BITS) | stamp.index
    word = (payload << CRC_BITS) | _crc(payload)
    bits = np.unpackbits(np.frombuffer(word.to_bytes(11, "big"), dtype=np.uint8))
    return bits[88 - TOTAL_BITS :]


def _cell_bits(stamp: Stamp) -> npt.NDArray[np.uint8]:
    """All ROWS*COLUMNS cells (row-major) as 0/1, references included."""
    cells = np.zeros((ROWS, COLUMNS), dtype=np.uint8)
    for column, bit in REFERENCE_COLUMNS.items():
        cells[:, column] = bit
    cells[:, DATA_COLUMNS] = stamp_bits(stamp).reshape(ROWS, len(DATA_COLUMNS))
    return cells.reshape(-1)


def band_height(height: int) -> int:
    """Height in pixels of the stamp band of a frame ``height`` pixels tall."""
    return max(ROWS, round(height * BAND_FRACTION))


@lru_cache(maxsize=32)
def _band_layout(height: int, width: int) -> tuple[tuple[int, ...], npt.NDArray[np.intp]]:
    """Pixel-row edges of the ROWS cell rows, and the cell column of each pixel column."""
    band = band_height(height)
    edges = tuple(int(r * band) // ROWS for r in range(ROWS + 1))
    columns = (np.arange(width) * COLUMNS) // width
    columns.setflags(write=False)
    return edges, columns


def _paint_band(plane: npt.NDArray[Any], cells: npt.NDArray[np.uint8]) -> None:
    """Write per-cell levels (ROWS, COLUMNS) into the band of an (H, W) or (H, W, C) plane."""
    edges, columns = _band_layout(plane.shape[0], plane.shape[1])
    for row in range(ROWS):
        line = cells[row][columns]
        if plane.ndim == 3:
            line = np.repeat(line, plane.shape[2]).reshape(-1, plane.shape[2])
        plane[edges[row] : edges[row + 1]] = line


def _check_size(height: int, width: int) -> None:
    if width < COLUMNS or round(height * BAND_FRACTION) < ROWS:
        raise StampError(
            f"image {width}x{height} is too small to hold a stamp: it needs at least "
            f"{COLUMNS} pixels across and {ROWS} pixel rows in its top {BAND_FRACTION:.1%}"
        )


def _check_rgb(image: npt.NDArray[Any]) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB image as a (H, W, 3) uint8 array, got {image.dtype} {image.shape}"
        )


def draw_stamp(image: npt.NDArray[Any], stamp: Stamp) -> None:
    """Burn ``stamp`` into the top band of an RGB (H, W, 3) uint8 ``image``, in place."""
    _check_rgb(image)
    height, width = image.shape[:2]
    _check_size(height, width)
    levels = np.where(_cell_bits(stamp) == 1, RGB_WHITE, RGB_BLACK).astype(np.uint8)
    _paint_band(image, levels.reshape(ROWS, COLUMNS))


def draw_stamp_yuv420p(
    y: npt.NDArray[np.uint8],
    u: npt.NDArray[np.uint8],
    v: npt.NDArray[np.uint8],
    stamp: Stamp,
) -> None:
    """Burn ``stamp`` into the planes of a YUV 4:2:0 picture, in place.

    ``y`` is (H, W); ``u`` and ``v`` are (ceil(H/2), ceil(W/2)). The band gets luma 235/16 and
    neutral chroma. Cheaper than drawing in RGB for a source that produces YUV directly.
    """
    if y.ndim != 2 or y.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 luma plane, got {y.dtype} {y.shape}")
    height, width = y.shape
    chroma_shape = ((height + 1) // 2, (width + 1) // 2)
    for name, plane in (("u", u), ("v", v)):
        if plane.shape != chroma_shape or plane.dtype != np.uint8:
            raise ValueError(
                f"expected a {chroma_shape} uint8 {name} plane, got {plane.dtype} {plane.shape}"
            )
    _check_size(height, width)
    levels = np.where(_cell_bits(stamp) == 1, Y_WHITE, Y_BLACK).astype(np.uint8)
    _paint_band(y, levels.reshape(ROWS, COLUMNS))
    chroma_rows = (band_height(height) + 1) // 2
    u[:chroma_rows] = CHROMA_NEUTRAL
    v[:chroma_rows] = CHROMA_NEUTRAL


@lru_cache(maxsize=64)
def _sample_points(height: int, width: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Pixel coordinates (ys, xs), each (ROWS*COLUMNS, 9), of the points read in each cell."""
    band = height * BAND_FRACTION
    offsets = np.array(SAMPLE_OFFSETS)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    rows = np.repeat(np.arange(ROWS), COLUMNS)
    columns = np.tile(np.arange(COLUMNS), ROWS)
    yf = (rows[:, None] + 0.5 + dy.reshape(1, -1)) * band / ROWS
    xf = (columns[:, None] + 0.5 + dx.reshape(1, -1)) * width / COLUMNS
    ys = np.clip(np.floor(yf), 0, height - 1).astype(np.intp)
    xs = np.clip(np.floor(xf), 0, width - 1).astype(np.intp)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _cell_levels(image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Mean luma (0-255) of each cell, shape (ROWS, COLUMNS)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"expected an RGB (H, W, 3) or luma (H, W) uint8 array, got {image.dtype} {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {image.shape}")
    height, width = image.shape[:2]
    _check_size(height, width)
    ys, xs = _sample_points(height, width)
    samples = image[ys, xs].astype(np.float32)
    luma = samples @ LUMA_WEIGHTS if image.ndim == 3 else samples
    return luma.mean(axis=1).reshape(ROWS, COLUMNS)


def read_stamp(image: npt.NDArray[Any]) -> Stamp:
    """Read the stamp from an RGB (H, W, 3) or luma (H, W) uint8 frame of any size.

    Raises ``StampError`` when the reference cells show no stamp (too little contrast) or
    the checksum does not match the bits read (the stamp is damaged or absent).
    """
    levels = _cell_levels(image)
    refs = {column: levels[:, column] for column in REFERENCE_COLUMNS}
    whites = np.stack([refs[c] for c, bit in REFERENCE_COLUMNS.items() if bit == 1], axis=1)
    blacks = np.stack([refs[c] for c, bit in REFERENCE_COLUMNS.items() if bit == 0], axis=1)
    contrast = whites.min(axis=1) - blacks.max(axis=1)
    if float(contrast.min()) < MIN_CONTRAST:
        raise StampError(
            "no stamp found: reference cells have too little contrast ("
            + ", ".join(f"{c:.0f}" for c in contrast)
            + f" luma levels per row, need {MIN_CONTRAST:.0f})"
        )
    left = (levels[:, 0] + levels[:, 1]) / 2
    right = (levels[:, COLUMNS - 2] + levels[:, COLUMNS - 1]) / 2
    position = (np.array(DATA_COLUMNS, dtype=np.float32) - 0.5) / (COLUMNS - 2)
    thresholds = left[:, None] + (right - left)[:, None] * position[None, :]
    bits = (levels[:, DATA_COLUMNS] > thresholds).astype(np.uint8).reshape(-1)
    padded = np.concatenate([np.zeros(88 - TOTAL_BITS, dtype=np.uint8), bits])
    word = int.from_bytes(np.packbits(padded).tobytes(), "big")
    payload, crc = word >> CRC_BITS, word & ((1 << CRC_BITS) - 1)
    expected = _crc(payload)
    if crc != expected:
        margin = np.abs(levels[:, DATA_COLUMNS] - thresholds)
        raise StampError(
            f"stamp checksum mismatch (read {crc:04x}, bits give {expected:04x}); "
            f"{int((margin < MIN_CONTRAST / 4).sum())} of {TOTAL_BITS} cells are ambiguous"
        )
    return Stamp(capture_ms=payload >> INDEX_BITS, index=payload & MAX_INDEX)


def try_read_stamp(image: npt.NDArray[Any]) -> Stamp | None:
    """Like ``read_stamp`` but return ``None`` when the frame has no readable stamp."""
    try:
        return read_stamp(image)
    except StampError:
        return None


def frame_luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The luma of a decoded PyAV frame as a (H, W) array, without an RGB conversion when
    the frame is planar YUV or grey (a view of its Y plane, copied to drop the padding)."""
    if frame.format.name in LUMA_FIRST_FORMATS:
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(
            plane.height, plane.line_size
        )
        return np.ascontiguousarray(rows[:, : plane.width])
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def read_stamp_frame(frame: av.VideoFrame) -> Stamp:
    """Read the stamp of a decoded PyAV video frame (any size and pixel format).

    Planar YUV frames are read from their Y plane directly. Raises ``StampError`` like
    ``read_stamp``.
    """
    return read_stamp(frame_luma(frame))
