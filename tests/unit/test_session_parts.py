"""The storage session's parts that need no peer: how remote candidates are routed per
offer (``CandidateBuffer``), which offer is answered and what a STATUS_RESPONSE is about
(``OfferBook``), and a master refused at once without video."""

from __future__ import annotations

from typing import Any, cast

import pytest

from kvsnb.client.candidates import CandidateBuffer, candidate_ufrag
from kvsnb.client.offers import OfferBook
from kvsnb.client.session import MasterSession, SessionError
from kvsnb.client.signaling import SignalingMessage
from kvsnb.client.target import Target
from kvsnb.client.timeline import SessionTimeline
from kvsnb.sources import ToneTrack


def cand(ufrag: str | None, port: int = 5000) -> dict[str, Any]:
    payload: dict[str, Any] = {"candidate": f"candidate:1 1 udp 1 127.0.0.1 {port} typ host"}
    if ufrag is not None:
        payload["usernameFragment"] = ufrag
    return payload


def offer(ufrag: str) -> SignalingMessage:
    text = f"v=0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:secretsecretsecretsecret\r\n"
    return SignalingMessage("SDP_OFFER", {"type": "offer", "sdp": text}, None)


def test_candidate_ufrag_from_either_place() -> None:
    assert candidate_ufrag({"usernameFragment": "abc", "candidate": "x"}) == "abc"
    assert candidate_ufrag({"candidate": "candidate:1 1 udp 1 h 1 typ host ufrag xyz"}) == "xyz"
    assert candidate_ufrag({"candidate": "candidate:1 1 udp 1 h 1 typ host"}) is None


def test_candidates_wait_for_their_offer_and_a_discarded_offers_are_dropped() -> None:
    buf = CandidateBuffer()
    assert buf.route(cand("a", 1)) == "buffer"  # before any offer
    assert buf.route(cand("b", 2)) == "buffer"  # of an offer still to come
    assert buf.route(cand(None, 3)) == "buffer"
    buf.answering("a")
    assert buf.route(cand("a", 4)) == "buffer"  # remote description not set yet
    ready, dropped = buf.remote_set()
    assert [c["candidate"].split()[5] for c in ready] == ["1", "3", "4"] and dropped == 0
    assert buf.buffered == 1  # b's, for its offer
    assert buf.route(cand("a", 5)) == "add" and buf.route(cand(None, 6)) == "add"
    assert buf.route(cand("b", 7)) == "buffer"
    buf.peer_closed()  # a superseded: its late candidates go
    assert buf.route(cand("a", 8)) == "discard"
    buf.discard("c")
    buf.answering("b")
    buf.route(cand("c", 9))
    ready, dropped = buf.remote_set()
    assert [c["candidate"].split()[5] for c in ready] == ["2", "7"] and dropped == 0
    assert buf.remote_ufrag == "b" and len(buf.received) == 9


async def test_newest_offer_is_answered_and_only_its_answer_status_is_fatal() -> None:
    candidates = CandidateBuffer()
    timeline = SessionTimeline()
    book = OfferBook(timeline, candidates)
    book.put(offer("old"))
    book.drop_stale()
    assert "old" in candidates.discarded
    first, second, third = offer("one"), offer("two"), offer("three")
    book.put(second)
    book.put(third)
    assert book.newest(first) is third
    assert {"one", "two"} <= candidates.discarded
    assert [e.step for e in timeline.events].count("offer_superseded") == 2
    assert book.answering(third) == book.last_offer and "ice-ufrag:three" in book.last_offer
    book.answer_sent("c1")
    book.sent("c2", "candidate")
    assert book.is_current_answer("c1") and not book.is_current_answer("c2")
    assert book.about("c1") == "answer" and book.about("c2") == "candidate"
    assert book.about(None) == "unknown"
    book.supersede_answer()
    assert not book.is_current_answer("c1") and book.about("c1") == "superseded answer"


def test_master_without_video_is_refused_at_once() -> None:
    target = cast(Target, None)  # never reached: the check comes first
    with pytest.raises(SessionError, match=r"a master must send video, got None: pass video="):
        MasterSession(target, "c", video=None)
    with pytest.raises(SessionError, match=r"got a audio track"):
        MasterSession(target, "c", video=ToneTrack())
