"""Media sources: the test pattern and tone tracks, files (passthrough and decoded), camera."""

from __future__ import annotations

import fractions
import itertools
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kvsnb.sources import (
    CameraNotFoundError,
    CameraSource,
    FileSource,
    Stamp,
    TestPatternTrack,
    ToneGenerator,
    ToneTrack,
    find_tone_marks,
    make_test_file,
    read_stamp_frame,
)
from kvsnb.sources.tracks import MARK_DURATION_S

START_MS = 1_763_700_000_250  # a quarter second past a whole second


# -- TestPatternTrack --------------------------------------------------------------------


async def test_pattern_frames_carry_increasing_stamps_near_wall_clock() -> None:
    seen: list[Stamp] = []
    track = TestPatternTrack(320, 240, max_frames=8, on_frame=seen.append)
    frames: list[av.VideoFrame] = []
    before_ms = time.time() * 1000
    started = time.monotonic()
    while True:
        try:
            frames.append(await track.recv())
        except MediaStreamError:
            break
    elapsed = time.monotonic() - started
    after_ms = time.time() * 1000

    assert track.readyState == "ended"
    assert len(frames) == 8
    assert elapsed >= 7 / 30 - 0.01  # paced in real time
    stamps = [read_stamp_frame(f) for f in frames]
    assert [s.index for s in stamps] == list(range(8))
    assert all(before_ms - 1 <= s.capture_ms <= after_ms + 1 for s in stamps)
    # paced: frame n is never captured before its time on the schedule (a late frame may be
    # followed by one at once, as the pacing catches up)
    assert all(b.capture_ms > a.capture_ms for a, b in itertools.pairwise(stamps))
    assert all(
        s.capture_ms - stamps[0].capture_ms >= n * 1000 / 30 - 2 for n, s in enumerate(stamps)
    )
    assert seen == stamps
    # pts: the capture reading on the 90 kHz clock, from the first frame's
    assert [f.pts for f in frames] == [(s.capture_ms - stamps[0].capture_ms) * 90 for s in stamps]
    assert all(f.time_base == fractions.Fraction(1, 90000) for f in frames)
    assert all((f.width, f.height, f.format.name) == (320, 240, "yuv420p") for f in frames)

    df = track.frames_df()
    assert list(df["frame_index"]) == list(range(8))
    assert list(df["capture_ms"]) == [s.capture_ms for s in stamps]
    assert list(df["pts"]) == [f.pts for f in frames]
    assert df["monotonic_s"].is_monotonic_increasing
    assert str(df["capture_time"].dt.tz) == "UTC"


async def test_pattern_moves_and_survives_a_failing_callback() -> None:
    def broken(stamp: Stamp) -> None:
        raise RuntimeError("callback bug")

    track = TestPatternTrack(320, 240, fps=60, on_frame=broken, start_index=2**24 - 1)
    first = await track.recv()
    second = await track.recv()
    track.stop()
    assert [read_stamp_frame(first).index, read_stamp_frame(second).index] == [2**24 - 1, 0]
    a = first.to_ndarray(format="rgb24")[60:].astype(int)
    b = second.to_ndarray(format="rgb24")[60:].astype(int)
    assert np.abs(a - b).mean() > 1  # the picture below the band moves
    assert a.std(axis=(0, 1)).min() > 10  # and is colourful
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_pattern_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="even size"):
        TestPatternTrack(641, 480)
    with pytest.raises(ValueError, match="fps"):
        TestPatternTrack(fps=0)


# -- tone --------------------------------------------------------------------------------


async def test_tone_track_marks_whole_seconds() -> None:
    start = 1_700_000_000.99  # the first mark is due 10 ms into the track
    track = ToneTrack(channels=2, max_frames=4, clock=lambda: start)
    frames = [await track.recv() for _ in range(4)]
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert [f.pts for f in frames] == [0, 960, 1920, 2880]
    assert all(f.format.name == "s16" and f.layout.name == "stereo" for f in frames)
    assert all(f.samples == 960 and f.sample_rate == 48000 for f in frames)
    pcm = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in frames])
    assert np.array_equal(pcm[:, 0], pcm[:, 1])
    marks = find_tone_marks(pcm.T, 48000)
    assert marks == pytest.approx([0.010], abs=0.0002)
    df = track.frames_df()
    assert list(df["marks"]) == [1, 0, 0, 0]
    assert df["capture_ms"].iloc[0] == pytest.approx(start * 1000)


