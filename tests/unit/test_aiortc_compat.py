"""Canary for ``kvsnb.wire.aiortc_compat``: every private aiortc field and function it relies
on exists, with the shape used, on the installed aiortc. When a release moves or renames
one, this fails first, naming the field (then update the compat module and the pin in
pyproject.toml). No network, no connected peers: a peer connection with transceivers is
enough to hold real senders and receivers."""

from __future__ import annotations

import asyncio
import inspect
import queue
from collections.abc import AsyncIterator
from typing import Any

import aiortc
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Encoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver, TimestampMapper
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from kvsnb.wire import aiortc_compat as compat

VERSION = aiortc.__version__


def has(obj: Any, name: str) -> None:
    assert hasattr(obj, name), f"aiortc {VERSION}: {type(obj).__name__}.{name} is gone"


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    peer = RTCPeerConnection()
    peer.addTransceiver("video", direction="sendrecv")
    peer.addTransceiver("audio", direction="sendrecv")
    yield peer
    await peer.close()


def _receiver(pc: RTCPeerConnection, kind: str) -> RTCRtpReceiver:
    return next(t.receiver for t in pc.getTransceivers() if t.kind == kind)


def _sender(pc: RTCPeerConnection, kind: str) -> RTCRtpSender:
    return next(t.sender for t in pc.getTransceivers() if t.kind == kind)


async def test_sender_encoder_field(pc: RTCPeerConnection) -> None:
    sender = _sender(pc, "video")
    has(sender, compat.SENDER_ENCODER)
    assert compat.sender_encoder(sender) is None  # created on the first frame
    source = inspect.getsource(RTCRtpSender)
    assert "self.__encoder = get_encoder(codec)" in source, (
        f"aiortc {VERSION}: RTCRtpSender no longer creates {compat.SENDER_ENCODER} on the "
        "first frame"
    )
    # what a REMB raises, and what cap_encoder_bitrate lowers
    encoder = H264Encoder()
    prop = getattr(type(encoder), compat.ENCODER_TARGET_BITRATE, None)
    assert isinstance(prop, property) and prop.fset is not None, (
        f"aiortc {VERSION}: H264Encoder.{compat.ENCODER_TARGET_BITRATE} is no settable property"
    )
    assert f"self.__encoder.{compat.ENCODER_TARGET_BITRATE} = bitrate" in source, (
        f"aiortc {VERSION}: RTCRtpSender no longer sets the encoder's "
        f"{compat.ENCODER_TARGET_BITRATE} on a REMB"
    )
    setattr(sender, compat.SENDER_ENCODER, encoder)
    assert compat.cap_encoder_bitrate(sender, 600_000)
    assert encoder.target_bitrate == 600_000
    assert not compat.cap_encoder_bitrate(sender, 700_000)


@pytest.mark.parametrize("kind", ["sender", "receiver"])
async def test_rtcp_handler(pc: RTCPeerConnection, kind: str) -> None:
    endpoint: Any = _sender(pc, "video") if kind == "sender" else _receiver(pc, "video")
    has(endpoint, compat.HANDLE_RTCP)
    handler = getattr(endpoint, compat.HANDLE_RTCP)
    assert inspect.iscoroutinefunction(handler), (
        f"aiortc {VERSION}: {type(endpoint).__name__}.{compat.HANDLE_RTCP} is not a coroutine"
    )
    assert list(inspect.signature(handler).parameters) == ["packet"], (
        f"aiortc {VERSION}: {type(endpoint).__name__}.{compat.HANDLE_RTCP} takes other "
        "arguments than (packet)"
    )
    # the transport dispatches RTCP through the instance attribute, so a wrapper is seen
    from aiortc import rtcdtlstransport

    assert f".{compat.HANDLE_RTCP}(" in inspect.getsource(rtcdtlstransport), (
        f"aiortc {VERSION}: RTCDtlsTransport no longer calls {compat.HANDLE_RTCP}"
    )
    seen: list[Any] = []
    compat.on_rtcp(endpoint, seen.append)
    compat.after_rtcp(endpoint, seen.append)
    assert getattr(endpoint, compat.HANDLE_RTCP) is not handler


async def test_receiver_fields(pc: RTCPeerConnection) -> None:
    receiver = _receiver(pc, "video")
    for name in (
        compat.RECEIVER_DECODER_THREAD,
        compat.RECEIVER_DECODER_QUEUE,
        compat.RECEIVER_JITTER_BUFFER,
        compat.RECEIVER_BITRATE_ESTIMATOR,
        compat.RECEIVER_RTX_SSRC,
        compat.RECEIVER_TIMESTAMP_MAPPER,
        compat.SEND_RTCP_PLI,
    ):
        has(receiver, name)
    assert not compat.receiver_started(receiver)
    assert isinstance(getattr(receiver, compat.RECEIVER_DECODER_QUEUE), queue.Queue)
    assert isinstance(getattr(receiver, compat.RECEIVER_JITTER_BUFFER), JitterBuffer), (
        f"aiortc {VERSION}: {compat.RECEIVER_JITTER_BUFFER} is no JitterBuffer"
    )
    assert compat.rtx_ssrcs(receiver) == {}
    mapper = getattr(receiver, compat.RECEIVER_TIMESTAMP_MAPPER)
    assert isinstance(mapper, TimestampMapper)
    has(mapper, compat.TIMESTAMP_MAPPER_ORIGIN)
    assert compat.timestamp_origin(receiver) is None
    mapper.map(1234)
    assert compat.timestamp_origin(receiver) == 1234
    pli = getattr(receiver, compat.SEND_RTCP_PLI)
    assert inspect.iscoroutinefunction(pli)
    assert list(inspect.signature(pli).parameters) == ["media_ssrc"], (
        f"aiortc {VERSION}: RTCRtpReceiver.{compat.SEND_RTCP_PLI} takes other arguments"
    )


