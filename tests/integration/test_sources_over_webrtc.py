"""Media sources sent through a real aiortc peer connection over loopback, H.264 negotiated as
with KVS: their stamps survive aiortc's encoder (or its passthrough packetizer)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from kvsnb.sources import (
    FileSource,
    Stamp,
    TestPatternTrack,
    ToneTrack,
    make_test_file,
    read_stamp_frame,
)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


async def receive_stamps(tracks: list[MediaStreamTrack], count: int) -> list[Stamp]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    for track in tracks:
        transceiver = sender.addTransceiver(track, direction="sendonly")
        if track.kind == "video":
            transceiver.setCodecPreferences(h264)
    received: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    receiver.on("track", received.put_nowait)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        remote = await asyncio.wait_for(received.get(), 10)
        while remote.kind != "video":
            remote = await asyncio.wait_for(received.get(), 10)
        frames = [await asyncio.wait_for(remote.recv(), 10) for _ in range(count)]
    finally:
        await sender.close()
        await receiver.close()
    return [read_stamp_frame(f) for f in frames if isinstance(f, av.VideoFrame)]


async def test_pattern_stamps_survive_aiortc_h264() -> None:
    before_ms = time.time() * 1000
    stamps = await receive_stamps([TestPatternTrack(320, 240), ToneTrack()], 12)
    assert [s.index for s in stamps] == list(range(12))
    assert all(before_ms <= s.capture_ms <= time.time() * 1000 for s in stamps)


async def test_file_passthrough_survives_aiortc_h264(media_dir: Path) -> None:
    path = make_test_file(media_dir / "wire.mp4", 1.0, 320, 240, audio_codec="aac")
    source = FileSource(path)
    assert source.passthrough and source.video is not None and source.audio is not None
    stamps = await receive_stamps([source.video, source.audio], 12)
    assert [s.index for s in stamps] == list(range(12))
