"""Every access kvsnb makes to aiortc's private fields and functions, in one place.

aiortc has no public hook for what kvsnb needs here: capping a sender's H.264 encoder
(``RTCRtpSender`` raises its target on each REMB, up to 3 Mbps), seeing RTCP as it
arrives, asking for a keyframe, and taking a receiver's reassembled frames before its
decoder thread does (the storage peer stores H.264 as received, never decoded). So this
module reaches into aiortc's name-mangled fields, and nothing else in kvsnb does.

Nothing is patched at import time: each function changes the one receiver, sender or
jitter buffer it is given. The fields used are checked by ``tests/unit/test_aiortc_compat.py``
(which fails first, naming the field, when an aiortc release moves one), and
``pyproject.toml`` pins aiortc to the minor versions tested.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

# aiortc's private names (Python mangles ``__x`` in class C to ``_C__x``)
SENDER_ENCODER = "_RTCRtpSender__encoder"
RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
RECEIVER_BITRATE_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
RECEIVER_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
RECEIVER_TIMESTAMP_MAPPER = "_RTCRtpReceiver__timestamp_mapper"
TIMESTAMP_MAPPER_ORIGIN = "_origin"
HANDLE_RTCP = "_handle_rtcp_packet"  # RTCRtpSender and RTCRtpReceiver, called per RTCP packet
SEND_RTCP_PLI = "_send_rtcp_pli"  # RTCRtpReceiver
TRACK_QUEUE = "_queue"  # RemoteStreamTrack: what its recv() returns, None to end it
JITTER_ORIGIN = "_origin"  # JitterBuffer: sequence number of its oldest slot
JITTER_PACKETS = "_packets"  # JitterBuffer: the ring of packets
PACKET_DATA = "_data"  # RtpPacket: the depayloaded bytes the receiver sets
ENCODER_TARGET_BITRATE = "target_bitrate"  # aiortc's H264Encoder/Vp8Encoder property
TRANSCEIVER_CODECS = "_codecs"  # RTCRtpTransceiver: the negotiated codecs, the sent one first
ICE_CONNECTION = "_connection"  # RTCIceTransport: its aioice Connection
ICE_PROTOCOLS = "_protocols"  # aioice Connection: one StunProtocol per local candidate
ICE_NOMINATED = "_nominated"  # aioice Connection: component -> the nominated CandidatePair
TURN_CLIENT = "_TurnTransport__inner_protocol"  # aioice TurnTransport: its TURN client protocol


class FrameQueue(Protocol):
    """What a receiver's decoder queue must do: ``put`` on the event loop, for each
    reassembled ``(codec, JitterFrame)`` and ``None`` when the receiver stops; ``get`` from
    aiortc's decoder thread, which ends the track when it returns ``None``."""

    def put(self, item: Any) -> None: ...

    def get(self, *args: Any, **kwargs: Any) -> Any: ...


# ---------------------------------------------------------------------- sender


def sender_encoder(sender: RTCRtpSender) -> Any | None:
    """The sender's encoder, created by aiortc on the first frame (``None`` before)."""
    return getattr(sender, SENDER_ENCODER, None)


def use_encoder(sender: RTCRtpSender, encoder: Any) -> bool:
    """Have the sender encode with ``encoder`` (an aiortc encoder: ``encode``/``pack``),
    unless it already has one (aiortc makes its own on the first frame); True if set."""
    if sender_encoder(sender) is not None:
        return False
    setattr(sender, SENDER_ENCODER, encoder)
    return True


def sent_codec(transceiver: Any) -> str | None:
    """The MIME type of the codec a transceiver sends with (``video/H264``), once
    negotiated; ``None`` before."""
    codecs = getattr(transceiver, TRANSCEIVER_CODECS, None) or []
    return str(codecs[0].mimeType) if codecs else None


def cap_encoder_bitrate(sender: RTCRtpSender, cap_bps: int) -> bool:
    """Lower the sender's encoder target to ``cap_bps`` when it is above; True if it was.
    No encoder yet (before the first frame) or one without a target: nothing happens."""
    encoder = sender_encoder(sender)
    if encoder is None or getattr(encoder, ENCODER_TARGET_BITRATE, 0) <= cap_bps:
        return False
    setattr(encoder, ENCODER_TARGET_BITRATE, cap_bps)
    return True


# ---------------------------------------------------------------------- RTCP


def on_rtcp(endpoint: RTCRtpSender | RTCRtpReceiver, listener: Callable[[Any], None]) -> None:
    """Call ``listener(packet)`` for each RTCP packet the sender or receiver gets, before
    aiortc handles it (for this one object; listeners stack)."""
    original = getattr(endpoint, HANDLE_RTCP)

    async def handle(packet: Any) -> None:
        listener(packet)
        await original(packet)

    setattr(endpoint, HANDLE_RTCP, handle)


def after_rtcp(endpoint: RTCRtpSender | RTCRtpReceiver, listener: Callable[[Any], None]) -> None:
    """Call ``listener(packet)`` for each RTCP packet once aiortc has handled it (e.g. to
    undo what a REMB changed)."""
    original = getattr(endpoint, HANDLE_RTCP)

    async def handle(packet: Any) -> None:
        await original(packet)
        listener(packet)

    setattr(endpoint, HANDLE_RTCP, handle)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send an RTCP Picture Loss Indication for ``media_ssrc`` on the receiver."""
    await getattr(receiver, SEND_RTCP_PLI)(media_ssrc)


# ---------------------------------------------------------------------- receiver


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    """Whether the receiver's decoder thread started (too late to take its frames)."""
    return getattr(receiver, RECEIVER_DECODER_THREAD, None) is not None


def rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """The receiver's RTX SSRC → media SSRC map (from the remote description)."""
    return dict(getattr(receiver, RECEIVER_RTX_SSRC, {}) or {})


def timestamp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The first RTP timestamp the receiver saw: aiortc's frame timestamps are relative to
    it (unwrapped), so ``(timestamp + origin) & 0xFFFFFFFF`` is the wire value."""
    mapper = getattr(receiver, RECEIVER_TIMESTAMP_MAPPER, None)
    origin = getattr(mapper, TIMESTAMP_MAPPER_ORIGIN, None)
    return None if origin is None else int(origin)


def set_jitter_buffer(receiver: RTCRtpReceiver, buffer: JitterBuffer) -> None:
    """Replace the receiver's jitter buffer (before media flows)."""
    setattr(receiver, RECEIVER_JITTER_BUFFER, buffer)


def disable_bandwidth_estimation(receiver: RTCRtpReceiver) -> None:
    """Send no REMB from this receiver (its remote bitrate estimator removed)."""
    setattr(receiver, RECEIVER_BITRATE_ESTIMATOR, None)


def take_frames(receiver: RTCRtpReceiver, queue: FrameQueue) -> None:
    """Hand the receiver's reassembled frames to ``queue`` instead of its decoder thread.
    Call before the receiver starts (the ``"track"`` event); RuntimeError otherwise."""
    if receiver_started(receiver):
        raise RuntimeError("the receiver already started: register its sink in the track event")
    setattr(receiver, RECEIVER_DECODER_QUEUE, queue)


def track_queue(track: Any) -> asyncio.Queue[Any]:
    """The queue a remote track's ``recv()`` reads (``None`` in it ends the track)."""
    queue: asyncio.Queue[Any] = getattr(track, TRACK_QUEUE)
    return queue


# ---------------------------------------------------------------------- jitter buffer


def jitter_origin(buffer: JitterBuffer) -> int | None:
    """The sequence number of the jitter buffer's oldest slot (``None`` when empty)."""
    origin = getattr(buffer, JITTER_ORIGIN)
    return None if origin is None else int(origin)


def jitter_packet(buffer: JitterBuffer, sequence_number: int) -> RtpPacket | None:
    """The packet held for ``sequence_number`` (``None`` when its slot is empty)."""
    packets: list[RtpPacket | None] = getattr(buffer, JITTER_PACKETS)
    return packets[sequence_number % buffer.capacity]


def packet_data(packet: RtpPacket) -> bytes:
    """A received packet's depayloaded bytes (set by the receiver before its jitter buffer)."""
    data: bytes = getattr(packet, PACKET_DATA)
    return data


def relay_transports(pc: Any) -> list[Any]:
    """The TURN transports (aioice ``TurnTransport``: ``sendto(data, addr)`` sends through
    the relay, binding a channel, so installing a permission, for ``addr``) of every ICE
    transport of ``pc`` that has gathered; empty without TURN."""
    from aioice.turn import TurnTransport

    found: list[Any] = []
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        ice = dtls.transport if dtls is not None else None
        if ice is None or id(ice) in seen:
            continue
        seen.add(id(ice))
        connection = getattr(ice, ICE_CONNECTION)
        for protocol in getattr(connection, ICE_PROTOCOLS):
            transport = getattr(protocol, "transport", None)
            if isinstance(transport, TurnTransport):
                found.append(transport)
    return found


DISCARD_PORT = 9  # where the empty datagram that opens a relay permission goes (nowhere)


def open_relay_permissions(pc: Any, ips: Iterable[str]) -> int:
    """Let datagrams from each of ``ips`` reach ``pc`` through its TURN allocations from the
    first one. A TURN server drops what comes to an allocation from an address it has no
    permission for, and aioice installs one only with its own first send there; a peer's
    check that came earlier was lost, and retried 500 ms later. Each allocation sends an
    empty datagram to ``DISCARD_PORT`` of each address (permissions go by address, not port;
    aioice binds a channel, which installs one, before it sends). aioice's allocations are
    IPv4, so other addresses (IPv6, mDNS names) are left out. Returns how many datagrams
    were sent; none without TURN."""
    peers = [ip for ip in ips if _is_ipv4(ip)]
    sent = 0
    for relay in relay_transports(pc):
        for ip in peers:
            relay.sendto(b"", (ip, DISCARD_PORT))
            sent += 1
    return sent


def _is_ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def abandon_turn_allocations(pc: Any) -> int:
    """Close the sockets of ``pc``'s TURN allocations without asking the TURN server to free
    them, for a server known to be gone: closing ``pc`` then skips the deallocation, which
    would wait ~30 s per allocation for an answer (the server frees an allocation itself
    when its lifetime ends). Returns how many were closed."""
    closed = 0
    for relay in relay_transports(pc):
        socket = getattr(getattr(relay, TURN_CLIENT), "transport", None)
        if socket is not None and not socket.is_closing():
            socket.close()
            closed += 1
    return closed


def selected_pair(pc: Any) -> tuple[Any, Any] | None:
    """The (local, remote) aioice ``Candidate`` pair ICE nominated for ``pc``'s first
    transport (its ``type``: host, srflx, prflx, relay; its ``transport``: udp, tcp), or
    None before ICE has nominated one."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        ice = dtls.transport if dtls is not None else None
        if ice is None:
            continue
        nominated: dict[int, Any] = getattr(getattr(ice, ICE_CONNECTION), ICE_NOMINATED)
        pair = nominated.get(1)
        if pair is not None:
            return pair.local_candidate, pair.remote_candidate
    return None
