"""HLS figures on a real Local KVS (docs/design.md budget: LIVE HLS fragment stored → listed in the
media playlist ≤ 50 ms).

1. LIVE latency: a master ingests stamped media (1 s fragments) while a LIVE session is open;
   on each durable fragment (store listener) a client immediately GETs the media playlist,
   retrying every ``RETRY_S`` until the fragment is listed. Latency = first playlist response
   listing it − the moment the store made it durable (includes the HTTP round trip).
2. Remux time per fragment: stored Matroska → fMP4 (parse + video and audio moof/mdat) and
   → MPEG-TS (PyAV mpegts muxer), and the init segments.
3. Throughput with ``READERS`` concurrent aiohttp readers on an ON_DEMAND session: cold
   fragment GETs (first remux of each), cached fragment GETs/s. (Playlist GETs are limited
   to 5 a second per session, as on AWS, so they have no throughput figure.)

Prints figures; never asserts on time. Run: ``python -m bench.bench_hls [--quick]``
(``--quick``: 8 s of ingest, 1 s throughput windows).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import pct, report
from kvsnb.client.ingest import ingest
from kvsnb.client.session import JoinPolicy
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits
from kvsnb.local.archive import remux
from kvsnb.local.storage.peer import StorageOptions

logger = logging.getLogger(__name__)

FRAGMENT_S = 1.0
INGEST_S = 26.0  # ≥ 20 fragments of 1 s
LIVE_RESULTS = 3
RETRY_S = 0.002
READERS = 4
THROUGHPUT_S = 3.0
QUICK_INGEST_S = 8.0
QUICK_THROUGHPUT_S = 1.0
BUDGET_LISTED_MS = 50
POLICY = JoinPolicy.local(offer_wait_s=0.3)


def client(service: str, url: str) -> Any:
    make: Any = boto3.client
    return make(
        service,
        endpoint_url=url,
        region_name="us-west-2",
        aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}),
    )


def last_index(playlist: str) -> int:
    found = re.findall(r"FragmentNumber=(\d+)", playlist)
    return int(found[-1]) if found else -1


async def live_latency(
    kvs: LocalKvs, am: Any, ingest_s: float = INGEST_S
) -> tuple[list[float], str]:
    """Ingest for ``ingest_s`` with a LIVE session open; stored → listed (ms) per fragment,
    and the stream's ARN."""
    loop = asyncio.get_running_loop()
    stored: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def on_stored(fragment: Any) -> None:
        now = time.time()
        loop.call_soon_threadsafe(stored.put_nowait, (fragment.stream_arn, now))

    with connect(endpoint_url=kvs.url) as tg:
        _, arn = tg.create_storage_channel("bench-live")
        task = asyncio.create_task(ingest(tg, "bench-live", seconds=ingest_s, policy=POLICY))
        await kvs.store.wait_for_fragment(arn, timeout=30)
        url = await asyncio.to_thread(
            lambda: am.get_hls_streaming_session_url(
                StreamName="bench-live", MaxMediaPlaylistFragmentResults=LIVE_RESULTS
            )["HLSStreamingSessionURL"]
        )
        remove = kvs.store.add_listener(on_stored)
        latencies: list[float] = []
        async with aiohttp.ClientSession() as http:
            master = await (await http.get(url)).text()
            uri = next(ln for ln in master.splitlines() if ln.startswith("getHLSMediaPlaylist"))
            media = url.rsplit("/", 1)[0] + "/" + uri
            expected = last_index(await (await http.get(media)).text())
            try:
                while not (task.done() and stored.empty()):
                    try:
                        stream_arn, at = await asyncio.wait_for(stored.get(), 1.0)
                    except TimeoutError:
                        continue
                    if stream_arn != arn:
                        continue
                    expected += 1
                    while True:
                        async with http.get(media) as response:
                            text = await response.text()
                        if last_index(text) >= expected:
                            latencies.append((time.time() - at) * 1000)
                            break
                        await asyncio.sleep(RETRY_S)
            finally:
                remove()
        await task
    return latencies, arn


def remux_times(kvs: LocalKvs, arn: str) -> dict[str, list[float]]:
    fragments = kvs.store.list_fragments(arn)
    origin = fragments[0].producer_start_ms
    out: dict[str, list[float]] = {"parse": [], "fmp4": [], "ts": [], "init": []}
    for i, f in enumerate(fragments):
        path = kvs.store.resolve(f)
        t0 = time.perf_counter()
        parsed = remux.read_fragment(path, f.producer_start_ms, f.producer_end_ms)
        t1 = time.perf_counter()
        remux.video_segment(parsed, i + 1, origin)
        remux.audio_segment(parsed, i + 1, origin, 48_000)
        t2 = time.perf_counter()
        remux.ts_segment(path, origin)
        t3 = time.perf_counter()
        remux.init_segment(parsed.video, 1)
        if parsed.audio is not None:
            remux.init_segment(parsed.audio, 2)
        t4 = time.perf_counter()
        out["parse"].append((t1 - t0) * 1000)
        out["fmp4"].append((t2 - t0) * 1000)
        out["ts"].append((t3 - t2) * 1000)
        out["init"].append((t4 - t3) * 1000)
    return out


