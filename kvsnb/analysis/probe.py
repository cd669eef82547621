"""``RetrievalProbe``: watches a stream while a master ingests, to time when media becomes
retrievable (by ListFragments, in a LIVE HLS playlist, by GetImages).

Three pollers run side by side, each every ``interval_s`` (50 ms by default):

* ListFragments: the wall time each fragment is first listed;
* a LIVE HLS session (opened once the first fragment exists, as KVS needs one in the last
  30 s): the wall time each segment first appears, with its PROGRAM-DATE-TIME and duration;
* GetImages: for sampled capture times (every ``image_every``-th frame sent, given via
  ``frame_sent``), the wall time GetImages first returns an image for that frame. GetImages
  selects by producer timestamp, which runs after the capture time by the sender's offset
  (encode, send, RTP/NTP mapping): the probe asks for capture + that offset, known from the
  listed fragments' starts (``producer_offset_ms``), so it never counts an earlier frame
  (maybe of an earlier, already stored fragment) as the one sampled. Only the oldest pending
  frame is polled; once it is retrievable the next is tried at once, so the probe costs one
  small call per interval.

Times are the probe's wall clock (``time.time()``), the same clock as the stamps' capture
times when the master runs on the same machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from botocore.exceptions import ClientError

from kvsnb.analysis.frame_timeline import producer_offset_ms
from kvsnb.client.target import Target
from kvsnb.errors import reap
from kvsnb.playback.fragments import FRAGMENT_COLUMNS
from kvsnb.playback.hls import HlsReader, hls_session_url
from kvsnb.sources.stamp import Stamp
from kvsnb.wire.times import epoch_ms, from_epoch_ms

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05


@dataclass
class ProbeRecord:
    """What the probe saw (all times epoch seconds)."""

    listed: dict[str, float] = field(default_factory=dict)  # fragment number → first listed
    fragments: dict[str, dict[str, Any]] = field(default_factory=dict)  # number → ListFragments
    hls: list[dict[str, Any]] = field(default_factory=list)  # segments: pdt, duration, seen_at
    images: list[dict[str, Any]] = field(default_factory=list)  # capture_ms, index, retrievable
    errors: list[str] = field(default_factory=list)

    def fragments_frame(self) -> pd.DataFrame:
        """The fragments seen so far, as ``playback.list_fragments`` gives them."""
        rows = [
            {
                "fragment_number": f["FragmentNumber"],
                "producer_time": pd.Timestamp(f["ProducerTimestamp"]).tz_convert("UTC"),
                "server_time": pd.Timestamp(f["ServerTimestamp"]).tz_convert("UTC"),
                "duration_ms": int(f["FragmentLengthInMilliseconds"]),
                "size_bytes": int(f["FragmentSizeInBytes"]),
            }
            for f in list(self.fragments.values())
        ]
        df = pd.DataFrame(rows, columns=FRAGMENT_COLUMNS)
        return df.sort_values(["producer_time", "fragment_number"], ignore_index=True)


class RetrievalProbe:
    """Polls a stream during an ingest (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        stream: str,
        *,
        interval_s: float = POLL_INTERVAL_S,
        image_every: int = 15,
        hls: bool = True,
        images: bool = True,
    ) -> None:
        self.target = target
        self.stream = stream
        self.interval_s = interval_s
        self.image_every = image_every
        self.record = ProbeRecord()
        self._want_hls = hls
        self._want_images = images
        self._pending: deque[Stamp] = deque()
        self._captures: list[int] = []  # capture ms of every frame sent
        self._tasks: list[asyncio.Task[None]] = []
        self._archive = target.client(
            "kinesis-video-archived-media", target.data_endpoint(stream, "LIST_FRAGMENTS")
        )
        self._stop = asyncio.Event()

    def frame_sent(self, stamp: Stamp) -> None:
        """Tell the probe a frame was captured (``TestPatternTrack(on_frame=...)``)."""
        self._captures.append(stamp.capture_ms)
        # mid-interval frames: away from fragment starts (the first frame of all included)
        if self._want_images and stamp.index % self.image_every == self.image_every // 2:
            self._pending.append(stamp)

    async def start(self) -> None:
        """Start polling."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_list())]
        if self._want_hls:
            self._tasks.append(loop.create_task(self._poll_hls()))
        if self._want_images:
            self._tasks.append(loop.create_task(self._poll_images()))

    async def stop(self, linger_s: float = 0.0) -> ProbeRecord:
        """Keep polling ``linger_s`` more seconds (for the last fragment), then stop."""
        if linger_s:
            await asyncio.sleep(linger_s)
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            await reap(t, "a latency probe reader", logger)
        return self.record

    def _key(self) -> dict[str, str]:
        return {"StreamARN" if self.stream.startswith("arn:") else "StreamName": self.stream}

    async def _poll_list(self) -> None:
        while not self._stop.is_set():
            try:
                page = await asyncio.to_thread(self._archive.list_fragments, **self._key())
            except ClientError as exc:
                self.record.errors.append(f"ListFragments: {exc}")
                page = {"Fragments": []}
            now = time.time()
            for f in page["Fragments"]:
                n = f["FragmentNumber"]
                if n not in self.record.listed:
                    self.record.listed[n] = now
                    self.record.fragments[n] = f
            await asyncio.sleep(self.interval_s)

    async def _poll_hls(self) -> None:
        while not self.record.listed and not self._stop.is_set():
            await asyncio.sleep(self.interval_s)
        try:
            url = await asyncio.to_thread(
                hls_session_url, self.target, self.stream, mode="LIVE", max_results=10
            )
        except ClientError as exc:
            self.record.errors.append(f"GetHLSStreamingSessionURL: {exc}")
            return
        reader = HlsReader(url)
        seen: set[str] = set()
        while not self._stop.is_set():
            try:
                playlist = await reader.playlist()
            except Exception as exc:
                self.record.errors.append(f"LIVE playlist: {exc}")
                await asyncio.sleep(self.interval_s)
                continue
            now = time.time()
            for seg in playlist.segments:
                key = seg.uri.split("FragmentNumber=", 1)[-1].split("&", 1)[0]
                if key not in seen:
                    seen.add(key)
                    self.record.hls.append(
                        {
                            "segment": key,
                            "program_date_time": seg.program_date_time,
                            "duration_s": seg.duration,
                            "seen_at": now,
                        }
                    )
            await asyncio.sleep(self.interval_s)

    async def _poll_images(self) -> None:
        client = self.target.client(
            "kinesis-video-archived-media", self.target.data_endpoint(self.stream, "GET_IMAGES")
        )
        while not self._stop.is_set():
            if not self._pending:
                await asyncio.sleep(self.interval_s)
                continue
            offset = self._producer_offset_ms()
            if offset is None:  # no fragment listed yet: nothing is retrievable
                await asyncio.sleep(self.interval_s)
                continue
            stamp = self._pending[0]
            t = from_epoch_ms(stamp.capture_ms + offset)
            try:
                resp = await asyncio.to_thread(
                    client.get_images,
                    **self._key(),
                    ImageSelectorType="PRODUCER_TIMESTAMP",
                    StartTimestamp=t,
                    EndTimestamp=t,
                    SamplingInterval=1000,
                    Format="JPEG",
                    WidthPixels=160,
                    HeightPixels=120,
                    MaxResults=1,
                )
                images = resp.get("Images", [])
                ok = bool(images) and images[0].get("ImageContent")
            except ClientError:
                ok = False  # no fragments yet: ResourceNotFoundException
            if ok:
                self._pending.popleft()
                self.record.images.append(
                    {
                        "frame_index": stamp.index,
                        "capture_ms": stamp.capture_ms,
                        "retrievable_at": time.time(),
                    }
                )
                continue
            if self._listed_beyond(stamp.capture_ms + offset):
                # a later fragment is listed and this time still has no media: it never
                # will be retrievable (fragments are listed in order)
                self._pending.popleft()
                self.record.images.append(
                    {
                        "frame_index": stamp.index,
                        "capture_ms": stamp.capture_ms,
                        "retrievable_at": None,
                    }
                )
                continue
            await asyncio.sleep(self.interval_s)

    def _listed_beyond(self, producer_ms: float) -> bool:
        """Whether a listed fragment starts (producer time) after ``producer_ms``."""
        return any(
            epoch_ms(f["ProducerTimestamp"]) > producer_ms
            for f in list(self.record.fragments.values())
        )

    def _producer_offset_ms(self) -> float | None:
        """Producer timestamp − capture time, from the fragments listed so far."""
        starts = [f["ProducerTimestamp"].timestamp() * 1000 for f in self.record.fragments.values()]
        if not starts or not self._captures:
            return None
        return producer_offset_ms(np.array(self._captures), np.array(starts))

    def images_frame(self) -> pd.DataFrame:
        """GetImages results: frame_index, capture_ms, retrievable_at."""
        return pd.DataFrame(
            self.record.images, columns=["frame_index", "capture_ms", "retrievable_at"]
        )
