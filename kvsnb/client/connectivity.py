"""How a peer reaches a storage session, and what to say when it cannot.

On AWS, WebRTC ingestion requires TURN: the storage session offers relay candidates only and
takes no media from a peer that has no relay path, while JoinStorageSession still answers 200
(docs/wire.md, "TURN"). Local KVS does the same by default. This module describes the
candidates of each side (``candidate_kinds``), explains a connection that never came up
(``explain_failure``), and checks before a session starts that the TURN servers of
GetIceServerConfig give this machine a relay candidate (``check_connectivity``, the preflight
of ``kvsnb check --channel`` and the ``TrackTester``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kvsnb.client.target import Target
from kvsnb.sources.check import RuleResult
from kvsnb.wire.webrtc import Role

TURN_REQUIRED = (
    "WebRTC ingestion requires TURN: give your peer connection the IceServerList from "
    "GetIceServerConfig"
)
GATHER_TIMEOUT_S = 10.0


def turn_uris(ice_servers: Iterable[dict[str, Any]]) -> list[str]:
    """The ``turn:`` and ``turns:`` URIs of an IceServerList."""
    return [u for s in ice_servers for u in s.get("Uris", []) if u.startswith(("turn:", "turns:"))]


def candidate_kinds(lines: Iterable[str]) -> list[str]:
    """``type/transport`` of each ICE candidate line (SDP ``a=candidate:`` lines or bare
    ``candidate:`` strings), e.g. ``relay/udp``, in order, without repeats."""
    kinds: list[str] = []
    for line in lines:
        text = line.strip()
        text = text[2:] if text.startswith("a=") else text
        if not text.startswith("candidate:"):
            continue
        fields = text.split()
        if len(fields) < 8 or "typ" not in fields:
            continue
        kind = f"{fields[fields.index('typ') + 1]}/{fields[2].lower()}"
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def explain_failure(
    local: Sequence[str], remote: Sequence[str], ice_servers: Sequence[dict[str, Any]]
) -> str | None:
    """Why a peer with ``local`` candidate kinds could not reach a storage session offering
    ``remote`` ones, when the cause is the missing relay path; None when it is not."""
    remote_relay_only = bool(remote) and all(k.startswith("relay/") for k in remote)
    has_relay = any(k.startswith("relay/") for k in local)
    if not remote_relay_only or has_relay:
        return None
    if not turn_uris(ice_servers):
        why = "this peer connection has no TURN server"
    else:
        why = "its TURN servers gave this peer no relay candidate (unreachable or refused)"
    return (
        f"{TURN_REQUIRED} ({why}; the storage session offered only relay candidates: "
        f"{', '.join(remote)}; this peer had {', '.join(local) or 'none'})"
    )


async def relay_candidates(ice_servers: Sequence[dict[str, Any]]) -> list[str]:
    """The relay candidates a relay-only peer connection gathers with ``ice_servers``."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

    servers = [
        RTCIceServer(urls=list(s["Uris"]), username=s.get("Username"), credential=s.get("Password"))
        for s in ice_servers
        if turn_uris([s])
    ]
    if not servers:
        return []
    pc = RTCPeerConnection(
        RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    )
    try:
        pc.createDataChannel("preflight")
        await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), GATHER_TIMEOUT_S)
        sdp = pc.localDescription.sdp
    except (TimeoutError, OSError, ConnectionError):
        return []
    finally:
        await pc.close()
    return [
        line[2:]
        for line in sdp.splitlines()
        if line.startswith("a=candidate") and " relay " in line
    ]


async def check_connectivity(
    target: Target, channel: str, role: Role = "MASTER", client_id: str | None = None
) -> list[RuleResult]:
    """The preflight: GetIceServerConfig for ``channel`` gives TURN servers, and they give
    this machine a relay candidate (what a storage session needs before media can flow)."""
    channel_arn = await asyncio.to_thread(target.channel_arn, channel)
    endpoints = await asyncio.to_thread(target.endpoints, channel_arn, role)
    servers = await asyncio.to_thread(target.ice_servers, endpoints, client_id)
    uris = turn_uris(servers)
    rules = [
        RuleResult(
            "turn_servers",
            bool(uris),
            f"{len(uris)} TURN URIs" if uris else "none",
            "GetIceServerConfig returns TURN servers",
            "" if uris else f"{TURN_REQUIRED}; this target's GetIceServerConfig returned none",
        )
    ]
    if uris:
        started = time.monotonic()
        relays = await relay_candidates(servers)
        took_ms = (time.monotonic() - started) * 1000
        rules.append(
            RuleResult(
                "turn_relay",
                bool(relays),
                f"{relays[0].split()[4]}:{relays[0].split()[5]} in {took_ms:.0f} ms"
                if relays
                else "no relay candidate",
                "a relay candidate from the TURN servers",
                "" if relays else f"{TURN_REQUIRED}; the TURN servers ({uris[0]}, ...) gave none",
            )
        )
    return rules
