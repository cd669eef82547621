"""Tracks fed media encoded elsewhere (kvsnb.sources.encoded): real H.264 access units from
libx264 (Constrained Baseline, Annex B), Opus from libopus, JPEG from FFmpeg's encoder and
PCM, taken back out as aiortc takes them, and the chunk framing."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError

from kvsnb.sources import TestPatternTrack, read_stamp_frame
from kvsnb.sources.encoded import (
    HEADER,
    KIND_H264,
    KIND_INFO,
    KIND_JPEG,
    KIND_KEYFRAME_REQUEST,
    KIND_OPUS,
    KIND_PCM,
    PCM_FRAME_SAMPLES,
    ChunkError,
    EncodedAudioTrack,
    EncodedVideoTrack,
    JpegEncoder,
    JpegVideoTrack,
    PcmAudioTrack,
    h264_access_units,
    pack_chunk,
    parse_chunk,
    track_for,
)
from kvsnb.wire import h264

T0_US = 1_700_000_000_000_000  # a capture time in epoch µs
FRAME_US = 33_333


def access_units(count: int, gop: int = 30, start_ms: int = 1_700_000_000_000) -> list[bytes]:
    """``count`` stamped pattern frames (frame i at start + 33 i ms) as H.264 access units."""
    pattern = TestPatternTrack(160, 128)
    frames = (pattern.render(i, start_ms + 33 * i) for i in range(count))
    return [data for data, _ in h264_access_units(frames, gop=gop)]


def decode_stamps(packets: list[av.Packet]) -> list[int]:
    """The stamp indexes of the frames decoded from ``packets`` (H.264)."""
    decoder = av.CodecContext.create("h264", "r")
    indexes = []
    for packet in packets:
        for frame in decoder.decode(av.Packet(bytes(packet))):
            assert isinstance(frame, av.VideoFrame)
            indexes.append(read_stamp_frame(frame).index)
    return indexes


def opus_packets(count: int) -> list[bytes]:
    """``count`` 20 ms Opus packets of a 440 Hz tone, from libopus."""
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = 48_000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.time_base = fractions.Fraction(1, 48_000)
    t = np.arange(960 * (count + 2)) / 48_000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out: list[bytes] = []
    for n in range(count + 2):
        frame = av.AudioFrame.from_ndarray(
            pcm[n * 960 : (n + 1) * 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        frame.pts = n * 960
        out += [bytes(p) for p in encoder.encode(frame)]
    return out[:count]


def test_chunk_framing_round_trips() -> None:
    message = pack_chunk(KIND_H264, b"\x00\x00\x01\x65abc", T0_US, key=True)
    assert len(message) == HEADER.size + 7
    assert message[:2] == b"\x01\x01"
    chunk = parse_chunk(message)
    assert (chunk.kind, chunk.key, chunk.timestamp_us, chunk.data) == (
        KIND_H264,
        True,
        T0_US,
        b"\x00\x00\x01\x65abc",
    )
    assert chunk.kind_name == "h264"
    assert not parse_chunk(pack_chunk(KIND_OPUS, b"x", 5)).key


def test_bad_chunks_are_refused() -> None:
    with pytest.raises(ChunkError, match="a chunk needs 10 header bytes, got 3"):
        parse_chunk(b"\x01\x00\x00")
    with pytest.raises(ChunkError, match="unknown chunk kind 9"):
        parse_chunk(b"\x09" + bytes(9))
    with pytest.raises(ChunkError, match="unknown chunk kind 0"):
        pack_chunk(0, b"", 0)
    with pytest.raises(ChunkError, match=r"an H\.264 track takes h264 chunks, not opus"):
        EncodedVideoTrack().feed_chunk(parse_chunk(pack_chunk(KIND_OPUS, b"x", 0)))
    with pytest.raises(ChunkError, match="starts with a start code"):
        EncodedVideoTrack().feed(b"\x65abc", 0)
    with pytest.raises(ChunkError, match="even byte count, got 3"):
        PcmAudioTrack().feed(b"abc", 0)
    with pytest.raises(ChunkError, match="no track takes 'vp8' chunks"):
        track_for("vp8")


def test_access_units_are_constrained_baseline_annexb() -> None:
    units = access_units(31, gop=30)
    assert [h264.is_keyframe(u) for u in units] == [n % 30 == 0 for n in range(31)]
    nals = h264.split_annexb(units[0])
    assert [h264.nal_type(n) for n in nals[:2]] == [h264.NAL_SPS, h264.NAL_PPS]
    sps = h264.parse_sps(nals[0])
    assert (sps.profile_idc, sps.constraint_flags & 0x40) == (66, 0x40)  # constraint_set1


async def test_video_track_yields_the_access_units_fed_unchanged() -> None:
    units = access_units(40)
    track = EncodedVideoTrack()
    packets = []
    for n, unit in enumerate(units):  # the sender keeps up
        track.feed(unit, T0_US + n * FRAME_US)
        packets.append(await asyncio.wait_for(track.recv(), 5))
    assert [bytes(p) for p in packets] == units
    assert [p.pts for p in packets] == [round(n * FRAME_US * 90_000 / 1e6) for n in range(40)]
    assert all(p.time_base == fractions.Fraction(1, 90_000) for p in packets)
    assert [p.is_keyframe for p in packets] == [n % 30 == 0 for n in range(40)]
    assert decode_stamps(packets) == list(range(40))
    assert track.stats() == {"fed": 40, "sent": 40, "dropped": 0, "queued": 0}
    assert list(track.sent_df()["index"]) == list(range(40))


async def test_aiortc_packs_the_packets_without_encoding() -> None:
    """aiortc's own H.264 packer splits each packet into the NAL units fed, at the pts."""
    units = access_units(2)
    track = EncodedVideoTrack()
    track.feed(units[0], T0_US)
    track.feed(units[1], T0_US + FRAME_US)
    encoder = H264Encoder()
    payloads, timestamp = encoder.pack(await track.recv())
    assert timestamp == 0 and payloads
    payloads, timestamp = encoder.pack(await track.recv())
    assert timestamp == 3000
    opus = EncodedAudioTrack()
    packet = opus_packets(1)[0]
    opus.feed(packet, T0_US)
    assert OpusEncoder().pack(await opus.recv()) == ([packet], 0)


