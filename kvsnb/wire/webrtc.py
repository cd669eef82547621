"""WebRTC pieces that the kvsnb client and Local KVS's storage peer share: the signaling
roles, the codec constants of KVS storage sessions, the codec choice of an answer (H.264 the
encoder really produces, its RTX, and Opus, whatever the offer's order), ICE candidate payloads
↔ aiortc, and the H.264 profile rewrite that lets Local KVS's aiortc peer accept an answer.

The wire facts behind each constant are in docs/wire.md, "Storage sessions".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import av
import numpy as np
from aiortc import RTCIceCandidate, RTCRtpCodecCapability, RTCRtpSender
from aiortc.sdp import H264Profile, candidate_from_sdp, parse_h264_profile_level_id

from kvsnb.errors import KvsnbError
from kvsnb.wire import sdp

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
# What aiortc's H264Encoder (libx264, profile Baseline, level 3.1) really produces: a
# Constrained Baseline stream, which is also a Baseline stream. An answer declares one of
# these, Constrained Baseline first, and never another profile (RFC 6184 §8.1).
ENCODER_H264_PROFILES = (H264Profile.PROFILE_CONSTRAINED_BASELINE, H264Profile.PROFILE_BASELINE)
ANSWER_H264_PROFILE_LEVEL_IDS = ("42e01f", "42001f")  # aiortc's entries for the two, in order


class CandidateError(KvsnbError, ValueError):
    """An ICE_CANDIDATE payload that cannot be turned into a candidate."""


class CodecError(KvsnbError, ValueError):
    """An offer with no codec that a storage session participant can use (H.264
    packetization-mode 1 at a profile the encoder produces; Opus)."""


def storage_codec_preferences(
    kind: str, h264_profile_level_ids: Sequence[str] = ANSWER_H264_PROFILE_LEVEL_IDS
) -> list[RTCRtpCodecCapability]:
    """The codec preferences of a storage session transceiver, as the official JS SDK sets
    them (``setCodecPreferences``, H.264 and Opus only): Opus for audio; for video the H.264
    entries of aiortc's table with the given ``profile-level-id`` (in that order), each with
    its RTX."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [c for c in caps if c.mimeType.lower() == "audio/opus"]
    h264 = [
        c
        for profile in h264_profile_level_ids
        for c in caps
        if c.mimeType.lower() == "video/h264"
        and str(c.parameters.get("profile-level-id", "")).lower() == profile
    ]
    return h264 + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def usable_h264(params: Mapping[str, str]) -> bool:
    """Whether an offered H.264 payload type (its fmtp ``params``) takes what kvsnb's encoder
    sends: packetization-mode 1 and a Baseline or Constrained Baseline ``profile-level-id``
    (absent means Constrained Baseline, as aiortc and libwebrtc read it)."""
    if params.get("packetization-mode", "0") != str(PACKETIZATION_MODE):
        return False
    try:
        profile, _ = parse_h264_profile_level_id(params.get("profile-level-id", "42e01f"))
    except ValueError:
        return False
    return profile in ENCODER_H264_PROFILES


def check_offer_codecs(offer: str) -> None:
    """Raise ``CodecError`` unless each media section kind of ``offer`` has a codec a
    storage session participant can use: video H.264 (``usable_h264``), audio Opus. The
    message names what was offered."""
    kinds = {kind for kind, _, _ in sdp.directions(offer)}
    wanted = {
        "video": "H.264 with packetization-mode=1 at Constrained Baseline or Baseline "
        "profile (what kvsnb's encoder produces)",
        "audio": "Opus",
    }
    for kind in ("video", "audio"):
        if kind not in kinds:
            continue
        offered = sdp.codecs(offer, kind)
        if kind == "video":
            ok = any(c.name.upper() == "H264" and usable_h264(c.params) for c in offered)
        else:
            ok = any(c.name.lower() == "opus" for c in offered)
        if not ok:
            listed = ", ".join(c.describe() for c in offered) or "no codec"
            raise CodecError(
                f"The offer's {kind} has no codec kvsnb can use: it needs {wanted[kind]}; "
                f"offered: {listed}."
            )


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
    except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts on some
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
    type changed.

    Only Local KVS's storage peer uses it, on answers it receives: it never decodes the
    video it stores, so the declared profile does not matter to it. The kvsnb client never
    relabels: it answers only with a profile its encoder produces (``check_offer_codecs``)."""
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
