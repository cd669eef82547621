"""``kvsnb demo``: the main job, on Local KVS (or any target), printing every step.

1. Start Local KVS (embedded), create a channel and a stream, map them for storage.
2. Signaling check on a second channel with storage disabled: a master and a viewer relay
   an offer and an answer through the signaling WebSocket.
3. A master ingests stamped test media through a storage session (JoinStorageSession) while
   a ``RetrievalProbe`` times when fragments are listed, appear in a LIVE HLS playlist and
   become retrievable by GetImages.
4. The media is read back: every stored frame through GetMediaForFragmentList, the session
   through ON_DEMAND HLS (fMP4), and one image a second through GetImages; the stamps read
   back say which frames were stored and retrieved, and when they were captured.
5. The latency and frame-timeline summaries are printed; tables (CSV), plots (PNG) and an
   HTML report go to the output folder.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from kvsnb.analysis.frame_timeline import frame_timeline, timeline_summary
from kvsnb.analysis.latency import fragment_latency, frame_latency, latency_summary
from kvsnb.analysis.plots import (
    plot_intervals,
    plot_latency_cdf,
    plot_latency_waterfall,
    plot_timeline,
)
from kvsnb.analysis.probe import RetrievalProbe
from kvsnb.analysis.report import report_html
from kvsnb.analysis.stamps import compare_delivery, stamps_from_frames, stamps_from_images
from kvsnb.client.ingest import ingest, make_source
from kvsnb.client.signaling import SignalingClient
from kvsnb.client.target import Target
from kvsnb.client.timeline import TimelineEvent
from kvsnb.launch import connect
from kvsnb.playback.fragments import decode_video, get_media, list_fragments
from kvsnb.playback.hls import HlsReader, hls_session_url
from kvsnb.playback.images import get_images

T = TypeVar("T")


async def collect(frames: AsyncIterator[T]) -> list[T]:
    """Every item of an async iterator, as a list."""
    return [f async for f in frames]


class StepPrinter:
    """Prints numbered steps with their duration."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.durations: dict[str, float] = {}

    def step(self, name: str, func: Callable[[], Any]) -> Any:
        """Run ``func``, print ``name`` and how long it took."""
        t = time.perf_counter()
        result = func()
        self._done(name, t)
        return result

    async def astep(self, name: str, coro: Any) -> Any:
        """Await ``coro``, print ``name`` and how long it took."""
        t = time.perf_counter()
        result = await coro
        self._done(name, t)
        return result

    def _done(self, name: str, t: float) -> None:
        ms = (time.perf_counter() - t) * 1000
        self.durations[name] = ms
        self.out(f"  [{(time.perf_counter() - self.t0):7.2f} s] {name:<52} {ms:8.1f} ms")


async def signaling_check(target: Target, printer: StepPrinter) -> None:
    """Relay an offer (viewer → master) and an answer (master → viewer) on a channel without
    storage."""
    name = f"kvsnb-demo-signaling-{uuid.uuid4().hex[:6]}"
    kv = target.kinesisvideo
    arn = printer.step(
        "CreateSignalingChannel (storage disabled)",
        lambda: kv.create_signaling_channel(ChannelName=name)["ChannelARN"],
    )
    em = printer.step(
        "GetSignalingChannelEndpoint MASTER",
        lambda: target.endpoints(arn, "MASTER", ("WSS", "HTTPS")),
    )
    ev = printer.step(
        "GetSignalingChannelEndpoint VIEWER",
        lambda: target.endpoints(arn, "VIEWER", ("WSS", "HTTPS")),
    )
    creds = target.credentials()
    master = SignalingClient(em.wss, arn, creds, target.region, clock=target.clock)
    viewer = SignalingClient(
        ev.wss,
        arn,
        creds,
        target.region,
        role="VIEWER",
        client_id="demo-viewer",
        clock=target.clock,
    )
    await printer.astep("master socket open", master.open())
    await printer.astep("viewer socket open", viewer.open())
    await master.next_event(5)
    await viewer.next_event(5)

    async def relay_offer() -> None:
        await viewer.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 (demo)"})
        ev_ = await master.next_event(5)
        assert ev_.message is not None and ev_.message.sender_client_id == "demo-viewer"

    async def relay_answer() -> None:
        await master.send(
            "SDP_ANSWER", {"type": "answer", "sdp": "v=0 (demo)"}, recipient_client_id="demo-viewer"
        )
        ev_ = await viewer.next_event(5)
        assert ev_.message is not None and ev_.message.type == "SDP_ANSWER"

    await printer.astep("offer relayed viewer → master (senderClientId set)", relay_offer())
    await printer.astep("answer relayed master → viewer", relay_answer())
    await master.close()
    await viewer.close()
    kv.delete_signaling_channel(ChannelARN=arn)


