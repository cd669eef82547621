"""FragmentRecorder with real media: libx264 video packets (passthrough) and PCM → AAC."""

from __future__ import annotations

import fractions
import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from kvsnb.local.storage.passthrough import EncodedFrame, OpusDecoder, OpusPacket
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.fragments import Fragment, FragmentStore
from kvsnb.local.store.mkv import (
    TAG_FRAGMENT_NUMBER,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
    build_fragment_list_body,
    timestamp_tag,
)
from kvsnb.wire.ebml import read_segment_tags

STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam-1/1700000000000"
WIDTH, HEIGHT, FPS = 640, 480, 30
BASE_S = 1_700_000_000.0
AUDIO_RATE, AUDIO_SAMPLES = 48_000, 960


class Camera:
    """Encodes a moving test pattern with libx264 (baseline, zerolatency) like a master."""

    def __init__(self, gop: int = 30) -> None:
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        enc.time_base = fractions.Fraction(1, 90_000)
        enc.framerate = fractions.Fraction(FPS)
        enc.gop_size = gop
        enc.bit_rate = 1_000_000
        enc.options = {
            "profile": "baseline",
            "tune": "zerolatency",
            "preset": "ultrafast",
            "forced-idr": "1",
        }
        self.encoder = enc
        self.index = 0
        self.force_keyframe = False
        self.audio_sent = 0  # 20 ms tone frames fed with its video so far (``feed``)

    def next(self) -> EncodedFrame:
        img = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
        x = (self.index * 8) % WIDTH
        img[:, x : x + 40] = 230
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = self.index * 3000
        if self.force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
            self.force_keyframe = False
        self.index += 1
        packets = self.encoder.encode(frame)
        assert len(packets) == 1
        p = packets[0]
        assert p.pts is not None
        return EncodedFrame(
            data=bytes(p),
            rtp_timestamp=p.pts,
            timestamp=p.pts,
            keyframe=p.is_keyframe,
            producer_time=BASE_S + p.pts / 90_000,
            arrival_time=time.time(),
        )


def tone_frames(count: int, start: int = 0) -> Iterator[tuple[av.AudioFrame, float]]:
    """20 ms stereo s16 frames of a 440 Hz tone, as aiortc's Opus decoder delivers them."""
    for k in range(start, start + count):
        t = (np.arange(AUDIO_SAMPLES) + k * AUDIO_SAMPLES) / AUDIO_RATE
        mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = k * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        yield frame, BASE_S + k * AUDIO_SAMPLES / AUDIO_RATE


def feed(
    rec: FragmentRecorder, camera: Camera, seconds: float, audio_skip: range = range(0)
) -> int:
    """Feed ``seconds`` of interleaved video and audio; returns video frames fed."""
    n_video = round(seconds * FPS)
    audio_sent = camera.audio_sent
    for _ in range(n_video):
        vf = camera.next()
        rec.add_video(vf)
        video_end = (camera.index) / FPS
        while (audio_sent + 1) * AUDIO_SAMPLES / AUDIO_RATE <= video_end:
            for frame, producer in tone_frames(1, audio_sent):
                if audio_sent not in audio_skip:
                    rec.add_audio(frame, producer)
            audio_sent += 1
    camera.audio_sent = audio_sent
    return n_video


def decode_fragment(store: FragmentStore, fragment: Fragment) -> tuple[list[int], list[int]]:
    """(video pts in ms, audio packet pts in ms) of a stored fragment, decoding video."""
    video_pts: list[int] = []
    audio_pts: list[int] = []
    with av.open(str(store.resolve(fragment)), "r") as container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        for packet in container.demux(streams):
            if packet.stream.type == "video":
                for picture in packet.decode():
                    assert isinstance(picture, av.VideoFrame)
                    assert (picture.width, picture.height) == (WIDTH, HEIGHT)
                    assert picture.pts is not None
                    video_pts.append(picture.pts)
            elif packet.pts is not None:
                audio_pts.append(packet.pts)
    return video_pts, audio_pts


def expected_pts(n: int) -> list[int]:
    return [round(BASE_S * 1000 + i * 1000 / FPS) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FragmentStore]:
    s = FragmentStore(tmp_path)
    yield s
    s.close()


