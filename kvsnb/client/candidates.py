"""The storage session's ICE candidates as they reach a client: which offer each belongs to,
and which wait for their offer (docs/wire.md, "Storage sessions").

AWS may trickle candidates before its offer, and a late offer of an earlier join may arrive
with candidates of its own. As the JS SDK, a candidate that arrives before the peer has the
remote description is buffered; kvsnb also ties each candidate to its offer by ICE username
fragment (``usernameFragment``, or the candidate's ``ufrag`` extension), so a superseded
offer's candidates are dropped and a later offer's wait for it.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Literal

RECEIVED_KEPT = 256  # remote candidates kept in ``CandidateBuffer.received``, newest last

Route = Literal["add", "buffer", "discard"]


def candidate_ufrag(payload: dict[str, Any]) -> str | None:
    """The ICE username fragment a candidate payload names (``usernameFragment``, or the
    candidate's ``ufrag`` extension), if any: it ties the candidate to one offer."""
    ufrag = payload.get("usernameFragment")
    if isinstance(ufrag, str) and ufrag:
        return ufrag
    parts = str(payload.get("candidate", "")).split()
    for key, value in itertools.pairwise(parts):
        if key == "ufrag":
            return value
    return None


class CandidateBuffer:
    """Routes each remote candidate: to the peer answering its offer (``"add"``), into the
    buffer until its offer's remote description is set (``"buffer"``), or away when its
    offer was superseded or stale (``"discard"``). A candidate naming no ufrag belongs to
    the current offer.

    ``remote_ufrag`` is the ufrag of the offer the current peer answers (``None`` between
    peers); ``received`` the last ``RECEIVED_KEPT`` candidate payloads received, in order.
    """

    def __init__(self) -> None:
        self.remote_ufrag: str | None = None
        self.discarded: set[str] = set()  # ufrags of superseded or stale offers
        self.received: deque[dict[str, Any]] = deque(maxlen=RECEIVED_KEPT)
        self._early: list[dict[str, Any]] = []
        self._remote_set = False

    @property
    def buffered(self) -> int:
        """How many candidates wait for their offer's remote description."""
        return len(self._early)

    def discard(self, ufrag: str | None) -> None:
        """Drop the candidates of the offer with this ufrag, now and when they come."""
        if ufrag:
            self.discarded.add(ufrag)

    def answering(self, ufrag: str | None) -> None:
        """A new peer answers the offer with ``ufrag``; its remote description is not set."""
        self.remote_ufrag = ufrag
        self._remote_set = False

    def remote_set(self) -> tuple[list[dict[str, Any]], int]:
        """The peer has the offer: returns the buffered candidates to add to it now, and how
        many buffered ones were dropped (of discarded offers). Candidates of an offer still
        to come stay buffered."""
        self._remote_set = True
        early, self._early = self._early, []
        ready: list[dict[str, Any]] = []
        dropped = 0
        for cand in early:
            ufrag = candidate_ufrag(cand)
            if ufrag is None or ufrag == self.remote_ufrag:
                ready.append(cand)
            elif ufrag in self.discarded:
                dropped += 1
            else:
                self._early.append(cand)
        return ready, dropped

    def route(self, payload: dict[str, Any]) -> Route:
        """Where a candidate from the storage session goes (buffered ones are kept here)."""
        self.received.append(payload)
        ufrag = candidate_ufrag(payload)
        if ufrag is not None and ufrag in self.discarded:
            return "discard"
        if not self._remote_set or (ufrag is not None and ufrag != self.remote_ufrag):
            self._early.append(payload)
            return "buffer"
        return "add"

    def peer_closed(self) -> None:
        """The current peer is gone: its offer's late candidates are dropped."""
        self.discard(self.remote_ufrag)
        self.remote_ufrag = None
        self._remote_set = False
