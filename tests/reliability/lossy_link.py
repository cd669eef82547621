"""A lossy UDP link on 127.0.0.1 between a master and the storage peer, like ``tc netem``
but in user space: an asyncio UDP relay that drops and delays media packets, and a master
``MasterSession`` whose ICE candidates are rewritten (as a NAT would) so that both peers
reach each other only through the relay.

::

    master ──► master-facing socket ─┐        ┌─► storage peer
                                      relay ──┤
    master ◄── (same socket) ◄────────┘       └── storage-facing socket ◄── storage peer

The master is given the master-facing socket's address in place of each storage candidate;
the storage peer is given the storage-facing socket's address in place of the master's
candidates. So every packet between them crosses the relay, both ways. Loss and jitter
apply to RTP and RTCP (first byte 128-191, RFC 7983) in both directions; STUN and DTLS pass
untouched, so the test is about the media path, not the handshake. The relay counts what it
forwarded and dropped, RTX retransmissions (master → storage, the RTX payload type) and
NACK and PLI feedback (storage → master; the first RTCP header of an SRTCP packet is in
the clear).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from kvsnb.client.session import MasterSession

HOST = "127.0.0.1"
RTX_PT = 127  # the storage session's offer: rtx on 127 for H.264 on 126
RTCP_RTPFB, RTCP_PSFB = 205, 206
FMT_NACK, FMT_PLI = 1, 1

Address = tuple[str, int]


@dataclass
class LinkStats:
    """What crossed the link."""

    media_forwarded: int = 0
    media_dropped: int = 0
    other_forwarded: int = 0  # STUN, DTLS
    rtx_packets: int = 0
    nacks: int = 0
    plis: int = 0
    max_delay_ms: float = 0.0
    by_pt: dict[int, int] = field(default_factory=dict)


def is_media(data: bytes) -> bool:
    """RTP or RTCP (RFC 7983 demultiplexing)."""
    return bool(data) and 128 <= data[0] <= 191


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and 192 <= data[1] <= 223


class _Side(asyncio.DatagramProtocol):
    def __init__(self, link: LossyLink, name: str) -> None:
        self.link = link
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.link.forward(self, data, addr)


class LossyLink:
    """The relay. ``loss`` is the drop probability of each media packet, ``jitter_ms`` the
    upper bound of a uniform random delay added to each media packet (so packets reorder);
    ``seed`` makes a run repeatable."""

    def __init__(self, loss: float = 0.0, jitter_ms: float = 0.0, seed: int = 1) -> None:
        self.loss = loss
        self.jitter_ms = jitter_ms
        self.rng = random.Random(seed)
        self.stats = LinkStats()
        self._storage_side: _Side | None = None
        self._master_sides: dict[Address, _Side] = {}  # storage address → its master side
        self._storage_of: dict[_Side, Address] = {}
        self._master_addr: Address | None = None
        self._tasks: set[asyncio.Handle] = set()

    async def start(self) -> LossyLink:
        self._storage_side = await self._open("storage")
        return self

    async def _open(self, name: str) -> _Side:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Side(self, name), local_addr=(HOST, 0)
        )
        assert isinstance(protocol, _Side)
        protocol.transport = transport  # connection_made may run only later
        return protocol

    @staticmethod
    def _port(side: _Side) -> int:
        assert side.transport is not None
        return int(side.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        for handle in self._tasks:
            handle.cancel()
        for side in [self._storage_side, *self._master_sides.values()]:
            if side is not None and side.transport is not None:
                side.transport.close()

    # ------------------------------------------------------------------ candidates

    async def storage_candidate_for_master(self, candidate: str) -> str:
        """A storage candidate as the master must see it: the relay's master-facing
        socket in place of the storage peer's address."""
        parts = candidate.split()
        address = (parts[4], int(parts[5]))
        assert address[0] == HOST, candidate
        side = self._master_sides.get(address)
        if side is None:
            side = self._master_sides[address] = await self._open("master")
            self._storage_of[side] = address
        parts[5] = str(self._port(side))
        return " ".join(parts)

    def master_candidate_for_storage(self, candidate: str) -> str:
        """A master candidate as the storage peer must see it: the relay's storage-facing
        socket in place of the master's address."""
        parts = candidate.split()
        assert parts[4] == HOST, candidate
        if self._master_addr is None:
            self._master_addr = (parts[4], int(parts[5]))
        assert self._storage_side is not None
        parts[5] = str(self._port(self._storage_side))
        return " ".join(parts)

    # ------------------------------------------------------------------ forwarding

    def forward(self, side: _Side, data: bytes, addr: Address) -> None:
        """A datagram that reached one of the relay's sockets: counted, and passed on to the
        other peer unless the loss pattern drops it (media only), after its jitter delay."""
        if side.name == "master":
            self._master_addr = addr
            destination = self._storage_of[side]
            out = self._storage_side
            if is_media(data) and not is_rtcp(data):
                pt = data[1] & 0x7F
                self.stats.by_pt[pt] = self.stats.by_pt.get(pt, 0) + 1
                if pt == RTX_PT:
                    self.stats.rtx_packets += 1
        else:
            # storage → master: through the master side paired with this storage address
            paired = next((s for s, a in self._storage_of.items() if a == addr), None)
            if paired is None or self._master_addr is None:
                return
            destination, out = self._master_addr, paired
            if is_rtcp(data):
                fmt, pt = data[0] & 0x1F, data[1]
                if pt == RTCP_RTPFB and fmt == FMT_NACK:
                    self.stats.nacks += 1
                elif pt == RTCP_PSFB and fmt == FMT_PLI:
                    self.stats.plis += 1
        assert out is not None and out.transport is not None
        transport = out.transport
        if not is_media(data):
            self.stats.other_forwarded += 1
            transport.sendto(data, destination)
            return
        if self.rng.random() < self.loss:
            self.stats.media_dropped += 1
            return
        self.stats.media_forwarded += 1
        delay = self.rng.uniform(0.0, self.jitter_ms) / 1000 if self.jitter_ms else 0.0
        if delay <= 0:
            transport.sendto(data, destination)
            return
        self.stats.max_delay_ms = max(self.stats.max_delay_ms, delay * 1000)
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def send() -> None:
            if handle is not None:
                self._tasks.discard(handle)
            if not transport.is_closing():
                transport.sendto(data, destination)

        handle = loop.call_later(delay, send)
        self._tasks.add(handle)