async def test_fragments_are_keyframe_aligned_complete_and_in_sync(store: FragmentStore) -> None:
    requests: list[float] = []
    rec = FragmentRecorder(
        store, STREAM, fragment_duration_s=2.0, request_keyframe=lambda: requests.append(1)
    )
    n = feed(rec, Camera(gop=30), 7.0)
    fragments = await rec.close()
    assert [f.fragment_number for f in store.list_fragments(STREAM)] == [
        f.fragment_number for f in fragments
    ]
    assert len(fragments) == 4
    for f in fragments[:-1]:
        assert f.duration_ms == 2000
        assert f.keyframe_offsets_ms[0] == 0
        assert f.has_audio and f.audio_codec == "mp4a.40.2"
        assert f.video_codec.startswith("avc1.42")
        assert (f.width, f.height) == (WIDTH, HEIGHT)
    assert fragments[-1].duration_ms == pytest.approx(1000, abs=40)  # partial, stored at close
    all_video: list[int] = []
    audio_ms_total = 0.0
    for f in fragments:
        video, audio = decode_fragment(store, f)
        assert video[0] == f.producer_start_ms
        assert len(video) == f.frame_count
        assert video == sorted(video)
        # audio packets start inside their fragment's time span: none before its keyframe
        # (the AAC grid leaves the first up to a frame, 21.3 ms, after it)
        assert f.producer_start_ms <= min(audio) < f.producer_start_ms + 22
        assert max(audio) < f.producer_start_ms + f.duration_ms
        audio_ms_total += len(audio) * 1024 * 1000 / AUDIO_RATE
        all_video += video
    assert all_video == expected_pts(n)  # every frame exactly once, in order
    stats = rec.stats
    assert stats.frames_in == stats.frames_stored == n
    assert stats.fragments == 4 and stats.errors == 0
    assert abs(audio_ms_total - n * 1000 / FPS) < 80  # audio duration ≈ video duration
    assert requests == [] and stats.keyframe_requests == 0  # the GOP already fits


async def test_keyframe_requests_cut_fragments_with_a_long_gop(store: FragmentStore) -> None:
    camera = Camera(gop=600)

    def request_keyframe() -> None:
        camera.force_keyframe = True  # the master's encoder reacting to PLI

    rec = FragmentRecorder(
        store, STREAM, fragment_duration_s=1.5, request_keyframe=request_keyframe, audio=False
    )
    for _ in range(round(5.2 * FPS)):
        rec.add_video(camera.next())
        await rec.drain()  # lets the request reach the loop before the next frame
    fragments = await rec.close()
    assert len(fragments) == 4
    for f in fragments[:-1]:
        # asked at 1.5 s, the keyframe comes with the next frame or the one after
        assert 1500 <= f.duration_ms <= 1500 + 3 * 34
        assert f.keyframe_offsets_ms == (0,)
        assert not f.has_audio and f.audio_codec is None
    assert rec.stats.keyframe_requests >= 3
    assert sum(f.frame_count for f in fragments) == camera.index


async def test_frames_before_first_keyframe_are_dropped_and_keyframe_requested(
    store: FragmentStore,
) -> None:
    camera = Camera(gop=600)
    camera.next()  # the IDR the recorder never sees (joined mid-GOP)
    asked: list[int] = []

    def request_keyframe() -> None:
        asked.append(camera.index)
        camera.force_keyframe = True

    rec = FragmentRecorder(
        store, STREAM, fragment_duration_s=2.0, request_keyframe=request_keyframe, audio=False
    )
    for _ in range(20):
        rec.add_video(camera.next())
        await rec.drain()
    fragments = await rec.close()
    stats = rec.stats
    assert asked, "no keyframe request for a stream that starts without one"
    assert stats.dropped_before_keyframe == 1
    assert stats.frames_stored == 19
    assert len(fragments) == 1 and fragments[0].keyframe_offsets_ms[0] == 0
    video, _ = decode_fragment(store, fragments[0])
    assert len(video) == 19


async def test_close_mid_fragment_stores_the_partial_fragment(store: FragmentStore) -> None:
    rec = FragmentRecorder(store, STREAM, fragment_duration_s=4.0)
    n = feed(rec, Camera(gop=30), 1.3)
    assert store.list_fragments(STREAM) == []  # nothing durable yet: nothing listed
    fragments = await rec.close()
    assert await rec.close() == fragments  # idempotent
    assert len(fragments) == 1
    listed = store.list_fragments(STREAM)
    assert [f.fragment_number for f in listed] == [fragments[0].fragment_number]
    video, audio = decode_fragment(store, listed[0])
    assert video == expected_pts(n)
    assert audio, "audio received before the disconnect is stored too"


