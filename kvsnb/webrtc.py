"""WebRTC pieces that the kvsnb client and Local KVS's storage peer share: the signaling
roles, the codec constants of KVS storage sessions, ICE candidate payloads ↔ aiortc, and the
H.264 profile rewrite that lets aiortc accept an offer or answer.

The wire facts behind each constant are in docs/wire.md, "Storage sessions".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import av
import numpy as np
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from kvsnb import sdp
from kvsnb.errors import KvsnbError

Role = Literal["MASTER", "VIEWER"]
"""A signaling client's role in a channel (GetSignalingChannelEndpoint ``Role``)."""

ROLES: tuple[Role, ...] = ("MASTER", "VIEWER")

H264_PAYLOAD_TYPE = 126  # the storage session's offer (docs/wire.md, "Storage sessions")
OPUS_PAYLOAD_TYPE = 111
OFFER_PROFILE_LEVEL_ID = "42e01f"  # (inferred) Constrained Baseline 3.1 in the offer
PACKETIZATION_MODE = 1
OPUS_SAMPLE_RATE = 48_000  # Opus in WebRTC runs at 48 kHz (RFC 7587)
AIORTC_H264_PROFILES = ("42001f", "42e01f")  # the H.264 entries of aiortc's codec table
AIORTC_H264_PROFILE = "42e01f"  # the one a rewritten profile is relabelled to


class CandidateError(KvsnbError, ValueError):
    """An ICE_CANDIDATE payload that cannot be turned into a candidate."""


def candidate_from_payload(
    payload: Mapping[str, Any], mids: Sequence[str | None]
) -> RTCIceCandidate | None:
    """The aiortc candidate of an ICE_CANDIDATE payload, or ``None`` for end-of-candidates.

    ``mids`` are the peer's m-line mids in order. A missing ``sdpMid`` (the storage session
    sends none) is taken from ``sdpMLineIndex`` when that is an index of ``mids``, otherwise
    from the first m-line (the transport is bundled). Raises ``CandidateError`` when the
    payload has no candidate string or the string does not parse.
    """
    value = payload.get("candidate")
    if not isinstance(value, str):
        raise CandidateError("ICE_CANDIDATE payload must carry a candidate.")
    if not value:
        return None
    try:
        cand = candidate_from_sdp(value.removeprefix("candidate:"))
    except (ValueError, IndexError) as exc:
        raise CandidateError(f"Malformed ICE candidate: {value!r}") from exc
    index = payload.get("sdpMLineIndex")
    i = index if isinstance(index, int) and 0 <= index < len(mids) else 0
    mid = payload.get("sdpMid")
    cand.sdpMid = mid if isinstance(mid, str) and mid else (mids[i] if mids else None)
    cand.sdpMLineIndex = i
    return cand


def candidate_to_payload(line: sdp.CandidateLine, *, with_mid: bool = True) -> dict[str, Any]:
    """The ICE_CANDIDATE payload of a candidate taken out of an SDP. ``with_mid=False``
    leaves ``sdpMid`` out, as the storage session does."""
    payload: dict[str, Any] = {"candidate": line.candidate, "sdpMLineIndex": line.sdp_mline_index}
    if with_mid:
        payload["sdpMid"] = line.sdp_mid
    return payload


def relabel_h264_profiles(
    text: str, keep: Sequence[str] = AIORTC_H264_PROFILES
) -> tuple[str, dict[int, str]]:
    """Give every H.264 payload type whose ``profile-level-id`` is not in ``keep`` (by
    default: not in aiortc's codec table) the profile ``AIORTC_H264_PROFILE``, so that
    aiortc accepts the description. Returns the SDP and the original profile of each payload
    type changed."""
    changed: dict[int, str] = {}
    for pt in sdp.payload_types(text, "video", "H264"):
        original = sdp.fmtp(text, pt).get("profile-level-id")
        if original is not None and original.lower() not in keep:
            changed[pt] = original
            text = sdp.set_fmtp(text, pt, profile_level_id=AIORTC_H264_PROFILE)
    return text, changed


def to_mono(frame: av.AudioFrame) -> np.ndarray:
    """The s16 samples of an audio frame (planar or packed, any channel count) downmixed to
    mono int16 by averaging the channels."""
    data = frame.to_ndarray()
    if frame.format.is_planar:
        mono = data.astype(np.int32).mean(axis=0)
    else:
        mono = data.reshape(-1, len(frame.layout.channels)).astype(np.int32).mean(axis=1)
    return mono.astype(np.int16)
