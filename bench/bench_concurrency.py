"""Concurrency sweep: 1, 8, 16, 32, 40, 48 masters into one Local KVS on this machine.

Local KVS runs in its own process (``kvsnb local``), once with its storage sessions in the
server process and once spread over 2 storage worker processes (``--workers``); the masters
run in separate sender processes (``--worker``), each with several kvsnb
``MasterSession``s that send pre-encoded media (640x480 30 fps H.264 at ~800 kbps with a
keyframe every second, and Opus), so the masters spend nothing on encoding. Per level:
frames lost (frames sent by the masters vs video frames in the stored fragments, read back
with GetMediaForFragmentList), fragment end → durable (from Local KVS's own index:
``stored_at`` − producer end of each fragment), Local KVS CPU (cores) and memory (with its
workers), coturn's apart (the storage peers are reached through it, ``--ice turn``, the
default; the masters take its TURN servers from GetIceServerConfig like any kvsnb master, and
how many went through a relay pair is printed), and the whole machine's CPU. Budget
(docs/design.md): ≥ 40 sessions with < 0.1 % frames lost. Prints figures; never asserts on
time.

``python -m bench.bench_concurrency [LEVELS...] [--seconds S] [--video-only] [--workers 0,2]
[--ice turn|host] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.common import Parts, pct, report
from kvsnb.local.runner import LocalKvsProcess

LEVELS = (1, 8, 16, 32, 40, 48)
QUICK_LEVELS = (4,)
QUICK_SECONDS = 5.0
WORKERS = 4
MEASURE_S = 10.0
FPS = 30
CLIP_FRAMES = 90  # 3 s clip, looped
VIDEO_BITRATE = 800_000
VIDEO_TB = fractions.Fraction(1, 90_000)
AUDIO_TB = fractions.Fraction(1, 48_000)


def make_clip(path: Path) -> None:
    """Encode the stamped test pattern and a tone once: H.264 Annex B and Opus packets."""
    from kvsnb.sources import TestPatternTrack
    from kvsnb.sources.tracks import ToneGenerator

    pattern = TestPatternTrack(640, 480, FPS)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 640, 480, "yuv420p"
    enc.bit_rate = VIDEO_BITRATE
    enc.time_base = fractions.Fraction(1, FPS)
    enc.framerate = fractions.Fraction(FPS, 1)
    enc.options = {
        "profile": "baseline",
        "tune": "zerolatency",
        "g": str(FPS),
        "keyint_min": str(FPS),
    }
    video: list[tuple[bytes, bool]] = []
    for i in range(CLIP_FRAMES + 1):
        frame = pattern.render(i, 0) if i < CLIP_FRAMES else None
        if frame is not None:
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, enc.time_base
        for packet in enc.encode(frame):
            video.append((bytes(packet), bool(packet.is_keyframe)))
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = 48_000, "stereo", "s16"
    tone = ToneGenerator(
        0.0,
        sample_rate=48_000,
        frequency=440.0,
        mark_frequency=2000.0,
        mark_duration=0.05,
        amplitude=0.3,
    )
    audio: list[bytes] = []
    n_audio = CLIP_FRAMES * 50 // FPS
    for i in range(n_audio + 1):
        aframe: av.AudioFrame | None = None
        if i < n_audio:
            samples, _ = tone.next(960)
            mono = (samples * 32767 * 0.3).astype(np.int16)
            data = np.repeat(mono, 2)[np.newaxis, :]
            aframe = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
            aframe.sample_rate, aframe.pts, aframe.time_base = 48_000, i * 960, AUDIO_TB
        for packet in opus.encode(aframe):
            audio.append(bytes(packet))
    path.write_bytes(pickle.dumps({"video": video, "audio": audio}))


class PacketTrack(MediaStreamTrack):
    """Pre-encoded packets, looped and paced in real time (aiortc packs them as they are)."""

    def __init__(
        self,
        kind: str,
        packets: list[bytes],
        rate: float,
        ticks: int,
        time_base: fractions.Fraction,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.rate = rate
        self.ticks = ticks
        self.time_base = time_base
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + self.sent / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self.packets[self.sent % len(self.packets)])
        packet.pts = self.sent * self.ticks
        packet.time_base = self.time_base
        self.sent += 1
        return packet


async def worker(
    url: str, channels: list[str], clip: Path, seconds: float, video_only: bool
) -> dict[str, Any]:
    """Run masters on ``channels`` for ``seconds`` of media; report frames sent."""
    from kvsnb.client.session import JoinPolicy, MasterSession
    from kvsnb.launch import connect

    data = pickle.loads(clip.read_bytes())
    video_packets = [p for p, _ in data["video"]]
    target = connect(endpoint_url=url)
    sessions = []
    tracks = []
    for name in channels:
        video = PacketTrack("video", video_packets, FPS, 90_000 // FPS, VIDEO_TB)
        audio = None if video_only else PacketTrack("audio", data["audio"], 50, 960, AUDIO_TB)
        tracks.append(video)
        sessions.append(
            MasterSession(
                target,
                name,
                video=video,
                audio=audio,
                policy=JoinPolicy.local(offer_wait_s=3.0, connect_timeout_s=30.0),
            )
        )
    for s in sessions:
        await s.start(timeout=60)
    pairs = Counter(selected_local(s.timeline) for s in sessions)
    print(f"READY {json.dumps({'pairs': dict(pairs)})}", flush=True)
    await asyncio.sleep(seconds)
    for t in tracks:
        t.stop()
    await asyncio.sleep(0.5)
    for s in sessions:
        await s.stop()
    target.close()
    return {"sent": {c: t.sent for c, t in zip(channels, tracks, strict=True)}}


def selected_local(timeline: Any) -> str:
    """The local side of the candidate pair a session's ICE selected (``relay/udp`` through
    TURN, ``host/udp`` directly), from its timeline; ``none`` if it recorded none."""
    event = timeline.last("ice_selected_pair")
    return str(event.detail.get("local")) if event is not None else "none"


def stored_frames(target: Any, stream: str) -> int:
    """Video frames in a stream's stored fragments (demuxed, not decoded)."""
    return len(stored_frame_times(target, stream))


