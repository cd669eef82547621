"""kvsnb.wire.webrtc: the codec choice of a storage session participant, ICE_CANDIDATE
payloads to and from aiortc, the H.264 profile relabelling of Local KVS's peer, and the
audio downmix, on the SDP shapes of tests/unit/test_sdp.py."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest

from kvsnb.wire import sdp, webrtc
from tests.unit.test_sdp import AIORTC_OFFER, CHROME_ANSWER

# ---------------------------------------------------------------------------- codecs


@pytest.mark.parametrize(
    ("params", "usable"),
    [
        ({"packetization-mode": "1", "profile-level-id": "42e01f"}, True),  # Constrained Base
        ({"packetization-mode": "1", "profile-level-id": "42001f"}, True),  # Baseline
        ({"packetization-mode": "1", "profile-level-id": "42C01F"}, True),  # case, level
        ({"packetization-mode": "1", "profile-level-id": "4d001f"}, False),  # Main
        ({"packetization-mode": "1", "profile-level-id": "640c1f"}, False),  # Constr. High
        ({"packetization-mode": "0", "profile-level-id": "42e01f"}, False),
        ({"profile-level-id": "42e01f"}, False),  # mode 0 when absent
        ({"packetization-mode": "1"}, True),  # no profile: Constrained Baseline
        ({"packetization-mode": "1", "profile-level-id": "zz"}, False),  # unparsable
    ],
)
def test_usable_h264(params: dict[str, str], usable: bool) -> None:
    assert webrtc.usable_h264(params) is usable


def test_offers_with_a_usable_codec_per_kind_pass() -> None:
    webrtc.check_offer_codecs(AIORTC_OFFER)  # H.264 42001f/42e01f mode 1, Opus
    webrtc.check_offer_codecs(CHROME_ANSWER)  # High first, but 42e01f listed too
    audio_only = (
        AIORTC_OFFER[: AIORTC_OFFER.index("m=video")]
        + AIORTC_OFFER[AIORTC_OFFER.index("m=audio") :]
    )
    webrtc.check_offer_codecs(audio_only)  # a kind that is not offered needs no codec


def test_an_offer_without_usable_h264_names_what_it_offered() -> None:
    # only the High profile left: Chrome's answer without its 42e01f entry
    high_only = "\r\n".join(
        ln
        for ln in CHROME_ANSWER.split("\r\n")
        if not re.match(r"a=(rtpmap|fmtp|rtcp-fb):(125|108)\b", ln)
    ).replace("SAVPF 96 97 126 127 125 108", "SAVPF 96 97 126 127")
    with pytest.raises(webrtc.CodecError) as err:
        webrtc.check_offer_codecs(high_only)
    assert str(err.value) == (
        "The offer's video has no codec kvsnb can use: it needs H.264 with "
        "packetization-mode=1 at Constrained Baseline or Baseline profile (what kvsnb's "
        "encoder produces); offered: VP8/90000 (PT 96), H264/90000 (PT 126; "
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f)."
    )
    assert isinstance(err.value, ValueError)


def test_an_offer_without_opus_is_refused() -> None:
    no_opus = AIORTC_OFFER.replace("a=rtpmap:96 opus/48000/2\r\n", "")
    with pytest.raises(webrtc.CodecError, match="audio has no codec kvsnb can use") as err:
        webrtc.check_offer_codecs(no_opus)
    assert str(err.value).endswith(
        "it needs Opus; offered: G722/8000 (PT 9), PCMU/8000 (PT 0), PCMA/8000 (PT 8)."
    )


def test_storage_codec_preferences_are_h264_and_opus_only() -> None:
    audio = webrtc.storage_codec_preferences("audio")
    assert [c.mimeType.lower() for c in audio] == ["audio/opus"]
    video = webrtc.storage_codec_preferences("video")
    assert [(c.mimeType.lower(), c.parameters.get("profile-level-id")) for c in video] == [
        ("video/h264", "42e01f"),  # Constrained Baseline first
        ("video/h264", "42001f"),
        ("video/rtx", None),
    ]
    only = webrtc.storage_codec_preferences("video", ("42001f",))
    assert [c.parameters.get("profile-level-id") for c in only] == ["42001f", None]


def test_relabel_h264_profiles_leaves_aiortcs_profiles_alone() -> None:
    text, changed = webrtc.relabel_h264_profiles(CHROME_ANSWER)
    assert changed == {126: "640c1f"}
    assert sdp.fmtp(text, 126)["profile-level-id"] == webrtc.AIORTC_H264_PROFILE
    assert sdp.fmtp(text, 126)["packetization-mode"] == "1"  # the rest kept
    assert sdp.fmtp(text, 125) == sdp.fmtp(CHROME_ANSWER, 125)
    assert webrtc.relabel_h264_profiles(AIORTC_OFFER) == (AIORTC_OFFER, {})
    # what is kept is the caller's choice
    _, changed = webrtc.relabel_h264_profiles(CHROME_ANSWER, keep=("640c1f",))
    assert changed == {125: "42e01f"}


# ---------------------------------------------------------------------------- candidates


def test_candidate_payload_round_trip() -> None:
    _, found = sdp.split_candidates(AIORTC_OFFER)
    mids = ["0", "1"]
    payload = webrtc.candidate_to_payload(found[2])
    assert payload == {"candidate": found[2].candidate, "sdpMLineIndex": 1, "sdpMid": "1"}
    cand = webrtc.candidate_from_payload(payload, mids)
    assert cand is not None
    assert (cand.foundation, cand.component, cand.protocol, cand.priority) == (
        "f957a2332b1715da3b0ef8ba684454eb",
        1,
        "udp",
        2130706431,
    )
    assert (cand.ip, cand.port, cand.type) == ("192.0.2.2", 55223, "host")
    assert (cand.sdpMid, cand.sdpMLineIndex) == ("1", 1)


def test_a_payload_without_sdp_mid_takes_it_from_the_index() -> None:
    _, found = sdp.split_candidates(AIORTC_OFFER)
    payload = webrtc.candidate_to_payload(found[3], with_mid=False)  # the storage session's
    assert payload == {"candidate": found[3].candidate, "sdpMLineIndex": 1}
    cand = webrtc.candidate_from_payload(payload, ["a", "v"])
    assert cand is not None and (cand.sdpMid, cand.sdpMLineIndex) == ("v", 1)
    assert (cand.ip, cand.port) == ("fd00::2", 36121)


@pytest.mark.parametrize("index", [2, -1, 7, "1", None, 1.0])
def test_an_sdp_mline_index_out_of_range_means_the_first_m_line(index: object) -> None:
    _, found = sdp.split_candidates(AIORTC_OFFER)
    payload = {"candidate": found[0].candidate, "sdpMLineIndex": index}
    cand = webrtc.candidate_from_payload(payload, ["0", "1"])
    assert cand is not None and (cand.sdpMid, cand.sdpMLineIndex) == ("0", 0)
    # a given sdpMid wins over the index
    cand = webrtc.candidate_from_payload({**payload, "sdpMid": "1"}, ["0", "1"])
    assert cand is not None and (cand.sdpMid, cand.sdpMLineIndex) == ("1", 0)
    # no m-lines known: no mid
    cand = webrtc.candidate_from_payload(payload, [])
    assert cand is not None and (cand.sdpMid, cand.sdpMLineIndex) == (None, 0)


def test_end_of_candidates_and_bad_payloads() -> None:
    assert webrtc.candidate_from_payload({"candidate": "", "sdpMLineIndex": 0}, ["0"]) is None
    with pytest.raises(webrtc.CandidateError, match=r"^ICE_CANDIDATE payload must carry"):
        webrtc.candidate_from_payload({"sdpMid": "0"}, ["0"])
    with pytest.raises(webrtc.CandidateError, match=r"^ICE_CANDIDATE payload must carry"):
        webrtc.candidate_from_payload({"candidate": 5}, ["0"])
    for bad in ("candidate:1 1 udp", "not a candidate", "candidate:x 1 udp p 1.2.3.4 9 typ"):
        with pytest.raises(webrtc.CandidateError) as err:
            webrtc.candidate_from_payload({"candidate": bad}, ["0"])
        assert str(err.value) == f"Malformed ICE candidate: {bad!r}"
        assert isinstance(err.value, ValueError)


# ---------------------------------------------------------------------------- audio


def test_to_mono_averages_the_channels_of_packed_and_planar_frames() -> None:
    left = np.array([100, -200, 300, 32767], np.int16)
    right = np.array([300, 200, -301, 32767], np.int16)
    packed = av.AudioFrame.from_ndarray(
        np.stack([left, right], axis=1).reshape(1, -1), format="s16", layout="stereo"
    )
    planar = av.AudioFrame.from_ndarray(np.stack([left, right]), format="s16p", layout="stereo")
    expected = np.array([200, 0, 0, 32767], np.int16)  # truncated toward zero
    for frame in (packed, planar):
        mono = webrtc.to_mono(frame)
        assert mono.dtype == np.int16
        assert mono.tolist() == expected.tolist()
    single = av.AudioFrame.from_ndarray(left.reshape(1, -1), format="s16", layout="mono")
    assert webrtc.to_mono(single).tolist() == left.tolist()