@pytest.mark.parametrize("codec", ["libopus", "aac"])
def test_tone_marks_survive_lossy_audio(codec: str) -> None:
    """Opus (what the master sends) and AAC (what KVS stores) keep the marks 1 s apart."""
    generator = ToneGenerator(1_000_000_000.3)  # marks at 0.7, 1.7, 2.7 s
    encoder = av.CodecContext.create(codec, "w")
    decoder = av.CodecContext.create(codec, "r")
    assert isinstance(encoder, av.AudioCodecContext)
    assert isinstance(decoder, av.AudioCodecContext)
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16" if codec == "libopus" else "fltp"
    encoder.time_base = fractions.Fraction(1, 48000)
    encoder.bit_rate = 48000
    encoder.open()
    resampler = av.AudioResampler(
        format=encoder.format.name, layout="mono", rate=48000, frame_size=encoder.frame_size
    )
    decoder.extradata = encoder.extradata
    to_float = av.AudioResampler(format="flt", layout="mono", rate=48000)
    decoded: list[np.ndarray] = []

    def feed(frame: av.AudioFrame | None) -> None:
        for converted in resampler.resample(frame):
            for packet in encoder.encode(converted):
                for out in decoder.decode(packet):
                    assert isinstance(out, av.AudioFrame)
                    decoded.extend(f.to_ndarray().reshape(-1) for f in to_float.resample(out))

    for _ in range(150):
        pts = generator.position
        samples, _ = generator.next(960)
        frame = av.AudioFrame.from_ndarray(
            np.round(samples * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, pts
        feed(frame)
    feed(None)
    marks = find_tone_marks(np.concatenate(decoded), 48000)
    assert len(marks) == 3
    assert np.diff(marks) == pytest.approx([1.0, 1.0], abs=0.001)
    assert marks[0] == pytest.approx(0.7, abs=0.025)  # codec delay only


def test_find_tone_marks_without_marks() -> None:
    t = np.arange(48000) / 48000
    assert find_tone_marks(np.zeros(48000), 48000) == []
    assert find_tone_marks(np.sin(2 * np.pi * 440 * t), 48000) == []
    # a mark already under way at the first sample, or too short, is not reported
    partial, _ = ToneGenerator(10.0 + MARK_DURATION_S / 2).next(43_200)  # to 10.925 s
    assert find_tone_marks(partial, 48000) == []
    with pytest.raises(ValueError, match="shape"):
        find_tone_marks(np.zeros((2, 2, 2)), 48000)


def test_tone_generator_is_phase_continuous() -> None:
    generator = ToneGenerator(3.9)
    whole, _ = ToneGenerator(3.9).next(9600)
    pieces = np.concatenate([generator.next(960)[0] for _ in range(10)])
    assert np.allclose(whole, pieces, atol=1e-9)
    assert np.abs(np.diff(whole)).max() < 2 * np.pi * 2000 / 48000 * 0.5 + 1e-6  # no clicks


# -- files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def test_make_test_file_writes_stamped_video_and_marked_audio(media_dir: Path) -> None:
    path = make_test_file(media_dir / "made.mkv", seconds=2.0, start_ms=START_MS)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "opus"
        video = [read_stamp_frame(f) for f in container.decode(video=0)]
    assert video == [Stamp(START_MS + round(i * 1000 / 30), i) for i in range(60)]
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    marks = find_tone_marks(audio, 48000)
    assert marks == pytest.approx([0.75, 1.75], abs=0.002)  # whole seconds of the capture clock


async def read_video_frames(track: MediaStreamTrack, count: int) -> list[av.VideoFrame]:
    items = [await track.recv() for _ in range(count)]
    frames = [f for f in items if isinstance(f, av.VideoFrame)]
    assert len(frames) == count
    return frames


async def test_file_source_passes_baseline_h264_through(media_dir: Path) -> None:
    path = make_test_file(media_dir / "good.mp4", seconds=1.0, audio_codec="aac")
    source = FileSource(path)
    assert source.passthrough
    assert source.video is not None and source.audio is not None
    decoder = av.CodecContext.create("h264", "r")
    encoder = H264Encoder()
    indexes: list[int] = []
    timestamps: list[int] = []
    for _ in range(6):
        packet = await source.video.recv()
        assert isinstance(packet, av.Packet)
        assert bytes(packet)[:4] == b"\x00\x00\x00\x01"  # Annex B, not the file's avcC
        payloads, timestamp = encoder.pack(packet)
        assert payloads
        timestamps.append(timestamp)
        decoded = [f for f in decoder.decode(packet) if isinstance(f, av.VideoFrame)]
        indexes.extend(read_stamp_frame(f).index for f in decoded)
    assert indexes == list(range(6))
    assert timestamps == [i * 3000 for i in range(6)]
    audio = await source.audio.recv()
    assert isinstance(audio, av.AudioFrame)
    assert (audio.format.name, audio.layout.name, audio.sample_rate, audio.samples) == (
        "s16",
        "stereo",
        48000,
        960,
    )
    source.stop()
    assert source.video.readyState == "ended"


async def test_file_source_decodes_high_profile_and_loops(media_dir: Path) -> None:
    path = make_test_file(media_dir / "high.mkv", seconds=0.2, profile="high", audio=False)
    source = FileSource(path, loop=True)
    assert not source.passthrough
    assert source.audio is None and source.video is not None
    frames = await read_video_frames(source.video, 9)
    indexes = [read_stamp_frame(f).index for f in frames]
    assert indexes == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    pts = [f.pts for f in frames if f.pts is not None]
    assert pts == sorted(pts) and len(set(pts)) == 9
    source.stop()


def test_file_source_refuses_vp8_passthrough(media_dir: Path) -> None:
    path = make_test_file(media_dir / "v.webm", seconds=0.2, codec="vp8", audio=False)
    assert not FileSource(path).passthrough
    with pytest.raises(ValueError, match="vp8"):
        FileSource(path, passthrough=True)
    with pytest.raises(FileNotFoundError):
        FileSource(media_dir / "missing.mkv")


# -- camera ------------------------------------------------------------------------------


def test_camera_absent() -> None:
    assert not CameraSource.available("/dev/null")  # a character device, but not V4L2
    assert not CameraSource.available("/nonexistent/video0")
    if not CameraSource.available():
        with pytest.raises(CameraNotFoundError, match="/dev/video0"):
            CameraSource()
    with pytest.raises(FileNotFoundError, match="/nonexistent"):
        CameraSource("/nonexistent/video9")