def stored_frame_times(target: Any, stream: str) -> list[float]:
    """Producer times (epoch s) of the video frames in a stream's stored fragments, in
    order (demuxed, not decoded)."""
    from kvsnb.playback import get_media, list_fragments

    fragments = list_fragments(target, stream)
    if fragments.empty:
        return []
    media = get_media(target, stream, list(fragments["fragment_number"]))
    with av.open(io.BytesIO(media), mode="r") as c:
        return [
            float(p.pts * p.time_base)
            for p in c.demux(video=0)
            if p.size > 0 and p.pts is not None and p.time_base is not None
        ]


def fragment_lags(data_dir: Path, streams: list[str]) -> list[float]:
    """stored_at − producer end (ms) of every fragment but each stream's last (closed when
    its master left), from Local KVS's own index."""
    db = sqlite3.connect(Path(data_dir) / "fragments.sqlite")
    lags: list[float] = []
    for arn in streams:
        rows = db.execute(
            "SELECT producer_start_ms, duration_ms, stored_at_ms FROM fragments "
            "WHERE stream_arn=? ORDER BY producer_start_ms",
            (arn,),
        ).fetchall()
        lags += [stored - (start + dur) for start, dur, stored in rows[:-1]]
    db.close()
    return lags


def machine_cpu() -> float:
    """CPU seconds used by the whole machine so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def start_senders(
    url: str,
    names: list[str],
    clip: Path,
    seconds: float,
    video_only: bool,
    pairs: Counter[str] | None = None,
    nice: int = 0,
) -> list[subprocess.Popen[str]]:
    """Masters on ``names`` in up to ``WORKERS`` sender processes, sending ``clip`` for
    ``seconds``; returns once every master has joined (each process printed READY). The
    masters are kvsnb sessions, so they take the TURN servers of GetIceServerConfig like
    any master; ``pairs`` (when given) counts the local side of each master's selected
    candidate pair (``relay/udp`` through TURN). ``nice`` > 0 runs the senders that much
    nicer than this process (a diagnostic: the senders stand for devices elsewhere)."""
    workers = min(WORKERS, len(names))
    groups = [names[i::workers] for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bench_concurrency",
                "--worker",
                url,
                "--clip",
                str(clip),
                "--seconds",
                str(seconds),
                *(["--video-only"] if video_only else []),
                *g,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]
    if nice:
        for p in procs:
            os.setpriority(os.PRIO_PROCESS, p.pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"sender failed to start: {line!r}")
        if pairs is not None:
            pairs.update(json.loads(line[len("READY") :])["pairs"])
    return procs


def collect_senders(procs: list[subprocess.Popen[str]]) -> dict[str, int]:
    """Wait for the sender processes to finish; frames sent per channel."""
    sent: dict[str, int] = {}
    for p in procs:
        out, _ = p.communicate(timeout=120)
        sent.update(json.loads(out.strip().splitlines()[-1])["sent"])
    return sent


def run_level(
    n: int,
    clip: Path,
    seconds: float,
    video_only: bool,
    storage_workers: int,
    ice: str = "turn",
) -> dict[str, Any]:
    """One level of the sweep, the storage peers reached as ``ice`` says (``turn``: through
    Local KVS's coturn, whose CPU and memory are given apart from Local KVS's own)."""
    from kvsnb.launch import connect

    extra = ["--allow-video-only"] if video_only else []
    extra += ["--workers", str(storage_workers), "--ice", ice]
    with LocalKvsProcess(*extra) as kvs:
        target = connect(endpoint_url=kvs.url)
        names = [f"sweep-{n}-{i}" for i in range(n)]
        streams = {name: target.create_storage_channel(name)[1] for name in names}
        pairs: Counter[str] = Counter()
        procs = start_senders(kvs.url, names, clip, seconds + 3.0, video_only, pairs=pairs)
        time.sleep(2.0)  # warm up
        parts = Parts(kvs.pid)
        c0, m0, t0 = parts.cpu(), machine_cpu(), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        kvs_cpu, turn_cores = Parts.cores_between(c0, parts.cpu(), elapsed)
        all_cpu = (machine_cpu() - m0) / elapsed
        rss, turn_mib = Parts.split(parts.rss())
        turn_cpu = turn_cores if parts.coturn is not None else None
        turn_rss = turn_mib if parts.coturn is not None else None
        sent = collect_senders(procs)
        time.sleep(1.0)
        stored = {name: stored_frames(target, streams[name]) for name in names}
        lags = fragment_lags(kvs.data_dir, list(streams.values()))
        target.close()
    total_sent = sum(sent.values())
    total_stored = sum(stored.values())
    return {
        "masters": n,
        "storage_workers": storage_workers,
        "ice": ice,
        "relay_pairs": f"{pairs.get('relay/udp', 0)}/{sum(pairs.values())}",
        "frames_sent": total_sent,
        "frames_stored": total_stored,
        "loss_pct": round(100 * (total_sent - total_stored) / total_sent, 3)
        if total_sent
        else None,
        "fragment_end_to_durable_ms_p50": round(pct(lags, 50), 1),
        "fragment_end_to_durable_ms_p95": round(pct(lags, 95), 1),
        "local_kvs_cpu_cores": round(kvs_cpu, 2),
        "local_kvs_cpu_per_master": round(kvs_cpu / n, 3),
        "local_kvs_rss_mib": round(rss, 1),
        "local_kvs_rss_per_master_mib": round(rss / n, 1),
        "coturn_cpu_cores": None if turn_cpu is None else round(turn_cpu, 3),
        "coturn_rss_mib": None if turn_rss is None else round(turn_rss, 1),
        "machine_cpu_cores": round(all_cpu, 2),
    }


def main() -> list[dict[str, Any]]:
    """Run the sweep (or, with ``--worker``, one worker) and print."""
    ap = argparse.ArgumentParser()
    ap.add_argument("items", nargs="*", help="levels (or, with --worker, channel names)")
    ap.add_argument("--worker")
    ap.add_argument("--clip")
    ap.add_argument("--seconds", type=float, default=None, help=f"default {MEASURE_S:g}")
    ap.add_argument("--video-only", action="store_true")
    ap.add_argument(
        "--workers",
        default=None,
        help="storage worker processes of Local KVS, one sweep each (comma-separated; default 0,2)",
    )
    ap.add_argument("--ice", choices=("turn", "host"), default="turn")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_LEVELS} masters, {QUICK_SECONDS:g} s, 2 storage workers",
    )
    args = ap.parse_args()
    seconds = args.seconds or (QUICK_SECONDS if args.quick else MEASURE_S)
    if args.worker:
        result = asyncio.run(
            worker(args.worker, list(args.items), Path(args.clip), seconds, args.video_only)
        )
        print(json.dumps(result), flush=True)
        return []
    levels = [int(x) for x in args.items] or list(QUICK_LEVELS if args.quick else LEVELS)
    storage = args.workers or ("2" if args.quick else "0,2")
    clip = Path(tempfile.mkdtemp(prefix="kvsnb-sweep-")) / "clip.pkl"
    make_clip(clip)
    results = []
    for storage_workers in [int(x) for x in storage.split(",")]:
        for n in levels:
            r = run_level(n, clip, seconds, args.video_only, storage_workers, args.ice)
            r["audio"] = not args.video_only
            print(json.dumps(r), flush=True)
            results.append(r)
    if not args.video_only:
        # the most masters with audio stored with < 0.1 % of frames lost, over every mode
        lossless = [r["masters"] for r in results if (r["loss_pct"] or 0.0) < 0.1]
        report(max_masters_lossless=max(lossless, default=0))
    return results


if __name__ == "__main__":
    main()
