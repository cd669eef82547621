"""Streaming-session URLs of archived media (AWS or Local KVS): the one builder behind
``hls_session_url`` and ``dash_session_url``.

GetHLSStreamingSessionURL and GetDASHStreamingSessionURL take the same stream, PlaybackMode,
Expires and fragment selector (under ``HLSFragmentSelector`` or ``DASHFragmentSelector``);
each adds its own options. ON_DEMAND and LIVE_REPLAY need a range; without ``start``/``end``
the whole stored range of the stream is used (``stored_range``, from ListFragments). The URL
returned is the one this process reaches (``Target.direct_url``); ``Target.public`` gives a
browser's (docs/wire.md, "Archived media").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Literal

import pandas as pd

from kvsnb.client.target import Target
from kvsnb.errors import KvsnbError

Protocol = Literal["HLS", "DASH"]

# Per protocol: the data-endpoint API name, the selector's request key, the client method
# and the URL's response key (the kinesis-video-archived-media model).
API: dict[str, tuple[str, str, str, str]] = {
    "HLS": (
        "GET_HLS_STREAMING_SESSION_URL",
        "HLSFragmentSelector",
        "get_hls_streaming_session_url",
        "HLSStreamingSessionURL",
    ),
    "DASH": (
        "GET_DASH_STREAMING_SESSION_URL",
        "DASHFragmentSelector",
        "get_dash_streaming_session_url",
        "DASHStreamingSessionURL",
    ),
}


class PlaylistError(KvsnbError, ValueError):
    """A playlist that is not a usable KVS HLS playlist (``ManifestError``: a DASH manifest),
    or a stream with no stored fragments to make a session of."""


def stored_range(
    target: Target, stream: str, selector: str = "SERVER_TIMESTAMP"
) -> tuple[dt.datetime, dt.datetime]:
    """The first fragment's start and the last fragment's end (``selector`` clock)."""
    from kvsnb.playback.fragments import list_fragments

    frags = list_fragments(target, stream, selector=selector)  # type: ignore[arg-type]
    if frags.empty:
        raise PlaylistError(f"stream {stream} has no fragments")
    col = "producer_time" if selector == "PRODUCER_TIMESTAMP" else "server_time"
    starts = frags[col]
    ends = starts + pd.to_timedelta(frags["duration_ms"], unit="ms")
    return starts.min().to_pydatetime(), ends.max().to_pydatetime()


def session_request(
    target: Target,
    stream: str,
    *,
    mode: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    selector: str,
    selector_key: str,
    expires: int,
) -> dict[str, object]:
    """The arguments GetHLSStreamingSessionURL and GetDASHStreamingSessionURL share: the
    stream, the mode, ``Expires`` and the fragment selector (``selector_key``). ON_DEMAND and
    LIVE_REPLAY need a range; without ``start``/``end`` the whole stored range of the stream
    is used (from ListFragments, by ``selector``)."""
    args: dict[str, object] = {
        ("StreamARN" if stream.startswith("arn:") else "StreamName"): stream,
        "PlaybackMode": mode,
        "Expires": expires,
    }
    if mode != "LIVE" and (start is None or end is None):
        first, last = stored_range(target, stream, selector)
        start = start or first
        end = end or last
    if start is not None or end is not None:
        rng: dict[str, dt.datetime] = {}
        if start is not None:
            rng["StartTimestamp"] = start
        if end is not None:
            rng["EndTimestamp"] = end
        args[selector_key] = {"FragmentSelectorType": selector, "TimestampRange": rng}
    elif mode != "LIVE" or selector != "SERVER_TIMESTAMP":
        args[selector_key] = {"FragmentSelectorType": selector}
    return args


def session_url(
    target: Target,
    stream: str,
    protocol: Protocol,
    *,
    mode: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    selector: str,
    expires: int,
    options: Mapping[str, object],
) -> str:
    """Get{HLS,DASH}StreamingSessionURL at the stream's data endpoint: the shared arguments
    (``session_request``) plus the protocol's own ``options``; the URL this process reaches."""
    api_name, selector_key, method, url_key = API[protocol]
    client = target.client("kinesis-video-archived-media", target.data_endpoint(stream, api_name))
    args = session_request(
        target,
        stream,
        mode=mode,
        start=start,
        end=end,
        selector=selector,
        selector_key=selector_key,
        expires=expires,
    )
    args.update(options)
    url = getattr(client, method)(**args)[url_key]
    return target.direct_url(str(url))