class LinkedStorageSession(MasterSession):
    """A master ``MasterSession`` behind a ``LossyLink``: only its candidates (what a NAT
    in front of it would change) are rewritten; everything else is kvsnb's own code."""

    def __init__(self, *args: Any, link: LossyLink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link

    async def _add_candidate(self, payload: dict[str, Any]) -> None:
        value = payload.get("candidate")
        if isinstance(value, str) and value:
            prefix = "candidate:" if value.startswith("candidate:") else ""
            rewritten = await self.link.storage_candidate_for_master(value.removeprefix(prefix))
            payload = {**payload, "candidate": prefix + rewritten}
        await super()._add_candidate(payload)

    async def _setup(self) -> None:
        await super()._setup()
        assert self.signaling is not None
        send = self.signaling.send
        link = self.link

        async def send_through_link(
            action: Any, payload: dict[str, Any], *args: Any, **kwargs: Any
        ) -> str:
            value = payload.get("candidate")
            if action == "ICE_CANDIDATE" and isinstance(value, str) and value:
                prefix = "candidate:" if value.startswith("candidate:") else ""
                rewritten = link.master_candidate_for_storage(value.removeprefix(prefix))
                payload = {**payload, "candidate": prefix + rewritten}
            return await send(action, payload, *args, **kwargs)

        self.signaling.send = send_through_link  # type: ignore[method-assign]