async def test_audio_gap_is_filled_and_sync_kept(store: FragmentStore) -> None:
    rec = FragmentRecorder(store, STREAM, fragment_duration_s=2.0)
    n = feed(rec, Camera(gop=30), 3.0, audio_skip=range(50, 60))  # 200 ms lost
    fragments = await rec.close()
    assert rec.stats.audio_silence_samples == 10 * AUDIO_SAMPLES
    audio_total = 0
    for f in fragments:
        audio_total += len(decode_fragment(store, f)[1])
    assert abs(audio_total * 1024 * 1000 / AUDIO_RATE - n * 1000 / FPS) < 80


def opus_packets(count: int) -> list[OpusPacket]:
    """The tone as a master sends it: 20 ms Opus packets with their producer times."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = AUDIO_RATE, "stereo", "s16"
    packets: list[OpusPacket] = []
    for frame, _ in tone_frames(count):
        for p in encoder.encode(frame):
            assert p.pts is not None
            ts = int(p.pts)
            packets.append(OpusPacket(bytes(p), ts, BASE_S + ts / AUDIO_RATE, time.time()))
    return packets


async def test_opus_packets_are_stored_as_their_decoded_frames_would_be(
    store: FragmentStore,
) -> None:
    # the same packets, 200 ms of them lost: once undecoded (decoded on the recorder's thread,
    # in batches), once decoded on the caller's side; the stored audio must be the same
    packets = [p for k, p in enumerate(opus_packets(150)) if not 60 <= k < 70]
    stored: list[list[tuple[list[int], list[int]]]] = []
    for undecoded in (True, False):
        rec = FragmentRecorder(store, STREAM, fragment_duration_s=1.0)
        camera, decoder, queue = Camera(gop=15), OpusDecoder(), list(packets)
        for _ in range(round(3.0 * FPS)):
            rec.add_video(camera.next())
            while queue and queue[0].producer_time + 0.02 <= BASE_S + camera.index / FPS:
                packet = queue.pop(0)
                if undecoded:
                    rec.add_opus(packet)
                else:
                    for frame, producer in decoder.decode(packet):
                        rec.add_audio(frame, producer)
        fragments = await rec.close()
        assert rec.stats.audio_frames_in == len(packets) - len(queue)
        assert rec.stats.audio_silence_samples == 10 * AUDIO_SAMPLES
        stored.append([decode_fragment(store, f) for f in fragments])
    undecoded_audio, decoded_audio = ([a for _, a in fs] for fs in stored)
    assert undecoded_audio == decoded_audio
    assert sum(len(a) for a in undecoded_audio) >= 130  # ~2.8 s of AAC frames of 1024


async def test_get_media_for_fragment_list_body_plays_and_is_tagged(
    store: FragmentStore, tmp_path: Path
) -> None:
    rec = FragmentRecorder(store, STREAM, fragment_duration_s=1.0)
    n = feed(rec, Camera(gop=15), 3.5)
    fragments = await rec.close()
    assert len(fragments) == 4
    body = build_fragment_list_body([store.resolve(f) for f in fragments])
    tags = read_segment_tags(body)
    assert [t[TAG_FRAGMENT_NUMBER] for t in tags] == [f.fragment_number for f in fragments]
    for t, f in zip(tags, fragments, strict=True):
        assert t[TAG_PRODUCER_TIMESTAMP] == timestamp_tag(f.producer_start_ms)
        assert t[TAG_SERVER_TIMESTAMP] == timestamp_tag(f.server_start_ms)
        assert float(t[TAG_PRODUCER_TIMESTAMP]) == pytest.approx(f.producer_start_ms / 1000)
    # PyAV reads every frame of every segment
    with av.open(io.BytesIO(body), "r") as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == n
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe not installed: cannot check that ffmpeg decodes the body")
    path = tmp_path / "body.mkv"
    path.write_bytes(body)
    result = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = dict(
        (line.split(",")[1], line.split(",")) for line in result.stdout.strip().splitlines()
    )
    assert rows["video"][0] == "h264" and int(rows["video"][2]) == n
    audio_packets = sum(f.audio_frame_count for f in fragments)
    assert rows["audio"][0] == "aac" and int(rows["audio"][2]) == audio_packets
