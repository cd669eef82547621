"""``kvsnb demo``: the main job, on Local KVS (or any target), printing every step.

1. Start Local KVS (embedded), create a channel and a stream, map them for storage.
2. Signaling check on a second channel with storage disabled: a master and a viewer relay
   an offer and an answer through the signaling WebSocket.
3. A master ingests stamped test media through a storage session (JoinStorageSession).
4. The stored fragments are listed (ListFragments), fetched (GetMediaForFragmentList) and
   decoded; the stamps read back prove which frames were stored.
5. Tables go to the output folder (CSV): timeline, fragments, frames.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis.stamps import compare_delivery, stamps_from_frames
from .ingest import ingest
from .playback.fragments import decode_video, get_media, list_fragments
from .signaling import SignalingClient
from .target import Target, connect
from .timeline import TimelineEvent


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
    master = SignalingClient(em.wss, arn, creds, target.region)
    viewer = SignalingClient(
        ev.wss, arn, creds, target.region, role="VIEWER", client_id="demo-viewer"
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
    seconds: float = 10.0,
    target: Target | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the figures it printed."""
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

        def show(e: TimelineEvent) -> None:
            if e.step not in ("pc_state",):
                out(f"    · {e.step:<22} {e.detail if e.detail else ''}")

        result = await printer.astep(
            f"ingest {seconds:g} s (JoinStorageSession)",
            ingest(tg, name, seconds=seconds, on_event=show),
        )
        timeline = result.timeline.to_frame()
        join_to_frame = result.timeline.between("join_call", "first_frame_sent")
        out("setup timeline:")
        out(timeline.drop(columns=["time"]).to_string(index=False))

        await asyncio.sleep(0.2)
        fragments = printer.step("ListFragments", lambda: list_fragments(tg, stream_arn))
        out(f"stored fragments ({len(fragments)}):")
        out(fragments.to_string(index=False))
        media = printer.step(
            "GetMediaForFragmentList",
            lambda: get_media(tg, stream_arn, list(fragments["fragment_number"])),
        )
        stamps, unreadable = printer.step(
            "decode frames, read stamps", lambda: stamps_from_frames(decode_video(media))
        )
        delivery = compare_delivery(result.frames_sent, stamps, unreadable)
        out(f"frames: {delivery}")
        timeline.to_csv(out_dir / "timeline.csv", index=False)
        fragments.to_csv(out_dir / "fragments.csv", index=False)
        merged = result.frames_sent.merge(
            stamps, on="frame_index", how="left", suffixes=("", "_stored")
        )
        merged["stored"] = merged["pts_s"].notna()
        merged.to_csv(out_dir / "frames.csv", index=False)
        figures = {
            "join_call_to_first_frame_ms": None if join_to_frame is None else join_to_frame * 1000,
            "fragments": len(fragments),
            "frames_sent": delivery.sent,
            "frames_stored": delivery.received,
            "frames_missing": len(delivery.missing),
            "step_ms": printer.durations,
        }
        out(f"written: {', '.join(str(p) for p in sorted(out_dir.iterdir()))}")
        return figures
    finally:
        if own:
            tg.close()
