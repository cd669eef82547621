"""The storage session's offers as they reach a client, and what the client sent back
(docs/wire.md, "Storage sessions"; the rules are the README's "Storage sessions: how kvsnb
joins, retries and reconnects").

The newest offer is answered: queued older ones, and an offer of an earlier attempt, are
discarded (with their candidates, through ``CandidateBuffer``). Each message sent is kept by
correlation id, so a STATUS_RESPONSE can say what it is about, and only one about the answer
being connected ends the session.
"""

from __future__ import annotations

import asyncio

from kvsnb.client.candidates import CandidateBuffer
from kvsnb.client.signaling import SignalingMessage
from kvsnb.client.timeline import SessionTimeline
from kvsnb.wire import sdp


def offer_sdp(offer: SignalingMessage) -> str:
    """The SDP of an SDP_OFFER message (empty when it has none)."""
    return str((offer.payload or {}).get("sdp", ""))


class OfferBook:
    """Offers received (a queue, newest answered) and messages sent (by correlation id).

    ``last_offer`` is the SDP of the newest offer answered (or being answered), as the
    storage session sent it; ``answer_id`` the correlation id of the answer of the peer
    being connected (``None`` between peers). Steps land in ``timeline``.
    """

    def __init__(self, timeline: SessionTimeline, candidates: CandidateBuffer) -> None:
        self.timeline = timeline
        self.candidates = candidates
        self.last_offer: str | None = None
        self.answer_id: str | None = None
        self._queue: asyncio.Queue[SignalingMessage] = asyncio.Queue()
        self._sent: dict[str, str] = {}  # correlationId → what it was ("answer", "candidate")

    # ------------------------------------------------------------------ received

    def put(self, offer: SignalingMessage) -> None:
        """An SDP_OFFER from the storage session."""
        self._queue.put_nowait(offer)

    async def get(self) -> SignalingMessage:
        """The next offer, when it comes."""
        return await self._queue.get()

    def put_back(self, offer: SignalingMessage) -> None:
        """Keep an offer taken too early for the next ``get``."""
        self._queue.put_nowait(offer)

    def discard(self, offer: SignalingMessage) -> None:
        """Drop an offer, and its candidates now and later."""
        self.candidates.discard(sdp.ice_ufrag(offer_sdp(offer)))

    def drop_stale(self) -> None:
        """Discard every offer queued so far (from an earlier attempt)."""
        while not self._queue.empty():
            self.discard(self._queue.get_nowait())
            self.timeline.mark("offer_discarded", reason="from an earlier attempt")

    def newest(self, offer: SignalingMessage) -> SignalingMessage:
        """``offer`` or, when more are queued, the newest one (the others are discarded)."""
        while not self._queue.empty():
            self.discard(offer)
            offer = self._queue.get_nowait()
            self.timeline.mark("offer_superseded", reason="a newer offer was queued")
        return offer

    def answering(self, offer: SignalingMessage) -> str:
        """A peer is made for ``offer``: it becomes ``last_offer``; returns its SDP."""
        self.last_offer = offer_sdp(offer)
        return self.last_offer

    # ------------------------------------------------------------------ sent

    def sent(self, correlation_id: str, what: str) -> None:
        """Note a message sent (``what`` it was, e.g. ``"candidate"``)."""
        self._sent[correlation_id] = what

    def answer_sent(self, correlation_id: str) -> None:
        """The answer of the peer being connected went out with this correlation id."""
        self.answer_id = correlation_id
        self._sent[correlation_id] = "answer"

    def supersede_answer(self) -> None:
        """The peer of the current answer is gone: a later status about it is not fatal."""
        if self.answer_id is not None:
            self._sent[self.answer_id] = "superseded answer"
        self.answer_id = None

    def about(self, correlation_id: str | None) -> str:
        """What a STATUS_RESPONSE's correlation id refers to (``"unknown"`` when not ours)."""
        return self._sent.get(correlation_id or "", "unknown")

    def is_current_answer(self, correlation_id: str | None) -> bool:
        """Whether the correlation id is that of the answer being connected."""
        return correlation_id is not None and correlation_id == self.answer_id
