"""The signaling REST plane (``kinesis-video-signaling``): GetIceServerConfig.

With TURN (the default, as AWS), the answer is AWS's shape: two ``IceServerList`` entries, each
with the three URI forms (``turn:…?transport=udp``, ``turns:…?transport=udp``,
``turns:…?transport=tcp``), a time-limited ``Username``/``Password`` pair and ``Ttl`` 300, for
Local KVS's coturn (``kvsnb.local.turn``). With ``ice="host"`` (no TURN) the list is empty:
peers reach the storage peer over loopback host candidates. Clients add AWS's STUN server
themselves and must not against Local KVS (kvsnb's target does not).
"""

from __future__ import annotations

from typing import Any

from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import InvalidArgumentException
from kvsnb.local.turn.server import TurnEndpoint

TURN_SERVERS = 2  # AWS answers with two TURN servers


class SignalingRestPlane:
    """GetIceServerConfig for channels of one Local KVS."""

    def __init__(self, control: ControlPlane, turn: TurnEndpoint | None = None) -> None:
        self.control = control
        self.turn = turn

    def get_ice_server_config(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetIceServerConfig: the channel must exist; Service, when given, is TURN; fresh
        credentials for each entry."""
        channel = self.control.channel(arn=req["ChannelARN"])
        if req.get("Service", "TURN") != "TURN":
            raise InvalidArgumentException("Service must be TURN")
        if self.turn is None:
            return {"IceServerList": []}
        return {"IceServerList": [self.turn.ice_server(channel.arn) for _ in range(TURN_SERVERS)]}