async def throughput(
    am: Any, arn: str, kvs: LocalKvs, seconds: float = THROUGHPUT_S
) -> dict[str, float]:
    """GETs/s and MB/s of ``READERS`` readers over ``seconds`` per kind of request."""
    fragments = kvs.store.list_fragments(arn)
    start = dt.datetime.fromtimestamp(fragments[0].producer_start_ms / 1000 - 1, dt.UTC)
    end = dt.datetime.fromtimestamp(fragments[-1].producer_start_ms / 1000 + 1, dt.UTC)
    url = am.get_hls_streaming_session_url(
        StreamARN=arn,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        },
    )["HLSStreamingSessionURL"]
    base = url.rsplit("/", 1)[0] + "/"
    token = url.split("SessionToken=")[1]
    playlist = f"{base}getHLSMediaPlaylist.m3u8?SessionToken={token}&TrackNumber=1"
    figures: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=READERS)) as http:
        text = await (await http.get(playlist)).text()
        uris = [base + ln for ln in text.splitlines() if ln and not ln.startswith("#")]

        async def reader(urls: list[str], stop: float, counts: list[int]) -> None:
            i = 0
            while time.perf_counter() < stop:
                async with http.get(urls[i % len(urls)]) as response:
                    response.raise_for_status()  # a refused GET is no throughput
                    counts[0] += len(await response.read())
                    counts[1] += 1
                i += 1

        sem = asyncio.Semaphore(READERS)

        async def cold(u: str) -> None:
            async with sem, http.get(u) as response:
                response.raise_for_status()
                await response.read()

        # cold pass first: each segment remuxed once, READERS at a time
        t0 = time.perf_counter()
        await asyncio.gather(*(cold(u) for u in uris))
        figures["fragment cold GETs/s"] = len(uris) / (time.perf_counter() - t0)
        counts = [0, 0]
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(reader(uris[k:] + uris[:k], stop, counts) for k in range(READERS)))
        figures["fragment (cached) GETs/s"] = counts[1] / seconds
        figures["fragment (cached) MB/s"] = counts[0] / seconds / 1e6
    return figures


async def main(quick: bool = False) -> None:
    """LIVE latency, remux times and throughput (shorter if ``quick``)."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = LocalKvsConfig(
            data_dir=Path(tmp),
            signaling=SignalingLimits(connects_per_s=100.0),
            extra={"storage": StorageOptions(fragment_duration_s=FRAGMENT_S)},
        )
        kvs = LocalKvs(config).start_in_thread()
        try:
            am = client("kinesis-video-archived-media", kvs.url + "/archived-media")
            latencies, arn = await live_latency(kvs, am, QUICK_INGEST_S if quick else INGEST_S)
            print(f"LIVE stored → listed over {len(latencies)} fragments (budget ≤ "
                  f"{BUDGET_LISTED_MS} ms): p50 {pct(latencies, 50):.1f} ms, "
                  f"p95 {pct(latencies, 95):.1f} ms, max {max(latencies):.1f} ms")  # fmt: skip
            report(
                live_stored_to_listed_ms_p50=pct(latencies, 50),
                live_stored_to_listed_ms_p95=pct(latencies, 95),
            )
            times = remux_times(kvs, arn)
            n = len(times["fmp4"])
            for key, label in (
                ("parse", "read Matroska (samples)"),
                ("fmp4", "fMP4 video+audio incl. read"),
                ("ts", "MPEG-TS (PyAV mpegts)"),
                ("init", "init segments (2)"),
            ):
                values = times[key]
                mean, p95 = statistics.mean(values), pct(values, 95)
                print(f"remux {label:30s} per 1 s fragment over {n}: mean {mean:.2f} ms, "
                      f"p95 {p95:.2f} ms")  # fmt: skip
                report(**{f"remux_{key}_ms_mean": mean})
            figures = await throughput(am, arn, kvs, QUICK_THROUGHPUT_S if quick else THROUGHPUT_S)
            for name, value in figures.items():
                print(f"{READERS} readers, {name}: {value:.1f}")
        finally:
            kvs.stop_in_thread()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.bench_hls")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    asyncio.run(main(ap.parse_args().quick))
