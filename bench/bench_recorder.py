"""Recorder CPU per media second (docs/design.md budget: ≤ 0.03 CPU-s per media second).

1. Recorder only: one 480p 30 fps ~1 Mbps H.264 stream (pre-encoded with libx264 baseline)
   plus 48 kHz stereo audio, fed at full speed; CPU = time.process_time() of this process
   (all threads: parsing, AAC encoding, Matroska muxing, fsync, SQLite).
2. Over loopback aiortc: a sender in a child process (its H.264/Opus encoding is not
   counted) and, here, receive (SRTP, jitter buffer, passthrough, Opus decode) + recorder.

Prints figures; never asserts on time. Run: ``python -m bench.bench_recorder [--quick]``
(``--quick``: 5 media seconds and 4 s loopback windows).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report
from kvsnb.local.storage.passthrough import EncodedFrame
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.fragments import FragmentStore

logger = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 640, 480, 30
MEDIA_SECONDS = 20
BIT_RATE = 1_000_000
AUDIO_RATE, AUDIO_SAMPLES = 48_000, 960
BUDGET_CPU_PER_MEDIA_S = 0.03
LOOPBACK_SECONDS = 10
QUICK_MEDIA_SECONDS = 5
QUICK_LOOPBACK_SECONDS = 4
STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/bench/1700000000000"


def encode_video(seconds: int) -> list[tuple[bytes, int, bool]]:
    """Pre-encode a moving pattern: (Annex-B access unit, 90 kHz pts, keyframe)."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.time_base = fractions.Fraction(1, 90_000)
    enc.framerate = fractions.Fraction(FPS)
    enc.gop_size = 2 * FPS
    enc.bit_rate = BIT_RATE
    enc.options = {"profile": "baseline", "tune": "zerolatency", "preset": "veryfast"}
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = []
    for i in range(seconds * FPS):
        img = np.roll(noise, i * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 3000
        for p in enc.encode(frame):
            assert p.pts is not None
            out.append((bytes(p), p.pts, p.is_keyframe))
    return out


def make_audio(seconds: int) -> list[av.AudioFrame]:
    """20 ms stereo s16 frames of a tone, as aiortc's Opus decoder delivers them."""
    frames = []
    for k in range(seconds * AUDIO_RATE // AUDIO_SAMPLES):
        t = (np.arange(AUDIO_SAMPLES) + k * AUDIO_SAMPLES) / AUDIO_RATE
        mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        f = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        f.sample_rate = AUDIO_RATE
        f.pts = k * AUDIO_SAMPLES
        f.time_base = fractions.Fraction(1, AUDIO_RATE)
        frames.append(f)
    return frames


async def bench_recorder_only(media_seconds: int = MEDIA_SECONDS) -> None:
    """Feed ``media_seconds`` of pre-encoded packets at full speed and report CPU per media
    second."""
    video = encode_video(media_seconds)
    audio = make_audio(media_seconds)
    bits = sum(len(v[0]) for v in video) * 8 / media_seconds
    base = 1_700_000_000.0
    with tempfile.TemporaryDirectory() as tmp:
        store = FragmentStore(Path(tmp))
        rec = FragmentRecorder(store, STREAM, fragment_duration_s=2.0, audio=True)
        now = time.time()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        a = 0
        for data, pts, key in video:
            rec.add_video(EncodedFrame(data, pts, pts, key, base + pts / 90_000, now))
            while a < len(audio) and a * AUDIO_SAMPLES / AUDIO_RATE <= pts / 90_000:
                rec.add_audio(audio[a], base + a * AUDIO_SAMPLES / AUDIO_RATE)
                a += 1
        while a < len(audio):
            rec.add_audio(audio[a], base + a * AUDIO_SAMPLES / AUDIO_RATE)
            a += 1
        fragments = await rec.close()
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        store.close()
    print("== recorder only (passthrough video + Opus-PCM → AAC, mux, fsync, index) ==")
    print(f"media: {media_seconds} s, {WIDTH}x{HEIGHT} {FPS} fps, video {bits / 1e6:.2f} Mbps")
    print(f"fragments stored: {len(fragments)}, stats: {rec.stats}")
    print(f"CPU {cpu:.3f} s, wall {wall:.3f} s")
    per = cpu / media_seconds
    print(
        f"CPU-s per media second: {per:.4f} (budget {BUDGET_CPU_PER_MEDIA_S}, "
        f"{'within' if per <= BUDGET_CPU_PER_MEDIA_S else 'OVER'} budget)"
    )
    report(cpu_s_per_media_s=per)


# --------------------------------------------------------------------- loopback


def _sender_process(conn: Any, seconds: float) -> None:
    """Child process: an aiortc master sending a 480p pattern and a tone."""
    from aiortc import (
        RTCConfiguration,
        RTCPeerConnection,
        RTCRtpSender,
        RTCSessionDescription,
        VideoStreamTrack,
    )
    from aiortc.mediastreams import AudioStreamTrack

    from kvsnb.wire.ice import host_addresses

    class Pattern(VideoStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(2)
            self.noise = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            self.i = 0

        async def recv(self) -> av.VideoFrame:
            pts, tb = await self.next_timestamp()
            img = np.roll(self.noise, self.i * 4, axis=1)
            self.i += 1
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = pts, tb
            return f

    async def run() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(Pattern())
        caps = RTCRtpSender.getCapabilities("video").codecs
        for t in pc.getTransceivers():
            if t.kind == "video":
                t.setCodecPreferences(
                    [c for c in caps if c.mimeType in ("video/H264", "video/rtx")]
                )
        with host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        conn.send(json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}))
        answer = json.loads(await asyncio.get_running_loop().run_in_executor(None, conn.recv))
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.sleep(seconds)
        await pc.close()

    asyncio.run(run())


async def bench_loopback(record: bool = True, seconds: float = LOOPBACK_SECONDS) -> None:
    """Receive over a real loopback aiortc connection for ``seconds``; CPU of the receiving
    process.

    With ``record=False`` the frames are received and dropped: the receive path alone.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from kvsnb.local.storage.passthrough import (
        enable_passthrough,
        keyframe_requester,
        receiver_for_track,
    )
    from kvsnb.wire.ice import host_addresses

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    warmup = 3.0
    proc = ctx.Process(target=_sender_process, args=(child, seconds + warmup + 2))
    proc.start()
    offer = json.loads(await asyncio.get_running_loop().run_in_executor(None, parent.recv))
    with tempfile.TemporaryDirectory() as tmp:
        store = FragmentStore(Path(tmp))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        recorder: dict[str, FragmentRecorder] = {}
        tasks: list[asyncio.Task[None]] = []
        clocks: dict[str, Any] = {}
        stats = {"frames": 0, "bytes": 0}

        async def pump_video(track: Any) -> None:
            while True:
                frame = await track.recv()
                stats["bytes"] += len(frame.data)
                if record:
                    recorder["r"].add_video(frame)
                else:
                    stats["frames"] += 1

        async def pump_audio(track: Any) -> None:
            receiver = receiver_for_track(pc, track)
            from kvsnb.local.storage.passthrough import RtpClock

            clock = RtpClock(receiver, AUDIO_RATE)
            clocks["audio"] = clock
            while True:
                frame = await track.recv()
                producer, _ = clock.producer_time(frame.pts, time.time())
                if record:
                    recorder["r"].add_audio(frame, producer)

        @pc.on("track")
        def on_track(track: Any) -> None:
            receiver = receiver_for_track(pc, track)
            if track.kind == "video":
                enable_passthrough(receiver)
                recorder["r"] = FragmentRecorder(
                    store, STREAM, request_keyframe=keyframe_requester(receiver), audio=True
                )
                tasks.append(asyncio.ensure_future(pump_video(track)))
            else:
                tasks.append(asyncio.ensure_future(pump_audio(track)))

        with host_addresses(["127.0.0.1"]):
            await pc.setRemoteDescription(RTCSessionDescription(**offer))
            await pc.setLocalDescription(await pc.createAnswer())
        parent.send(json.dumps({"sdp": pc.localDescription.sdp, "type": "answer"}))
        await asyncio.sleep(warmup)
        rec = recorder["r"]
        before = rec.stats
        frames0, bytes0 = stats["frames"], stats["bytes"]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        await rec.drain()
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        after = rec.stats
        for t in tasks:
            t.cancel()
        await rec.close()
        await pc.close()
        store.close()
    proc.join(timeout=10)
    frames = after.frames_in - before.frames_in if record else stats["frames"] - frames0
    media_s = frames / FPS
    mbps = (stats["bytes"] - bytes0) * 8 / max(wall, 1e-9) / 1e6
    what = "receive + passthrough + recorder" if record else "receive + passthrough only"
    print(f"== loopback aiortc ({what}; sender in another process) ==")
    print(
        f"window {wall:.2f} s wall, video frames {frames} (~{media_s:.2f} media s), {mbps:.2f} Mbps"
    )
    if record:
        print(f"recorder stats: {after}")
    if media_s > 0:
        print(f"CPU {cpu:.3f} s → CPU-s per media second: {cpu / media_s:.4f}")
        key = "loopback_record_cpu_s_per_media_s" if record else "loopback_cpu_s_per_media_s"
        report(**{key: cpu / media_s})
    print("(aiortc's sender encodes at its own bitrate, ~0.5-1.5 Mbps after REMB ramp-up)")


async def main(quick: bool = False) -> None:
    """The recorder alone, then loopback without and with recording (shorter if ``quick``)."""
    await bench_recorder_only(QUICK_MEDIA_SECONDS if quick else MEDIA_SECONDS)
    seconds = QUICK_LOOPBACK_SECONDS if quick else LOOPBACK_SECONDS
    await bench_loopback(record=False, seconds=seconds)
    await bench_loopback(record=True, seconds=seconds)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m bench.bench_recorder")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    asyncio.run(main(ap.parse_args().quick))
