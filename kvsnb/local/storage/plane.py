"""The webrtc-storage plane (``kinesis-video-webrtc-storage``): JoinStorageSession and
JoinStorageSessionAsViewer (docs/wire.md, "Storage sessions").

The calls are validated here (pattern from the model, channel exists, storage mapped, the
2 calls/s per channel quota, ClientId rules); the storage session itself (the storage peer
that sends the offer and records) lives in ``peer``. Not idempotent, as AWS: each accepted
call triggers one offer; with no master socket connected the call still answers 200 and no
offer follows (clients retry).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

from kvsnb.local.control.plane import Channel, ControlPlane
from kvsnb.local.core.errors import ClientLimitExceededException, InvalidArgumentException

logger = logging.getLogger(__name__)

JOINS_PER_S_PER_CHANNEL = 2
NOT_MAPPED = (
    "The signaling channel {name} is not configured for media storage; enable it with "
    "UpdateMediaStorageConfiguration."
)


class StorageSessions(Protocol):
    """What the storage plane asks of the storage sessions (implemented by ``peer``)."""

    async def join_master(self, channel: Channel) -> None:
        """A master called JoinStorageSession: offer it a session if its socket is open."""

    async def join_viewer(self, channel: Channel, client_id: str) -> None:
        """A viewer called JoinStorageSessionAsViewer; raise ClientLimitExceededException
        when the session is full."""


class StoragePlane:
    """JoinStorageSession[AsViewer] for one Local KVS."""

    def __init__(
        self,
        control: ControlPlane,
        sessions: StorageSessions,
        *,
        joins_per_s: float = JOINS_PER_S_PER_CHANNEL,
    ) -> None:
        self.control = control
        self.sessions = sessions
        self.joins_per_s = joins_per_s
        self._recent: dict[str, deque[float]] = {}

    def _admit(self, channel_arn: str) -> Channel:
        channel = self.control.channel(arn=channel_arn)
        now = time.monotonic()
        recent = self._recent.setdefault(channel.arn, deque())
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= self.joins_per_s:
            raise ClientLimitExceededException(
                "Exceeded the limit of JoinStorageSession calls per second for this channel."
            )
        recent.append(now)
        if not channel.storage_enabled:
            raise InvalidArgumentException(NOT_MAPPED.format(name=channel.name))
        return channel

    async def join_storage_session(self, req: dict[str, Any]) -> dict[str, Any]:
        """JoinStorageSession: 200 with an empty body; the offer follows on the signaling
        socket."""
        channel = self._admit(req["channelArn"])
        await self.sessions.join_master(channel)
        return {}

    async def join_storage_session_as_viewer(self, req: dict[str, Any]) -> dict[str, Any]:
        """JoinStorageSessionAsViewer: 200 with an empty body; the offer follows on the
        viewer's signaling socket."""
        channel = self._admit(req["channelArn"])
        await self.sessions.join_viewer(channel, req["clientId"])
        return {}