def test_receiver_hands_frames_to_its_decoder_queue() -> None:
    """take_frames relies on these: the receiver puts ``(codec, frame)`` into its decoder
    queue on the loop and ``None`` when it stops; the decoder worker reads the queue with
    ``get()`` and ends the track on ``None``."""
    source = inspect.getsource(RTCRtpReceiver)
    for line in (
        "self.__decoder_queue.put((codec, encoded_frame))",
        "self.__decoder_queue.put(None)",
        "encoded_frame = self.__jitter_buffer.add(packet)",
        "self.__timestamp_mapper.map(",
        "if self.__remote_bitrate_estimator is not None:",
        "packet._data = depayload(codec, packet.payload)",
    ):
        assert line in source, f"aiortc {VERSION}: RTCRtpReceiver no longer does {line!r}"
    from aiortc import rtcrtpreceiver

    worker = inspect.getsource(rtcrtpreceiver.decoder_worker)
    assert "input_q.get()" in worker and "output_q.put(None)" in worker, (
        f"aiortc {VERSION}: decoder_worker no longer ends the track on None from its queue"
    )
    assert "self._track._queue," in source, (
        f"aiortc {VERSION}: the decoder worker no longer feeds "
        f"RemoteStreamTrack.{compat.TRACK_QUEUE}"
    )


async def test_remote_track_queue() -> None:
    track = RemoteStreamTrack(kind="video")
    q = compat.track_queue(track)
    assert isinstance(q, asyncio.Queue), f"aiortc {VERSION}: RemoteStreamTrack._queue moved"
    q.put_nowait(None)
    with pytest.raises(aiortc.mediastreams.MediaStreamError):
        await track.recv()


def test_jitter_buffer_fields() -> None:
    buffer = JitterBuffer(capacity=16, is_video=True)
    has(buffer, compat.JITTER_ORIGIN)
    has(buffer, compat.JITTER_PACKETS)
    has(buffer, "capacity")
    has(buffer, "remove")
    assert compat.jitter_origin(buffer) is None
    packet = RtpPacket(payload_type=96, sequence_number=100, timestamp=9000, marker=True)
    setattr(packet, compat.PACKET_DATA, b"\x00\x00\x01\x65")
    result = buffer.add(packet)
    assert isinstance(result, tuple) and len(result) == 2, (
        f"aiortc {VERSION}: JitterBuffer.add no longer returns (pli_flag, frame)"
    )
    assert compat.jitter_origin(buffer) == 100
    held = compat.jitter_packet(buffer, 100)
    assert held is packet, f"aiortc {VERSION}: JitterBuffer.{compat.JITTER_PACKETS} changed"
    assert compat.packet_data(packet) == b"\x00\x00\x01\x65"


async def test_ice_connection_fields(pc: RTCPeerConnection) -> None:
    """``relay_transports``: an ICE transport's aioice connection and its protocols, whose
    TURN transports send through the relay."""
    from aioice import Connection
    from aioice.turn import TurnTransport

    await pc.setLocalDescription(await pc.createOffer())  # gathers (host candidates here)
    ice = pc.getTransceivers()[0].sender.transport.transport
    has(ice, compat.ICE_CONNECTION)
    connection = getattr(ice, compat.ICE_CONNECTION)
    assert isinstance(connection, Connection), f"aiortc {VERSION}: {compat.ICE_CONNECTION}"
    assert hasattr(connection, compat.ICE_PROTOCOLS), (
        f"aioice: Connection.{compat.ICE_PROTOCOLS} is gone"
    )
    protocols = getattr(connection, compat.ICE_PROTOCOLS)
    assert protocols and all(hasattr(p, "transport") for p in protocols)
    assert callable(getattr(TurnTransport, "sendto", None)), "aioice: TurnTransport.sendto is gone"
    # abandon_turn_allocations: a TURN transport's client protocol, whose delete() skips the
    # deallocation once its socket is closing
    import inspect

    from aioice.turn import TurnClientMixin

    assert compat.TURN_CLIENT in inspect.getsource(TurnTransport.__init__).replace(
        "self.__inner_protocol", "self._TurnTransport__inner_protocol"
    ), f"aioice: TurnTransport.{compat.TURN_CLIENT} is gone"
    assert "is_closing()" in inspect.getsource(TurnClientMixin.delete), (
        "aioice: TurnClientMixin.delete no longer skips a closed allocation"
    )
    assert compat.abandon_turn_allocations(pc) == 0
    assert compat.relay_transports(pc) == []  # no TURN server: no relay transport
    assert isinstance(getattr(connection, compat.ICE_NOMINATED, None), dict), (
        f"aioice: Connection.{compat.ICE_NOMINATED} is gone"
    )
    assert compat.selected_pair(pc) is None  # nothing nominated before ICE runs
    from aioice.ice import CandidatePair

    assert isinstance(getattr(CandidatePair, "local_candidate", None), property), (
        "aioice: CandidatePair.local_candidate is gone"
    )