async def test_frames_before_the_first_keyframe_are_dropped_and_a_keyframe_asked() -> None:
    units = access_units(35)
    track = EncodedVideoTrack(keyframe_interval_s=0.0)
    asked: list[int] = []
    track.on_keyframe_request(lambda: asked.append(1))
    for n in range(1, 35):  # frame 0, the keyframe, lost: 1..29 wait for 30
        track.feed(units[n], T0_US + n * FRAME_US)
    assert track.stats()["dropped"] == 29 and len(asked) == 29
    first = await track.recv()
    assert first.is_keyframe and bytes(first) == units[30] and first.pts == 0
    assert decode_stamps([first] + [await track.recv() for _ in range(4)]) == [30, 31, 32, 33, 34]


async def test_sending_starts_at_the_newest_keyframe_queued() -> None:
    units = access_units(65)
    track = EncodedVideoTrack()
    for n, unit in enumerate(units):
        track.feed(unit, T0_US + n * FRAME_US)
    first = await track.recv()  # the sender starts late: 0..59 are stale
    assert bytes(first) == units[60] and first.pts == 0
    assert track.stats()["dropped"] == 60
    rest = [await track.recv() for _ in range(4)]
    assert decode_stamps([first, *rest]) == [60, 61, 62, 63, 64]


async def test_a_stale_keyframe_is_not_where_sending_starts() -> None:
    units = access_units(62)
    track = EncodedVideoTrack(keyframe_interval_s=0.0)
    asked: list[int] = []
    track.on_keyframe_request(lambda: asked.append(1))
    for n in range(60):  # the newest keyframe (30) is 29 frames, ~1 s, behind frame 59
        track.feed(units[n], T0_US + n * FRAME_US)
    first = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert asked == [1] and track.stats()["queued"] == 0 and not first.done()
    track.feed(units[61], T0_US + 61 * FRAME_US)  # not a keyframe: still waiting
    track.feed(units[60], T0_US + 62 * FRAME_US, key=True)  # the keyframe asked for
    packet = await asyncio.wait_for(first, 5)
    assert bytes(packet) == units[60] and packet.pts == 0
    assert track.stats()["dropped"] == 61


async def test_a_backlog_is_dropped_up_to_the_next_keyframe() -> None:
    units = access_units(70)
    track = EncodedVideoTrack(backlog=10, keyframe_interval_s=0.0)
    asked: list[int] = []
    track.on_keyframe_request(lambda: asked.append(1))
    track.feed(units[0], T0_US)
    assert bytes(await track.recv()) == units[0]
    for n in range(1, 70):  # the sender stalls
        track.feed(units[n], T0_US + n * FRAME_US)
    # 1..10 queued, 11 overflows: queue emptied, 11..29 dropped, 30..39, 40 overflows: to 60
    assert asked and track.stats()["queued"] == 10
    rest = [await track.recv() for _ in range(10)]
    assert rest[0].is_keyframe
    assert decode_stamps(rest) == list(range(60, 70))


async def test_pts_follow_capture_times_and_keep_increasing() -> None:
    units = access_units(3)
    track = EncodedVideoTrack()
    pts = []
    for unit, when_us in zip(units, (T0_US, T0_US, T0_US + 1_000_000), strict=True):
        track.feed(unit, when_us)  # the second at the same capture time as the first
        pts.append((await asyncio.wait_for(track.recv(), 5)).pts)
    assert pts == [0, 1, 90_000]


async def test_keyframe_requests_are_rate_limited() -> None:
    track = EncodedVideoTrack(keyframe_interval_s=60.0)
    asked: list[int] = []
    track.on_keyframe_request(lambda: asked.append(1))
    track.request_keyframe()
    track.request_keyframe()
    assert asked == [1] and track.keyframe_requests == 1


