"""``SessionTimeline``: every step of a session, with wall-clock and monotonic times
(docs/design.md, principle 7). Analysis and widgets read it as a pandas DataFrame."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# The setup steps, in the order a master goes through them (docs/wire.md, "Storage sessions").
STEPS = (
    "describe_channel",
    "describe_media_storage",
    "get_endpoints",
    "get_ice_config",
    "socket_open",
    "join_call",
    "join_response",
    "offer_received",
    "answer_sent",
    "ice_connected",
    "dtls_connected",
    "first_frame_sent",
)


@dataclass(frozen=True)
class TimelineEvent:
    """One step: its name, wall clock (epoch s), monotonic clock (s) and details."""

    step: str
    wall: float
    mono: float
    detail: dict[str, Any] = field(default_factory=dict)


class SessionTimeline:
    """An append-only record of a session's steps; listeners see each step as it happens.

    Per-frame send times are kept apart (``frames``) so that the step table stays short.
    """

    def __init__(self) -> None:
        self.events: list[TimelineEvent] = []
        self.frames: list[tuple[int, float, float]] = []  # (index, wall, mono)
        self._listeners: list[Callable[[TimelineEvent], None]] = []
        self.origin = time.monotonic()

    def mark(self, step: str, **detail: Any) -> TimelineEvent:
        """Record a step now."""
        event = TimelineEvent(step, time.time(), time.monotonic(), detail)
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def frame_sent(self, index: int) -> None:
        """Record that frame ``index`` left the source for the encoder/sender."""
        self.frames.append((index, time.time(), time.monotonic()))
        if len(self.frames) == 1:
            self.mark("first_frame_sent", index=index)

    def on_event(self, listener: Callable[[TimelineEvent], None]) -> None:
        """Call ``listener(event)`` for every step from now on."""
        self._listeners.append(listener)

    def first(self, step: str) -> TimelineEvent | None:
        """The first event of a step, if it happened."""
        return next((e for e in self.events if e.step == step), None)

    def last(self, step: str) -> TimelineEvent | None:
        """The latest event of a step, if it happened."""
        return next((e for e in reversed(self.events) if e.step == step), None)

    def between(self, a: str, b: str) -> float | None:
        """Seconds from the latest ``a`` to the first ``b`` after it (``None`` if missing)."""
        start = self.last(a)
        if start is None:
            return None
        end = next((e for e in self.events if e.step == b and e.mono >= start.mono), None)
        return None if end is None else end.mono - start.mono

    def to_frame(self) -> pd.DataFrame:
        """Steps as a DataFrame: step, wall time (UTC), ms since the first step, ms since the
        previous step, details."""
        rows = []
        t0 = self.events[0].mono if self.events else self.origin
        prev = t0
        for e in self.events:
            rows.append(
                {
                    "step": e.step,
                    "time": pd.Timestamp(e.wall, unit="s", tz="UTC"),
                    "t_ms": round((e.mono - t0) * 1000, 1),
                    "delta_ms": round((e.mono - prev) * 1000, 1),
                    "detail": ", ".join(f"{k}={v}" for k, v in e.detail.items()),
                }
            )
            prev = e.mono
        return pd.DataFrame(rows, columns=["step", "time", "t_ms", "delta_ms", "detail"])

    def frames_df(self) -> pd.DataFrame:
        """Per-frame send times: index, wall time (UTC), ms since the first frame."""
        if not self.frames:
            return pd.DataFrame(columns=["index", "time", "t_ms"])
        t0 = self.frames[0][2]
        return pd.DataFrame(
            {
                "index": [f[0] for f in self.frames],
                "time": pd.to_datetime([f[1] for f in self.frames], unit="s", utc=True),
                "t_ms": [round((f[2] - t0) * 1000, 1) for f in self.frames],
            }
        )

    def __repr__(self) -> str:
        return f"<SessionTimeline {len(self.events)} steps, {len(self.frames)} frames>"
