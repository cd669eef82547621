"""The stamp codec: exact round trips through real H.264, scaling, stretching and JPEG."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import PIL.Image
import pytest

from kvsnb.sources import (
    Stamp,
    StampError,
    TestPatternTrack,
    draw_stamp,
    draw_stamp_yuv420p,
    read_stamp,
    read_stamp_frame,
    try_read_stamp,
)
from kvsnb.sources.stamp import (
    BAND_FRACTION,
    COLUMNS,
    DATA_COLUMNS,
    MAX_CAPTURE_MS,
    MAX_INDEX,
    ROWS,
    TOTAL_BITS,
    stamp_bits,
)
from kvsnb.sources.tracks import webrtc_h264_encoder

BASE_MS = 1_763_700_000_000
FRAME_MS = 33
INTERPOLATIONS = ("BILINEAR", "AREA", "BICUBIC", "POINT")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(480, 640), (720, 1280), (48, 64), (1080, 1920), (90, 200)])
def test_round_trip_rgb(size: tuple[int, int]) -> None:
    image = noise(*size)
    stamp = Stamp(BASE_MS + 123, 456_789)
    draw_stamp(image, stamp)
    assert read_stamp(image) == stamp


def test_round_trip_extremes() -> None:
    image = noise(480, 640)
    for stamp in (Stamp(0, 0), Stamp(MAX_CAPTURE_MS, MAX_INDEX), Stamp(2**43, 2**23)):
        draw_stamp(image, stamp)
        assert read_stamp(image) == stamp


def test_stamp_range_is_checked() -> None:
    with pytest.raises(ValueError, match="capture_ms"):
        Stamp(MAX_CAPTURE_MS + 1, 0)
    with pytest.raises(ValueError, match="index"):
        Stamp(0, -1)


def test_bits_carry_payload_and_crc() -> None:
    bits = stamp_bits(Stamp(1, 2))
    assert bits.shape == (TOTAL_BITS,)
    assert int("".join(map(str, bits[:44])), 2) == 1
    assert int("".join(map(str, bits[44:68])), 2) == 2
    assert not np.array_equal(stamp_bits(Stamp(1, 3))[68:], bits[68:])


def test_draw_touches_only_the_band() -> None:
    image = noise(480, 640)
    before = image.copy()
    draw_stamp(image, Stamp(BASE_MS, 1))
    band = round(480 * BAND_FRACTION)
    assert np.array_equal(image[band:], before[band:])
    assert set(np.unique(image[:band])) <= {0, 255}


def test_yuv_drawing_reads_back_after_conversion() -> None:
    height, width = 480, 640
    y = np.full((height, width), 90, np.uint8)
    u = np.full((height // 2, width // 2), 60, np.uint8)
    v = np.full((height // 2, width // 2), 200, np.uint8)
    stamp = Stamp(BASE_MS, 77)
    draw_stamp_yuv420p(y, u, v, stamp)
    frame = av.VideoFrame.from_ndarray(
        np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, width),
        format="yuv420p",
    )
    assert read_stamp_frame(frame) == stamp
    assert read_stamp(frame.to_ndarray(format="rgb24")) == stamp
    assert read_stamp(y) == stamp


def test_no_stamp_raises() -> None:
    for image in (noise(480, 640), np.full((480, 640, 3), 128, np.uint8)):
        with pytest.raises(StampError, match="no stamp found"):
            read_stamp(image)
        assert try_read_stamp(image) is None


def test_every_single_flipped_cell_is_detected() -> None:
    image = noise(480, 640)
    stamp = Stamp(BASE_MS + 999, 31_337)
    draw_stamp(image, stamp)
    band = round(480 * BAND_FRACTION)
    detected = 0
    for row in range(ROWS):
        for column in DATA_COLUMNS:
            damaged = image.copy()
            ys = slice(row * band // ROWS, (row + 1) * band // ROWS)
            xs = slice(column * 640 // COLUMNS, (column + 1) * 640 // COLUMNS)
            damaged[ys, xs] = 255 - damaged[ys, xs]
            with pytest.raises(StampError, match="checksum mismatch"):
                read_stamp(damaged)
            detected += 1
    assert detected == TOTAL_BITS


def test_bad_input_is_a_value_error_not_a_stamp_error() -> None:
    with pytest.raises(ValueError, match="uint8") as info:
        read_stamp(np.zeros((480, 640, 3), np.float32))
    assert not isinstance(info.value, StampError)
    with pytest.raises(ValueError, match="RGB"):
        draw_stamp(np.zeros((480, 640), np.uint8), Stamp(0, 0))
    with pytest.raises(StampError, match="too small"):
        read_stamp(np.zeros((16, 16, 3), np.uint8))


@dataclass
class Encoded:
    frames: list[av.VideoFrame]
    bitrate_bps: float
    width: int
    height: int


def encode_pattern(width: int, height: int, bitrate: int, count: int = 64) -> Encoded:
    """Stamped test-pattern frames through libx264 (baseline, zerolatency, gop 30) and back."""
    track = TestPatternTrack(width, height)
    encoder = webrtc_h264_encoder(width, height, bitrate, gop=30)
    decoder = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    size = 0
    for i in range(count + 1):
        frame = track.render(i, BASE_MS + i * FRAME_MS) if i < count else None
        if frame is not None:
            frame.pts, frame.time_base = i, encoder.time_base
        for packet in encoder.encode(frame):
            size += packet.size
            frames.extend(f for f in decoder.decode(packet) if isinstance(f, av.VideoFrame))
    return Encoded(frames, size * 8 / (count / 30), width, height)


@pytest.fixture(scope="module", params=[(640, 480, 300_000), (1280, 720, 300_000)])
def encoded(request: pytest.FixtureRequest) -> Encoded:
    width, height, bitrate = request.param
    return encode_pattern(width, height, bitrate)


def test_stamp_survives_h264_at_300_kbps(encoded: Encoded) -> None:
    assert len(encoded.frames) == 64
    assert encoded.bitrate_bps < 450_000  # really a low-bitrate stream
    for i, frame in enumerate(encoded.frames):
        assert read_stamp_frame(frame) == Stamp(BASE_MS + i * FRAME_MS, i)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_stamp_survives_quarter_scaling(encoded: Encoded, interpolation: str) -> None:
    width, height = encoded.width // 4, encoded.height // 4
    for i, frame in enumerate(encoded.frames):
        small = frame.reformat(width, height, format="rgb24", interpolation=interpolation)
        assert read_stamp(small.to_ndarray()) == Stamp(BASE_MS + i * FRAME_MS, i)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_stamp_survives_stretching(encoded: Encoded, interpolation: str) -> None:
    for i, frame in enumerate(encoded.frames):
        for width, height in ((200, 90), (96, 160)):
            image = frame.reformat(width, height, format="rgb24", interpolation=interpolation)
            assert read_stamp(image.to_ndarray()) == Stamp(BASE_MS + i * FRAME_MS, i)


@pytest.mark.parametrize("quality", [80, 30])
def test_stamp_survives_jpeg_of_a_scaled_frame(encoded: Encoded, quality: int) -> None:
    """GetImages returns JPEG (default quality 80) at the size asked for."""
    for i, frame in enumerate(encoded.frames[:16]):
        buffer = io.BytesIO()
        frame.reformat(160, 120).to_image().save(buffer, format="JPEG", quality=quality)
        image = np.asarray(PIL.Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert read_stamp(image) == Stamp(BASE_MS + i * FRAME_MS, i)
