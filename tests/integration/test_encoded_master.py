"""A ``MasterSession`` sending media encoded elsewhere (``kvsnb.sources.encoded``, what the
kernel path of ``BrowserSession`` feeds it from a browser's WebCodecs) into a real Local KVS,
through TURN as by default: the storage session stores exactly the H.264 access units fed,
byte for byte (never re-encoded), cuts its fragments at the keyframes it asked for (PLI passed
back to the encoder), and turns the Opus fed into AAC. The JPEG and PCM fallbacks are encoded
by aiortc and stored too. ``BrowserSession(transport="kernel")`` with a Python client playing
its page over the kernel bridge stores every frame sent."""

from __future__ import annotations

import asyncio
import fractions
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import av
import numpy as np
import pandas as pd

from kvsnb.client.session import MasterSession
from kvsnb.client.target import Target
from kvsnb.local import LocalKvs
from kvsnb.playback import get_media, list_fragments
from kvsnb.sources import TestPatternTrack
from kvsnb.sources.encoded import (
    KIND_H264,
    KIND_INFO,
    KIND_KEYFRAME_REQUEST,
    KIND_OPUS,
    EncodedAudioTrack,
    EncodedVideoTrack,
    JpegEncoder,
    JpegVideoTrack,
    PcmAudioTrack,
    forward_keyframe_requests,
    h264_access_units,
    pack_chunk,
    parse_chunk,
)
from kvsnb.widgets.browser_media import KernelPath
from kvsnb.wire import h264
from tests.conftest import FAST, stored_delivery, stored_frame_count, wait_until

FPS = 30.0
SIZE = (320, 240)
SLICES = (h264.NAL_SLICE, h264.NAL_IDR)


def slices(access_unit: bytes) -> list[bytes]:
    """The slice NAL units of an access unit, Annex B or length-prefixed (parameter sets and
    SEI may move into the codec private data when stored; slices never change)."""
    if access_unit.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        nals = h264.split_annexb(access_unit)
    else:
        nals = h264.split_length_prefixed(access_unit)
    return [n for n in nals if h264.nal_type(n) in SLICES]


def stored_video_packets(target: Target, stream_arn: str) -> list[bytes]:
    """Every stored video sample of the stream, in order (GetMediaForFragmentList)."""
    fragments = list_fragments(target, stream_arn)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    with av.open(io.BytesIO(media), mode="r") as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def stored_codecs(target: Target, stream_arn: str) -> set[str]:
    """The codecs of the stored tracks."""
    fragments = list_fragments(target, stream_arn)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    with av.open(io.BytesIO(media), mode="r") as container:
        return {s.codec_context.name for s in container.streams}


