"""Passthrough receive between two real aiortc peers on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack

from kvsnb.local.storage.passthrough import (
    CLOCK_SOURCE_SR,
    EncodedFrame,
    enable_passthrough,
    media_ssrc,
    passthrough_stats,
    receiver_for_track,
    send_pli,
)
from kvsnb.wire.h264 import is_keyframe
from kvsnb.wire.ice import host_addresses

WIDTH, HEIGHT = 640, 480
LOOPBACK = ["127.0.0.1"]


class MovingPattern(VideoStreamTrack):
    """A 640x480 test pattern whose bar moves every frame (aiortc paces it at 30 fps)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
        x = (self.index * 8) % WIDTH
        img[:, x : x + 32] = 220
        self.index += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


def _prefer_h264(pc: RTCPeerConnection) -> None:
    caps = RTCRtpSender.getCapabilities("video")
    codecs = [c for c in caps.codecs if c.mimeType in ("video/H264", "video/rtx")]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(codecs)


@pytest.fixture
async def peers() -> AsyncIterator[dict[str, Any]]:
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    state: dict[str, Any] = {"sender": sender, "receiver": receiver}

    @receiver.on("track")
    def on_track(track: Any) -> None:
        if track.kind == "video":
            rtp_receiver = receiver_for_track(receiver, track)
            state["clock"] = enable_passthrough(rtp_receiver)
            state["rtp_receiver"] = rtp_receiver
            state["video_track"] = track
        else:
            state["audio_track"] = track

    sender.addTrack(MovingPattern())
    sender.addTrack(AudioStreamTrack())
    _prefer_h264(sender)
    with host_addresses(LOOPBACK):
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
    try:
        yield state
    finally:
        await sender.close()
        await receiver.close()


async def _recv(track: Any, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(track.recv(), timeout)


async def test_passthrough_frames_decode_and_pli_forces_keyframe(peers: dict[str, Any]) -> None:
    track = peers["video_track"]
    rtp_receiver = peers["rtp_receiver"]
    first = await _recv(track)
    assert isinstance(first, EncodedFrame)
    assert first.keyframe
    assert first.data.startswith(b"\x00\x00\x00\x01") or first.data.startswith(b"\x00\x00\x01")
    assert first.timestamp == 0
    assert abs(first.arrival_time - time.time()) < 5

    frames = [first]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        frames.append(await _recv(track))

    # Every access unit decodes with a plain H.264 decoder, at the sent size.
    decoder = av.CodecContext.create("h264", "r")
    decoded = 0
    for f in frames:
        packet = av.Packet(f.data)
        for picture in decoder.decode(packet):
            assert (picture.width, picture.height) == (WIDTH, HEIGHT)
            decoded += 1
    assert decoded >= len(frames) - 2
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(frames))
    assert [f.keyframe for f in frames] == [is_keyframe(f.data) for f in frames]

    # PLI goes to the media SSRC (the sender's, not its RTX SSRC).
    video_sender = next(s for s in peers["sender"].getSenders() if s.kind == "video")
    sent = (await video_sender.getStats()).values()
    assert media_ssrc(rtp_receiver) == next(s.ssrc for s in sent if s.type == "outbound-rtp")
    keyframes_before = passthrough_stats(rtp_receiver)["keyframes"]
    # The sender's GOP is long (x264 default 250 frames): no keyframe arrives by itself soon.
    quiet = [await _recv(track) for _ in range(10)]
    assert not any(f.keyframe for f in quiet)
    assert await send_pli(rtp_receiver)
    sent_at = time.monotonic()
    got_keyframe_after: float | None = None
    while time.monotonic() - sent_at < 3.0:
        f = await _recv(track)
        if f.keyframe:
            got_keyframe_after = time.monotonic() - sent_at
            break
    assert got_keyframe_after is not None and got_keyframe_after < 1.0
    assert passthrough_stats(rtp_receiver)["keyframes"] > keyframes_before


async def test_audio_stays_decoded_and_sender_reports_map_producer_time(
    peers: dict[str, Any],
) -> None:
    audio = await _recv(peers["audio_track"])
    assert isinstance(audio, av.AudioFrame)
    assert audio.sample_rate == 48000
    track = peers["video_track"]
    deadline = time.monotonic() + 4.0
    frame = await _recv(track)
    while frame.clock_source != CLOCK_SOURCE_SR and time.monotonic() < deadline:
        frame = await _recv(track)
    assert frame.clock_source == CLOCK_SOURCE_SR, "no RTCP SR within 4 s"
    # Producer clock (SR) and server clock are the same machine here: close together.
    assert abs(frame.producer_time - frame.arrival_time) < 0.5
    assert passthrough_stats(peers["rtp_receiver"])["sender_reports"] >= 1
    # Producer times advance with the RTP clock.
    nxt = await _recv(track)
    expected = (nxt.timestamp - frame.timestamp) / 90000
    assert nxt.producer_time - frame.producer_time == pytest.approx(expected, abs=0.05)


async def test_enable_passthrough_refuses_audio(peers: dict[str, Any]) -> None:
    audio_track = peers["audio_track"]
    rtp_receiver = receiver_for_track(peers["receiver"], audio_track)
    with pytest.raises(ValueError):
        enable_passthrough(rtp_receiver)
