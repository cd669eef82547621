"""GetImages against ``ffmpeg -vf fps=1`` on the same stored media, and capture → retrievable.

docs/design.md budgets: GetImages, 300 images at 1 s sampling, vs ``ffmpeg -vf fps=1`` on the
same media: ≤ 0.3× its time with keyframes 1 s apart (mid-GOP samples too), ≤ 0.6× at 10 s;
capture → frame retrievable by GetImages, beyond the fragment duration: ≤ 100 ms p95.

1. Media: 300 s of 640x480 at 30 fps, ~1 Mbps, H.264 baseline (libx264 via ``ffmpeg -f lavfi
   testsrc2``), once with a keyframe every 1 s and once every 10 s. The access units are
   fed to the storage peer's own ``FragmentRecorder`` (passthrough, as from WebRTC) at
   full speed, so fragments land in a real Local KVS store exactly as the peer writes them.
2. ffmpeg: the stored fragments concatenated into one file (the GetMediaForFragmentList
   body), ``ffmpeg -i all.mkv -vf fps=1 -f image2 %04d.jpg``, run as a subprocess.
3. GetImages: boto3 through the Local KVS HTTP endpoint, 300 samples 1 s apart (12 pages),
   JPEG at the stream's size; with the samples on the keyframes ("aligned") and 500 ms after
   them ("mid-GOP", the usual case). Caches are cleared before each repetition.
4. Latency: live stamped media ingested over WebRTC into 1 s fragments while a thread polls
   GetImages for the last 0.4 s; for each fragment, (first poll that returned an image
   from it, at its completion) − (capture time of its last frame, from the stamp): an upper
   bound. The lower bound is the index's ``stored_at`` − that capture time (GetImages reads
   the index on every request, so a fragment is retrievable from the moment it is stored).

Prints figures; never asserts on time.
``python -m bench.bench_get_images [--reps N] [--skip-latency | --latency-only] [--quick]``
(``--quick``: one repetition, keyframes 1 s apart only, 5 s of live ingest).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import boto3
import numpy as np
from botocore.config import Config

from bench.common import process_cpu_seconds, report
from kvsnb.client.ingest import ingest
from kvsnb.client.session import JoinPolicy
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits
from kvsnb.local.archive.images import ImagesPlane
from kvsnb.local.storage.passthrough import EncodedFrame
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.mkv import build_fragment_list_body
from kvsnb.sources.stamp import read_stamp

SECONDS = 300
WIDTH, HEIGHT, FPS = 640, 480, 30
BITRATE = "1M"
KEYFRAME_SPACINGS_S = (1, 10)
SAMPLES = 300
INTERVAL_MS = 1000
RTP_CLOCK = 90_000
BASE_S = 1_700_000_000.0
REGION = "us-west-2"
CREDS = {"aws_access_key_id": "AKIDLOCALBENCH", "aws_secret_access_key": "bench"}
LATENCY_INGEST_S = 12.0
QUICK_LATENCY_INGEST_S = 5.0
POLL_PERIOD_S = 0.01
POLL_WINDOW_MS = 400  # each poll asks for the last 0.4 s: 2 small images, a short cycle
POLL_INTERVAL_MS = 200


def client(service: str, url: str) -> Any:
    """A boto3 client for Local KVS (no retries)."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=url,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}),
        **CREDS,
    )


def encode_media(path: Path, gop_s: int) -> None:
    """300 s of testsrc2 as H.264 baseline Annex B in MPEG-TS, a keyframe every ``gop_s``."""
    gop = gop_s * FPS
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi",
            "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", str(SECONDS),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-profile:v", "baseline", "-b:v", BITRATE, "-maxrate", BITRATE, "-bufsize", "2M",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", str(path),
        ],
        check=True,
    )  # fmt: skip


def record(kvs: LocalKvs, stream_arn: str, source: Path) -> list[Any]:
    """Feed every access unit of ``source`` to a FragmentRecorder on ``kvs``'s store."""
    recorder = FragmentRecorder(kvs.store, stream_arn, audio=False)
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        first: int | None = None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            first = packet.pts if first is None else first
            ticks = int((packet.pts - first) * packet.time_base * RTP_CLOCK)
            recorder.add_video(
                EncodedFrame(
                    data=bytes(packet),
                    rtp_timestamp=ticks % (1 << 32),
                    timestamp=ticks,
                    keyframe=packet.is_keyframe,
                    producer_time=BASE_S + ticks / RTP_CLOCK,
                    arrival_time=BASE_S + ticks / RTP_CLOCK,
                )
            )
    fragments: list[Any] = asyncio.run(recorder.close())
    return fragments