async def test_stop_ends_a_waiting_recv() -> None:
    track = EncodedVideoTrack()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiting
    track.feed(access_units(1)[0], T0_US)  # ignored once stopped
    assert track.stats()["queued"] == 0


async def test_audio_track_yields_opus_packets_on_the_48k_clock() -> None:
    packets = opus_packets(5)
    track = EncodedAudioTrack()
    for n, packet in enumerate(packets):
        track.feed_chunk(parse_chunk(pack_chunk(KIND_OPUS, packet, T0_US + n * 20_000)))
    out = [await track.recv() for _ in packets]
    assert [bytes(p) for p in out] == packets
    assert [p.pts for p in out] == [0, 960, 1920, 2880, 3840]
    decoder = av.CodecContext.create("opus", "r")
    samples = sum(f.samples for p in out for f in decoder.decode(av.Packet(bytes(p))))
    assert samples == 5 * 960


async def test_audio_backlog_drops_the_oldest() -> None:
    packets = opus_packets(4)
    track = EncodedAudioTrack(backlog=2)
    for n, packet in enumerate(packets):
        track.feed(packet, T0_US + n * 20_000)
    assert track.stats() == {"fed": 4, "sent": 0, "dropped": 2, "queued": 2}
    assert bytes(await track.recv()) == packets[2]


async def test_jpeg_track_decodes_pictures_for_aiortc_to_encode() -> None:
    frame = TestPatternTrack(320, 240).render(7, 1_700_000_000_123)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"qscale": "3"}
    (jpeg,) = [bytes(p) for p in encoder.encode(frame.reformat(format="yuvj420p"))]
    track = JpegVideoTrack()
    track.feed_chunk(parse_chunk(pack_chunk(KIND_JPEG, jpeg, T0_US)))
    track.feed(b"\xff\xd8 not a picture", T0_US + FRAME_US)
    track.feed(jpeg, T0_US + 2 * FRAME_US)
    first = await track.recv()
    assert first.format.name == "yuv420p" and (first.width, first.height) == (320, 240)
    stamp = read_stamp_frame(first)
    assert (stamp.index, stamp.capture_ms) == (7, 1_700_000_000_123)
    second = await track.recv()  # the broken picture was skipped
    assert second.pts == round(2 * FRAME_US * 0.09) and track.undecodable == 1


async def test_pcm_track_cuts_20ms_frames() -> None:
    track = PcmAudioTrack()
    pcm = (np.arange(PCM_FRAME_SAMPLES * 5 // 2) % 1000).astype("<i2")
    track.feed_chunk(parse_chunk(pack_chunk(KIND_PCM, pcm.tobytes(), T0_US)))
    assert track.stats()["queued"] == 2  # 2.5 frames: the half waits for more
    first, second = await track.recv(), await track.recv()
    assert (first.samples, first.sample_rate, first.layout.name) == (960, 48_000, "mono")
    assert (first.pts, second.pts) == (0, 960)
    assert np.array_equal(second.to_ndarray()[0], pcm[960:1920])
    track.feed(pcm[: PCM_FRAME_SAMPLES // 2].tobytes(), T0_US + 50_000)
    third = await track.recv()
    assert third.pts == 1920
    assert np.array_equal(third.to_ndarray()[0], np.concatenate([pcm[1920:], pcm[:480]]))


def test_control_chunks() -> None:
    info = parse_chunk(pack_chunk(KIND_INFO, b'{"video": "h264", "audio": "opus"}', T0_US))
    assert info.kind_name == "info" and info.json() == {"video": "h264", "audio": "opus"}
    with pytest.raises(ChunkError, match="an info chunk holds JSON"):
        parse_chunk(pack_chunk(KIND_INFO, b"{", T0_US)).json()
    request = parse_chunk(pack_chunk(KIND_KEYFRAME_REQUEST, b"", T0_US))
    assert (request.kind_name, request.data) == ("keyframe_request", b"")
    with pytest.raises(ChunkError, match="no track takes 'info' chunks"):
        track_for(info.kind_name)


async def test_jpeg_encoder_round_trips_through_the_jpeg_track() -> None:
    """What a viewer's page gets (JpegEncoder) is what a master's page may send (JPEG)."""
    pattern = TestPatternTrack(320, 240)
    encoder = JpegEncoder()
    track = JpegVideoTrack()
    for n in range(3):
        jpeg = encoder.encode(pattern.render(n, 1_700_000_000_000 + n))
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        track.feed(jpeg, T0_US + n * FRAME_US)
        frame = await track.recv()
        assert read_stamp_frame(frame).index == n
    # a new size makes a new encoder
    big = encoder.encode(TestPatternTrack(640, 480).render(9, 1_700_000_000_009))
    track.feed(big, T0_US + 4 * FRAME_US)
    frame = await track.recv()
    assert (frame.width, frame.height, read_stamp_frame(frame).index) == (640, 480, 9)