async def run_demo(
    out_dir: Path,
    *,
    seconds: float = 20.0,
    target: Target | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the figures it printed."""

    import matplotlib

    matplotlib.use("Agg")

    out_dir.mkdir(parents=True, exist_ok=True)
    printer = StepPrinter(out)
    out("kvsnb demo")
    own = target is None
    tg = target or printer.step("start Local KVS (embedded, 127.0.0.1)", connect)
    try:
        out(f"  target: {tg!r}")
        name = f"kvsnb-demo-{uuid.uuid4().hex[:6]}"
        _channel_arn, stream_arn = printer.step(
            "create channel + stream, UpdateMediaStorageConfiguration",
            lambda: tg.create_storage_channel(name),
        )
        out("signaling relay (storage disabled):")
        await signaling_check(tg, printer)

        out(f"storage session: a master ingests {seconds:g} s of stamped test pattern")
        source = make_source()
        probe = RetrievalProbe(tg, stream_arn)
        assert source.pattern is not None
        source.pattern.on_frame = probe.frame_sent

        def show(e: TimelineEvent) -> None:
            if e.step != "pc_state":
                out(f"    · {e.step:<22} {e.detail if e.detail else ''}")

        await probe.start()
        result = await printer.astep(
            f"ingest {seconds:g} s (JoinStorageSession)",
            ingest(tg, name, seconds=seconds, source=source, on_event=show),
        )
        record = await printer.astep("probe: wait for the last fragment", probe.stop(2.5))
        timeline = result.timeline.to_frame()
        join_to_frame = result.timeline.between("join_call", "first_frame_sent")
        out("setup timeline:")
        out(timeline.drop(columns=["time"]).to_string(index=False))

        fragments = printer.step("ListFragments", lambda: list_fragments(tg, stream_arn))
        out(f"stored fragments ({len(fragments)}):")
        out(fragments.to_string(index=False))
        media = printer.step(
            "GetMediaForFragmentList",
            lambda: get_media(tg, stream_arn, list(fragments["fragment_number"])),
        )
        stored, unreadable = printer.step(
            "decode stored frames, read stamps", lambda: stamps_from_frames(decode_video(media))
        )
        delivery = compare_delivery(result.frames_sent, stored, unreadable)
        out(f"stored frames: {delivery}")

        url = printer.step(
            "GetHLSStreamingSessionURL (ON_DEMAND, fMP4)",
            lambda: hls_session_url(tg, stream_arn, mode="ON_DEMAND"),  # whole stored range
        )
        reader = HlsReader(url)
        hls_frames = await printer.astep(
            "read HLS: playlists, segments, decode",
            collect(reader.frames(follow=False)),
        )
        hls_stamps, _ = stamps_from_frames(hls_frames)
        hls_indexes = set(hls_stamps["frame_index"].astype(int))
        out(f"HLS frames: {len(hls_frames)}, stamps read {len(hls_indexes)}")

        first, last = result.sample_range()
        images = printer.step(
            "GetImages, 1 s sampling (PRODUCER_TIMESTAMP)",
            lambda: get_images(
                tg,
                stream_arn,
                first,
                last,
                interval_ms=1000,
                progress=False,
            ),
        )
        images = stamps_from_images(images)
        ok = images["error"].isna().sum()
        out(
            f"GetImages: {len(images)} images, {ok} with media, stamp − sampled time "
            f"p50 {images['stamp_offset_ms'].abs().median():.0f} ms"
        )

        frame_lat = frame_latency(result.frames_sent, fragments, record)
        frag_lat = fragment_latency(fragments, record, result.frames_sent)
        summary = latency_summary(frame_lat, frag_lat)
        out("ingest latency (ms):")
        out(summary.to_string(index=False))
        stored_rows = stored.assign(frame_index=stored["frame_index"].astype(int))
        tl = frame_timeline(result.frames_sent, stored_rows, fragments)
        tls = timeline_summary(tl)
        tl["in_hls"] = tl["frame_index"].isin(hls_indexes)
        out("frame timeline: " + ", ".join(f"{k} {v}" for k, v in tls.items() if k != "gap_ranges"))

        paths = {
            "latency_cdf.png": plot_latency_cdf(frame_lat),
            "latency_waterfall.png": plot_latency_waterfall(frag_lat),
            "frame_timeline.png": plot_timeline(tl),
            "frame_intervals.png": plot_intervals(tl),
        }
        for fname, fig in paths.items():
            fig.savefig(out_dir / fname, dpi=110)
        timeline.to_csv(out_dir / "setup_timeline.csv", index=False)
        fragments.to_csv(out_dir / "fragments.csv", index=False)
        frame_lat.to_csv(out_dir / "frame_latency.csv", index=False)
        frag_lat.to_csv(out_dir / "fragment_latency.csv", index=False)
        summary.to_csv(out_dir / "latency_summary.csv", index=False)
        tl.to_csv(out_dir / "frame_timeline.csv", index=False)
        images.drop(columns=["image"]).to_csv(out_dir / "images.csv", index=False)
        report = report_html(
            seconds=seconds,
            target=tg,
            summary=summary,
            frame_summary={k: v for k, v in tls.items() if k != "gap_ranges"},
            timeline=timeline.drop(columns=["time"]),
            fragments=fragments,
            plots=list(paths),
            join_to_frame_s=join_to_frame,
        )
        (out_dir / "report.html").write_text(report, encoding="utf-8")

        figures = {
            "join_call_to_first_frame_sent_ms": None
            if join_to_frame is None
            else round(join_to_frame * 1000, 1),
            "fragments": len(fragments),
            "frames_sent": delivery.sent,
            "frames_stored": delivery.received,
            "frames_missing": len(delivery.missing),
            "hls_frames": len(hls_frames),
            "images": len(images),
            "latency": summary,
            "timeline": tls,
            "step_ms": printer.durations,
        }
        out(f"report: {out_dir / 'report.html'} (and CSV tables, PNG plots in {out_dir})")
        return figures
    finally:
        if own:
            tg.close()