class OpusTone:
    """20 ms Opus packets of a 440 Hz tone (libopus), as a browser's AudioEncoder makes."""

    def __init__(self) -> None:
        encoder = av.CodecContext.create("libopus", "w")
        assert isinstance(encoder, av.AudioCodecContext)
        encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "s16"
        encoder.time_base = fractions.Fraction(1, 48_000)
        self.encoder = encoder
        self.n = 0

    def pcm(self) -> np.ndarray:
        """The next 20 ms of the tone, s16 mono."""
        t = (np.arange(960) + 960 * self.n) / 48_000
        self.n += 1
        return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)

    def packets(self) -> list[bytes]:
        """The Opus packets of the next 20 ms."""
        frame = av.AudioFrame.from_ndarray(self.pcm().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = (self.n - 1) * 960
        return [bytes(p) for p in self.encoder.encode(frame)]


async def feed_live(
    count: int, on_frame: Any, on_audio: Any, want_key: asyncio.Event | None = None
) -> pd.DataFrame:
    """Render ``count`` stamped frames in real time (capture time now, frame i at i/FPS) and
    20 ms of audio alongside; hand each frame to ``on_frame(frame, capture_us)`` and each 20 ms
    to ``on_audio(capture_us)``. A set ``want_key`` makes the next frame a keyframe. Returns
    the frames sent (``frame_index``, ``capture_ms``)."""
    pattern = TestPatternTrack(*SIZE)
    start = time.monotonic()
    epoch0 = time.time()
    rows = []
    audio_sent = 0
    for index in range(count):
        due = start + index / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # pacing a live source
        capture_ms = int((epoch0 + index / FPS) * 1000)
        frame = pattern.render(index, capture_ms)
        if want_key is not None and want_key.is_set():
            want_key.clear()
            frame.pict_type = av.video.frame.PictureType.I
        on_frame(frame, capture_ms * 1000)
        rows.append((index, capture_ms))
        while audio_sent * 0.02 <= index / FPS:
            on_audio(int((epoch0 + audio_sent * 0.02) * 1_000_000))
            audio_sent += 1
    return pd.DataFrame(rows, columns=["frame_index", "capture_ms"])


async def test_access_units_fed_are_stored_byte_for_byte(target: Target, kvs: LocalKvs) -> None:
    _, stream_arn = target.create_storage_channel("encoded")
    video, audio = EncodedVideoTrack(), EncodedAudioTrack()
    want_key = asyncio.Event()
    video.on_keyframe_request(want_key.set)
    session = MasterSession(target, "encoded", video=video, audio=audio, policy=FAST)
    pattern_units: list[bytes] = []
    tone = OpusTone()
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    try:
        await session.start(timeout=60)
        assert session.pc is not None
        for transceiver in session.pc.getTransceivers():
            if transceiver.kind == "video":
                forward_keyframe_requests(transceiver.sender, video)
        units = _Units()

        def on_frame(frame: av.VideoFrame, capture_us: int) -> None:
            unit, key = units.encode(frame)
            pattern_units.append(unit)
            video.feed(unit, capture_us, key)

        def on_audio(capture_us: int) -> None:
            for packet in tone.packets():
                audio.feed(packet, capture_us)

        sent = await feed_live(105, on_frame, on_audio, want_key)  # 3.5 s
        await wait_until(lambda: video.stats()["sent"] == 105, "the sender took every frame")
    finally:
        await session.stop()
        video.stop()
        audio.stop()
    await wait_until(
        lambda: stored_frame_count(kvs, stream_arn) == 105, "every frame fed is stored"
    )
    delivery = await stored_delivery(target, stream_arn, sent)
    assert delivery.complete, str(delivery)

    stored = await asyncio.to_thread(stored_video_packets, target, stream_arn)
    assert [slices(p) for p in stored] == [slices(u) for u in pattern_units]  # not re-encoded
    # the storage session asked for keyframes on its 1 s schedule and got them: fragments
    fragments = list_fragments(target, stream_arn)
    assert video.keyframe_requests >= 2 and len(fragments) >= 3
    assert sum(h264.is_keyframe(u) for u in pattern_units) >= 3
    assert await asyncio.to_thread(stored_codecs, target, stream_arn) == {"h264", "aac"}
    assert video.stats()["dropped"] == 0 and audio.stats()["sent"] > 0


class _Units:
    """One libx264 encoder fed a frame at a time; a frame whose ``pict_type`` is I becomes a
    keyframe (as ``h264_access_units`` does)."""

    def __init__(self) -> None:
        self._pending: list[av.VideoFrame] = []
        self._out = h264_access_units(self._frames(), fps=FPS, gop=10_000)

    def _frames(self) -> Iterator[av.VideoFrame]:
        while True:
            yield self._pending.pop()

    def encode(self, frame: av.VideoFrame) -> tuple[bytes, bool]:
        """The access unit of ``frame``."""
        self._pending.append(frame)
        return next(self._out)


async def test_jpeg_and_pcm_fallbacks_are_encoded_and_stored(target: Target, kvs: LocalKvs) -> None:
    _, stream_arn = target.create_storage_channel("fallback")
    video, audio = JpegVideoTrack(), PcmAudioTrack()
    session = MasterSession(target, "fallback", video=video, audio=audio, policy=FAST)
    jpeg = JpegEncoder(quality=3)
    tone = OpusTone()
    try:
        await session.start(timeout=60)
        sent = await feed_live(
            45,
            lambda frame, us: video.feed(jpeg.encode(frame), us),
            lambda us: audio.feed(tone.pcm().astype("<i2").tobytes(), us),
        )
        await wait_until(lambda: video.stats()["sent"] == 45, "the sender took every picture")
    finally:
        await session.stop()
        video.stop()
        audio.stop()
    # a picture is dropped only when the sender falls behind by JPEG_BACKLOG: those sent
    taken = sent[sent["frame_index"].isin([item.index for item in video.sent])]
    assert len(taken) + video.stats()["dropped"] == 45 and len(taken) >= 40
    await wait_until(
        lambda: stored_frame_count(kvs, stream_arn) == len(taken), "every picture sent is stored"
    )
    delivery = await stored_delivery(target, stream_arn, taken)
    assert delivery.complete, str(delivery)
    assert await asyncio.to_thread(stored_codecs, target, stream_arn) == {"h264", "aac"}


async def test_browser_session_kernel_path_stores_what_its_page_sends(
    target: Target, kvs: LocalKvs
) -> None:
    """``BrowserSession(transport="kernel")`` end to end without a browser: a Python client
    plays the page on the widget's bridge socket (hello with the widget's token, the
    ``kernel_start`` it is sent, an info chunk, then H.264 and Opus chunks, keyframes when
    asked); the kernel's ``MasterSession`` stores every frame."""
    from kvsnb.widgets import BrowserSession
    from kvsnb.widgets.bridge import page_urls

    _, stream_arn = target.create_storage_channel("kernel-widget")
    widget = BrowserSession(target, "kernel-widget", transport="kernel", policy=FAST)
    widget.start()
    direct = page_urls(widget.channel_link)[-1]
    want_key = asyncio.Event()
    from_kernel: list[Any] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(direct) as ws:
        await ws.send_json({"type": "hello", "token": widget.bridge_token})

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    from_kernel.append(json.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    chunk = parse_chunk(msg.data)
                    from_kernel.append(chunk.kind_name)
                    if chunk.kind == KIND_KEYFRAME_REQUEST:
                        want_key.set()

        reader = asyncio.get_running_loop().create_task(read())
        await wait_until(
            lambda: any(
                isinstance(m, dict) and m.get("type") == "kernel_start" for m in from_kernel
            ),
            "the kernel asks the page to start its media",
        )
        info = {"video": "h264", "audio": "opus", "width": SIZE[0], "height": SIZE[1]}
        await ws.send_bytes(pack_chunk(KIND_INFO, json.dumps(info).encode(), 0))
        await widget.wait_connected(60)
        assert widget.state == "connected" and widget.transport_used.startswith("kernel")
        path = widget.kernel_path
        assert isinstance(path, KernelPath) and path.info == info
        units, tone = _Units(), OpusTone()
        outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()

        def on_frame(frame: av.VideoFrame, capture_us: int) -> None:
            unit, key = units.encode(frame)
            outgoing.put_nowait(pack_chunk(KIND_H264, unit, capture_us, key))

        def on_audio(capture_us: int) -> None:
            for packet in tone.packets():
                outgoing.put_nowait(pack_chunk(KIND_OPUS, packet, capture_us))

        async def send() -> None:
            while (message := await outgoing.get()) is not None:
                await ws.send_bytes(message)

        sender = asyncio.get_running_loop().create_task(send())
        sent = await feed_live(75, on_frame, on_audio, want_key)
        outgoing.put_nowait(None)
        await sender
        assert path.video is not None
        await wait_until(lambda: len(path.video.sent) == 75, "the kernel sent every frame")
        await widget.stop()
        await wait_until(
            lambda: {"type": "kernel_stop"} in from_kernel, "the page is told to stop its media"
        )
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert widget.state == "closed" and path.state == "closed"
    assert "keyframe_request" in from_kernel  # the storage session's PLI reached the page
    stats = path.stats()
    assert stats["bad_chunks"] == 0 and stats["video"]["dropped"] == 0, stats
    await wait_until(lambda: stored_frame_count(kvs, stream_arn) == 75, "every frame stored")
    delivery = await stored_delivery(target, stream_arn, sent)
    assert delivery.complete, str(delivery)
