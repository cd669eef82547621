"""Times in kvsnb: epoch milliseconds (KVS timestamps are millisecond-precise) and the times
people type in notebooks and widgets (``now``, ``last 30 s``, ``5 min ago``, ``-2 h`` or
ISO 8601, naive times UTC). Both halves use it."""

from __future__ import annotations

import datetime as dt
import re

RELATIVE_TIME = re.compile(
    r"^\s*(?:last\s+|-\s*)?(\d+(?:\.\d+)?)\s*"
    r"(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\s*(?:ago)?\s*$",
    re.IGNORECASE,
)
UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A time as typed: ``now``, relative (``last 30 s``, ``5 min ago``, ``-2 h``)
    or ISO 8601 (naive times are UTC). Raises ``ValueError`` with what is accepted."""
    now = now or dt.datetime.now(dt.UTC)
    value = text.strip()
    if value.lower() in ("", "now"):
        return now
    match = RELATIVE_TIME.match(value)
    if match:
        unit = match.group(2)[0].lower()
        return now - dt.timedelta(seconds=float(match.group(1)) * UNIT_SECONDS[unit])
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read the time {text!r}: use 'now', 'last 30 s', '5 min ago' or ISO 8601 "
            "such as 2025-01-31T12:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def epoch_ms(value: dt.datetime) -> int:
    """Milliseconds since the epoch of an aware datetime, rounded to the nearest."""
    return round(value.timestamp() * 1000)


def from_epoch_ms(ms: float) -> dt.datetime:
    """The aware UTC datetime of milliseconds since the epoch."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
