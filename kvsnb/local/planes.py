"""Wires the data planes of a Local KVS onto its control plane and signaling relay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .signaling_rest import SignalingRestPlane

if TYPE_CHECKING:
    from .server import LocalKvs


async def build_planes(kvs: LocalKvs) -> None:
    """Create the signaling REST, webrtc-storage and archived-media planes of ``kvs``."""
    assert kvs.control is not None and kvs.relay is not None
    kvs.planes["signaling"] = SignalingRestPlane(kvs.control)
