"""The signaling REST plane (``kinesis-video-signaling``): GetIceServerConfig.

Local KVS runs no TURN server: peers reach it over loopback host candidates (see
``kvsnb.wire.ice``), so the honest ICE configuration is an empty ``IceServerList``. Clients that add
AWS's STUN server themselves must not do so against Local KVS (kvsnb's ``target`` does not).
"""

from __future__ import annotations

from typing import Any

from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import InvalidArgumentException


class SignalingRestPlane:
    """GetIceServerConfig for channels of one Local KVS."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    def get_ice_server_config(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetIceServerConfig: the channel must exist; Service, when given, is TURN."""
        self.control.channel(arn=req["ChannelARN"])
        if req.get("Service", "TURN") != "TURN":
            raise InvalidArgumentException("Service must be TURN")
        return {"IceServerList": []}
