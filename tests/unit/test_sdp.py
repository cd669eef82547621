"""kvsnb.wire.sdp on real description shapes: an offer as aiortc writes it (the storage
peer's starting point and the kvsnb client's), and an answer as Chrome running the KVS
JS SDK writes it (bundled, several H.264 profiles, VP8 first)."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from kvsnb.wire import sdp

# SHA-256 certificate fingerprints (the SDP lines are longer than this file's lines)
AIORTC_FINGERPRINT = (
    "EF:31:C4:B1:46:87:A0:60:66:05:DF:89:D8:8E:BD:16:"
    "74:C6:6A:6D:B8:F1:60:F6:CF:34:D2:1C:16:11:5C:4C"
)
CHROME_FINGERPRINT = (
    "3C:5E:1F:9D:7A:22:6B:90:41:AA:0E:C5:18:DF:73:B2:"
    "55:6A:09:E1:4F:C3:87:2D:BB:10:9A:66:F0:38:D4:E7"
)

# An aiortc offer (recvonly video, sendrecv audio) with its host candidates, as
# ``RTCPeerConnection.createOffer`` + ``setLocalDescription`` leave it (fingerprints cut to
# one).
AIORTC_OFFER = """v=0
o=- 4005572292 4005572292 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1
a=msid-semantic:WMS *
m=video 53003 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102
c=IN IP4 192.0.2.2
a=recvonly
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=mid:0
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=rtpmap:97 VP8/90000
a=rtcp-fb:97 nack
a=rtcp-fb:97 nack pli
a=rtpmap:98 rtx/90000
a=fmtp:98 apt=97
a=rtpmap:99 H264/90000
a=rtcp-fb:99 nack
a=rtcp-fb:99 nack pli
a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:100 rtx/90000
a=fmtp:100 apt=99
a=rtpmap:101 H264/90000
a=rtcp-fb:101 nack
a=rtcp-fb:101 nack pli
a=fmtp:101 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:102 rtx/90000
a=fmtp:102 apt=101
a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 53003 typ host
a=candidate:d0bcf3d9c29a2bc887618212a1623bfa 1 udp 2130706431 fd00::2 40994 typ host
a=end-of-candidates
a=ice-ufrag:aAsq
a=ice-pwd:iTwBokCjKAHNgA9ntSMJ6S
a=fingerprint:sha-256 AIORTC_FINGERPRINT
a=setup:actpass
m=audio 55223 UDP/TLS/RTP/SAVPF 96 9 0 8
c=IN IP4 192.0.2.2
a=sendrecv
a=mid:1
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=rtpmap:96 opus/48000/2
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 55223 typ host
a=candidate:d0bcf3d9c29a2bc887618212a1623bfa 1 udp 2130706431 fd00::2 36121 typ host
a=end-of-candidates
a=ice-ufrag:aAsq
a=ice-pwd:iTwBokCjKAHNgA9ntSMJ6S
a=fingerprint:sha-256 AIORTC_FINGERPRINT
a=setup:actpass
""".replace("AIORTC_FINGERPRINT", AIORTC_FINGERPRINT).replace("\n", "\r\n")

# Chrome's answer through the KVS JS SDK to a storage session's offer: one bundled
# transport, candidates trickled apart (none in the SDP), VP8 and a High profile first.
CHROME_ANSWER = """v=0
o=- 6543210987654321098 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS stream
m=video 9 UDP/TLS/RTP/SAVPF 96 97 126 127 125 108
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Zk3a
a=ice-pwd:0b1Rj3MhRr2hJ0X4gFq8yW7s
a=ice-options:trickle
a=fingerprint:sha-256 CHROME_FINGERPRINT
a=setup:active
a=mid:0
a=sendonly
a=msid:stream video-track
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:126 H264/90000
a=rtcp-fb:126 nack
a=rtcp-fb:126 nack pli
a=fmtp:126 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f
a=rtpmap:127 rtx/90000
a=fmtp:127 apt=126
a=rtpmap:125 H264/90000
a=fmtp:125 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:108 rtx/90000
a=fmtp:108 apt=125
a=ssrc:1001 cname:chrome
m=audio 9 UDP/TLS/RTP/SAVPF 111 0
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Zk3a
a=ice-pwd:0b1Rj3MhRr2hJ0X4gFq8yW7s
a=ice-options:trickle
a=fingerprint:sha-256 CHROME_FINGERPRINT
a=setup:active
a=mid:1
a=sendrecv
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:0 PCMU/8000
a=ssrc:1002 cname:chrome
""".replace("CHROME_FINGERPRINT", CHROME_FINGERPRINT).replace("\n", "\r\n")


def lines(text: str) -> list[str]:
    """The lines of an SDP (CRLF-separated, no empty ones)."""
    return [ln for ln in text.split("\r\n") if ln]


# ---------------------------------------------------------------------------- candidates


def test_split_candidates_takes_every_candidate_out_with_its_section() -> None:
    text, found = sdp.split_candidates(AIORTC_OFFER)
    assert [(c.sdp_mid, c.sdp_mline_index) for c in found] == [
        ("0", 0),
        ("0", 0),
        ("1", 1),
        ("1", 1),
    ]
    assert found[0].candidate == (
        "candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 53003 typ host"
    )
    assert found[3].candidate.endswith("fd00::2 36121 typ host")
    assert not [ln for ln in lines(text) if ln.startswith("a=candidate:")]
    assert "a=end-of-candidates" not in lines(text)
    # everything else is kept, in order, CRLF-terminated
    removed = {c.candidate for c in found}
    assert lines(text) == [
        ln for ln in lines(AIORTC_OFFER) if ln[2:] not in removed and ln != "a=end-of-candidates"
    ]
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")


def test_bundled_candidates_keeps_those_of_the_first_bundled_section() -> None:
    _, found = sdp.split_candidates(AIORTC_OFFER)
    assert sdp.bundled_candidates(found, AIORTC_OFFER) == found[:2]
    # no BUNDLE group: every section has its own transport, so all are trickled
    unbundled = AIORTC_OFFER.replace("a=group:BUNDLE 0 1\r\n", "")
    assert sdp.bundled_candidates(found, unbundled) == found
    # the group's first mid decides, not the first m-line
    reordered = AIORTC_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 1 0")
    assert sdp.bundled_candidates(found, reordered) == found[2:]


def test_ice_ufrag_is_the_first_one() -> None:
    assert sdp.ice_ufrag(AIORTC_OFFER) == "aAsq"
    assert sdp.ice_ufrag(CHROME_ANSWER) == "Zk3a"
    assert sdp.ice_ufrag("v=0\r\ns=-\r\n") is None


# ---------------------------------------------------------------------------- codecs


def test_payload_types_and_fmtp_of_a_codec() -> None:
    assert sdp.payload_types(AIORTC_OFFER, "video", "H264") == [99, 101]
    assert sdp.payload_types(AIORTC_OFFER, "video", "rtx") == [98, 100, 102]
    assert sdp.payload_types(AIORTC_OFFER, "audio", "OPUS") == [96]  # case-insensitive
    assert sdp.payload_types(AIORTC_OFFER, "audio", "H264") == []
    assert sdp.fmtp(AIORTC_OFFER, 101) == {
        "level-asymmetry-allowed": "1",
        "packetization-mode": "1",
        "profile-level-id": "42e01f",
    }
    assert sdp.fmtp(AIORTC_OFFER, 100) == {"apt": "99"}
    assert sdp.fmtp(AIORTC_OFFER, 96) == {}  # no fmtp line


def test_codecs_in_order_without_rtx() -> None:
    video = sdp.codecs(CHROME_ANSWER, "video")
    assert [(c.payload_type, c.name, c.clock) for c in video] == [
        (96, "VP8", "90000"),
        (126, "H264", "90000"),
        (125, "H264", "90000"),
    ]
    assert video[1].params["profile-level-id"] == "640c1f"
    assert video[1].describe() == (
        "H264/90000 (PT 126; level-asymmetry-allowed=1;packetization-mode=1;"
        "profile-level-id=640c1f)"
    )
    assert video[0].describe() == "VP8/90000 (PT 96)"
    audio = sdp.codecs(CHROME_ANSWER, "audio")
    assert [(c.name, c.clock) for c in audio] == [("opus", "48000/2"), ("PCMU", "8000")]
    assert sdp.codec_names(AIORTC_OFFER, "video") == ["VP8", "H264", "H264"]
    assert sdp.codec_names(AIORTC_OFFER, "audio") == ["opus", "G722", "PCMU", "PCMA"]


def test_rename_payload_types_everywhere_a_payload_type_is_named() -> None:
    # as Local KVS writes its offer: H.264 at 126 (its RTX follows), Opus at 111
    renamed = sdp.rename_payload_types(AIORTC_OFFER, {101: 126, 102: 127, 96: 111})
    got = lines(renamed)
    assert "m=video 53003 UDP/TLS/RTP/SAVPF 97 98 99 100 126 127" in got
    assert "m=audio 55223 UDP/TLS/RTP/SAVPF 111 9 0 8" in got
    assert "a=rtpmap:126 H264/90000" in got and "a=rtpmap:101 H264/90000" not in got
    assert "a=rtcp-fb:126 nack pli" in got
    assert (
        "a=fmtp:126 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f" in got
    )
    assert "a=rtpmap:127 rtx/90000" in got and "a=fmtp:127 apt=126" in got
    assert "a=fmtp:100 apt=99" in got  # untouched where not mapped
    assert "a=rtpmap:111 opus/48000/2" in got
    # ports, ssrc-less lines and candidates keep their numbers
    assert sum(ln.startswith("a=candidate:") for ln in got) == 4
    assert len(got) == len(lines(AIORTC_OFFER))
    assert sdp.rename_payload_types(AIORTC_OFFER, {}) is AIORTC_OFFER


def test_set_fmtp_replaces_and_adds_parameters() -> None:
    changed = sdp.set_fmtp(CHROME_ANSWER, 126, profile_level_id="42e01f", x_google="1")
    assert sdp.fmtp(changed, 126) == {
        "level-asymmetry-allowed": "1",
        "packetization-mode": "1",
        "profile-level-id": "42e01f",
        "x-google": "1",
    }
    assert sdp.fmtp(changed, 125) == sdp.fmtp(CHROME_ANSWER, 125)
    assert len(lines(changed)) == len(lines(CHROME_ANSWER))
    # a payload type without an fmtp line: the SDP comes back as it was
    assert sdp.set_fmtp(CHROME_ANSWER, 96, apt="1") == CHROME_ANSWER


# ---------------------------------------------------------------------------- bundle-only


def test_directions_kind_direction_and_port_per_section() -> None:
    assert sdp.directions(AIORTC_OFFER) == [
        ("video", "recvonly", 53003),
        ("audio", "sendrecv", 55223),
    ]
    assert sdp.directions(CHROME_ANSWER) == [("video", "sendonly", 9), ("audio", "sendrecv", 9)]
    no_attribute = AIORTC_OFFER.replace("a=recvonly\r\n", "")
    assert sdp.directions(no_attribute)[0] == ("video", "sendrecv", 53003)  # the default


def test_make_bundle_only_leaves_the_section_no_transport_of_its_own() -> None:
    text = sdp.make_bundle_only(AIORTC_OFFER, "video")
    video = lines(text)[lines(text).index("m=video 0 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102") :]
    video = video[: next(i for i, ln in enumerate(video) if ln.startswith("m=audio"))]
    assert video[1] == "a=bundle-only"
    assert not [ln for ln in video if ln.startswith((*sdp.ICE_ATTRS, "a=candidate:"))]
    assert "a=mid:0" in video and "a=rtpmap:101 H264/90000" in video
    # the audio section keeps its transport
    assert sdp.directions(text) == [("video", "recvonly", 0), ("audio", "sendrecv", 55223)]
    assert sdp.ice_ufrag(text) == "aAsq"


def test_expand_bundle_only_gives_the_section_the_bundles_transport() -> None:
    # Local KVS's bundle-only variant: the bundle-only section is second (audio first)
    audio_first = sdp.make_bundle_only(CHROME_ANSWER, "audio")
    assert sdp.directions(audio_first)[1] == ("audio", "sendrecv", 0)
    expanded = sdp.expand_bundle_only(audio_first)
    assert "a=bundle-only" not in lines(expanded)
    assert sdp.directions(expanded)[1] == ("audio", "sendrecv", 9)
    audio = lines(expanded)[
        next(i for i, ln in enumerate(lines(expanded)) if ln.startswith("m=audio")) :
    ]
    donor = [ln for ln in lines(CHROME_ANSWER) if ln.startswith(sdp.ICE_ATTRS)][:5]
    assert audio[1:6] == donor  # the first section's ICE and DTLS attributes, once each
    # aiortc, which needs per-section transport attributes, reads it
    parsed = SessionDescription.parse(expanded)
    assert [m.kind for m in parsed.media] == ["video", "audio"]
    assert parsed.media[1].ice is not None and parsed.media[1].ice.usernameFragment == "Zk3a"
    assert parsed.media[1].dtls is not None and parsed.media[1].dtls.role == "client"
    # a description without a bundle-only section is unchanged but for its line endings
    assert lines(sdp.expand_bundle_only(CHROME_ANSWER)) == lines(CHROME_ANSWER)


async def test_an_aiortc_offer_survives_the_storage_session_rewrites() -> None:
    """What Local KVS does to aiortc's offer (PTs 126/111, candidates out, video
    bundle-only) and the client undoes (expand) leaves an offer aiortc reads. Audio comes
    first, as in the storage session's offers."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    h264 = next(
        pt
        for pt in sdp.payload_types(offer, "video", "H264")
        if sdp.fmtp(offer, pt)["profile-level-id"] == "42e01f"
    )
    (opus,) = sdp.payload_types(offer, "audio", "opus")
    text, found = sdp.split_candidates(sdp.rename_payload_types(offer, {h264: 126, opus: 111}))
    assert found and {c.sdp_mline_index for c in found} == {0, 1}
    assert sdp.bundled_candidates(found, text) == [c for c in found if c.sdp_mline_index == 0]
    text = sdp.make_bundle_only(text, "video")
    restored = sdp.expand_bundle_only(text)
    assert sdp.payload_types(restored, "video", "H264")[-1] == 126
    assert sdp.payload_types(restored, "audio", "opus") == [111]
    parsed = SessionDescription.parse(restored)
    assert [m.kind for m in parsed.media] == ["audio", "video"]
    video = parsed.media[1]
    assert video.port == 9 and video.direction == "recvonly"
    assert video.ice is not None and video.ice.usernameFragment == sdp.ice_ufrag(offer)
    assert video.dtls is not None and video.dtls.role == "auto"  # setup:actpass
    assert [c.payloadType for c in video.rtp.codecs if c.name == "H264"][-1] == 126