def time_ffmpeg(media: Path, out_dir: Path) -> float:
    """Wall time of ``ffmpeg -i media -vf fps=1 -f image2 out/%04d.jpg``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run(
        ["ffmpeg", "-v", "fatal", "-y", "-i", str(media), "-vf", "fps=1", "-f", "image2",
         str(out_dir / "%04d.jpg")],
        check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    print(f"    ffmpeg wrote {len(list(out_dir.iterdir()))} images")
    return elapsed


def time_get_images(archived: Any, stream_arn: str, start_ms: int) -> tuple[float, int, int]:
    """Wall time of all pages of GetImages for 300 samples 1 s apart: (s, images, pages)."""
    start = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC)
    end = start + dt.timedelta(milliseconds=(SAMPLES - 1) * INTERVAL_MS)
    images = pages = 0
    token = None
    t0 = time.perf_counter()
    while True:
        kw: dict[str, str] = {"NextToken": token} if token else {}
        page = archived.get_images(
            StreamARN=stream_arn,
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=start,
            EndTimestamp=end,
            SamplingInterval=INTERVAL_MS,
            Format="JPEG",
            **kw,
        )
        pages += 1
        images += sum(1 for im in page["Images"] if "ImageContent" in im)
        token = page.get("NextToken")
        if not token:
            break
    return time.perf_counter() - t0, images, pages


def bench_spacing(kvs: LocalKvs, work: Path, gop_s: int, reps: int) -> None:
    print(f"\n== keyframes every {gop_s} s")
    source = work / f"gop{gop_s}.ts"
    if not source.exists():
        t0 = time.perf_counter()
        encode_media(source, gop_s)
        print(f"  encoded {SECONDS} s in {time.perf_counter() - t0:.1f} s ({source.name})")
    name = f"bench-gop{gop_s}"
    kv = client("kinesisvideo", kvs.url)
    stream_arn = kv.create_stream(StreamName=name, DataRetentionInHours=24)["StreamARN"]
    t0 = time.perf_counter()
    fragments = record(kvs, stream_arn, source)
    size = sum(f.size_bytes for f in fragments)
    print(
        f"  recorded {len(fragments)} fragments, {size / 1e6:.1f} MB "
        f"({size * 8 / SECONDS / 1e6:.2f} Mbps) in {time.perf_counter() - t0:.1f} s"
    )
    whole = work / f"{name}.mkv"
    whole.write_bytes(build_fragment_list_body(kvs.store.resolve(f) for f in fragments))
    endpoint = kv.get_data_endpoint(StreamARN=stream_arn, APIName="GET_IMAGES")["DataEndpoint"]
    archived = client("kinesis-video-archived-media", endpoint)
    plane = kvs.planes["archived-media"].part(ImagesPlane)
    renderer = plane.renderer
    first_ms = min(f.producer_start_ms for f in fragments)
    ffmpeg_times = [time_ffmpeg(whole, work / "ffmpeg-out") for _ in range(reps)]
    ffmpeg_s = statistics.median(ffmpeg_times)
    print(f"  ffmpeg -vf fps=1: median {ffmpeg_s:.2f} s over {reps} ({_fmt(ffmpeg_times)})")
    for label, phase_ms in (("aligned", 0), ("mid-GOP", 500)):
        times = []
        cpu: dict[str, list[float]] = {"decode": [], "here": []}  # CPU s: decode processes, here
        for _ in range(reps):
            renderer.clear_caches()
            before = renderer.frames_decoded
            decode_before = _decode_cpu(renderer)
            here_before = time.process_time()
            elapsed, images, pages = time_get_images(archived, stream_arn, first_ms + phase_ms)
            cpu["here"].append(time.process_time() - here_before)
            cpu["decode"].append(_decode_cpu(renderer) - decode_before)
            decoded = renderer.frames_decoded - before
            times.append(elapsed)
        median = statistics.median(times)
        print(
            f"  GetImages {label:8s}: {images} images in {pages} pages, {decoded} frames "
            f"decoded of {SECONDS * FPS}; median {median:.2f} s ({_fmt(times)}) "
            f"→ ratio {median / ffmpeg_s:.2f}× ffmpeg"
        )
        # the median run's (the first may include starting the decode processes)
        per_image = {k: statistics.median(v) / max(images, 1) * 1000 for k, v in cpu.items()}
        print(
            f"    CPU per image, median: decode processes {per_image['decode']:.2f} ms, "
            f"this process (Local KVS's server and the client) {per_image['here']:.2f} ms"
        )
        phase = "aligned" if phase_ms == 0 else "midgop"
        report(**{f"ratio_{gop_s:g}s_{phase}": median / ffmpeg_s})
    kv.delete_stream(StreamARN=stream_arn)


def _decode_cpu(renderer: Any) -> float:
    """CPU seconds used so far by the renderer's decode processes (0 when it decodes on
    threads of this process)."""
    return sum(process_cpu_seconds(pid) for pid in renderer.pool.pids)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# ---------------------------------------------------------------------------- latency


def bench_latency(work: Path, ingest_s: float = LATENCY_INGEST_S) -> None:
    """Capture → retrievable by GetImages over ``ingest_s`` of live ingest."""
    print("\n== capture → retrievable by GetImages (live WebRTC ingest, 1 s fragments)")
    options = StorageOptions(fragment_duration_s=1.0)
    config = LocalKvsConfig(
        data_dir=work / "latency-data",
        signaling=SignalingLimits(connects_per_s=100.0),
        extra={"storage": options},
    )
    kvs = LocalKvs(config).start_in_thread()
    target = connect(endpoint_url=kvs.url)
    try:
        _, stream_arn = target.create_storage_channel("latency")
        kv = client("kinesisvideo", kvs.url)
        endpoint = kv.get_data_endpoint(StreamARN=stream_arn, APIName="GET_IMAGES")
        archived = client("kinesis-video-archived-media", endpoint["DataEndpoint"])
        polls: list[tuple[float, float, list[int]]] = []  # (start, end, sample ms with image)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                began = time.time()
                now_ms = int(began * 1000)
                try:
                    page = archived.get_images(
                        StreamARN=stream_arn,
                        ImageSelectorType="PRODUCER_TIMESTAMP",
                        StartTimestamp=dt.datetime.fromtimestamp(
                            (now_ms - POLL_WINDOW_MS) / 1000, dt.UTC
                        ),
                        EndTimestamp=dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC),
                        SamplingInterval=POLL_INTERVAL_MS,
                        Format="JPEG",
                        WidthPixels=160,
                        HeightPixels=120,
                    )
                    got = [
                        round(im["TimeStamp"].timestamp() * 1000)
                        for im in page["Images"]
                        if "ImageContent" in im
                    ]
                except archived.exceptions.ResourceNotFoundException:
                    got = []
                polls.append((began, time.time(), got))
                time.sleep(POLL_PERIOD_S)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        policy = JoinPolicy.local(offer_wait_s=0.3, connect_timeout_s=30.0)
        asyncio.run(ingest(target, "latency", seconds=ingest_s, policy=policy))
        time.sleep(0.5)
        stop.set()
        poller.join()
        fragments = kvs.call(_fragments(kvs, stream_arn))
        latencies, stored = [], []
        for f in fragments[:-1]:  # the last one is closed by the session's end
            start, end = f.producer_start_ms, f.producer_start_ms + f.duration_ms
            seen = [p for p in polls if any(start <= t < end for t in p[2])]
            if not seen:
                continue
            with av.open(str(kvs.store.resolve(f))) as container:
                last = list(container.decode(video=0))[-1]
            capture_ms = read_stamp(last.to_ndarray(format="rgb24")).capture_ms
            latencies.append(seen[0][1] * 1000 - capture_ms)
            stored.append(f.stored_at_ms - capture_ms)
        cycle = statistics.median(p[1] - p[0] for p in polls) * 1000 + POLL_PERIOD_S * 1000
        arr, low = np.array(latencies), np.array(stored)
        print(
            f"  {len(arr)} fragments; last frame captured → its fragment stored and indexed "
            f"(GetImages can serve it from then on): p50 {np.percentile(low, 50):.0f} ms, "
            f"p95 {np.percentile(low, 95):.0f} ms, max {low.max():.0f} ms"
        )
        report(
            stored_after_capture_ms_p95=float(np.percentile(low, 95)),
            retrievable_after_capture_ms_p95=float(np.percentile(arr, 95)),
        )
        print(
            f"  last frame captured → first GetImages response with it: "
            f"p50 {np.percentile(arr, 50):.0f} ms, p95 {np.percentile(arr, 95):.0f} ms, "
            f"max {arr.max():.0f} ms (poll cycle {cycle:.0f} ms, {len(polls)} polls; "
            "upper bounds: the fragment became retrievable up to one cycle earlier)"
        )
    finally:
        target.close()
        kvs.stop_in_thread()


async def _fragments(kvs: LocalKvs, stream_arn: str) -> list[Any]:
    result: list[Any] = await asyncio.to_thread(kvs.store.list_fragments, stream_arn)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keeps encoded media")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    spacings = KEYFRAME_SPACINGS_S[:1] if args.quick else KEYFRAME_SPACINGS_S
    work = args.work or Path(tempfile.mkdtemp(prefix="kvsnb-bench-images-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}")
    if not args.latency_only:
        with LocalKvs(data_dir=work / "data") as kvs:
            for gop_s in spacings:
                bench_spacing(kvs, work, gop_s, reps)
    if not args.skip_latency:
        bench_latency(work, QUICK_LATENCY_INGEST_S if args.quick else LATENCY_INGEST_S)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
