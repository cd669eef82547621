"""The kernel path of ``BrowserSession``: the page's camera and microphone reach the storage
session through the kernel, where the page cannot reach the storage peer (Binder, a JupyterLab
on another machine: only the Jupyter server's HTTP and WebSocket port is reachable, no UDP).

MASTER: the page encodes the camera with WebCodecs (``VideoEncoder``, H.264 Constrained
Baseline ``avc1.42e01f``, Annex B; ``AudioEncoder`` Opus 48 kHz) and sends each chunk over the
kernel bridge's binary messages (framing: ``kvsnb.sources.encoded``); the kernel's
``MasterSession`` sends them undecoded (``EncodedVideoTrack``, ``EncodedAudioTrack``), so the
storage session stores the browser's own H.264. The storage session's keyframe requests (PLI)
go back to the page's encoder. Where the browser has no H.264 encoder the page sends JPEG
pictures (``JpegVideoTrack``: the kernel encodes), and where it has no Opus encoder PCM
(``PcmAudioTrack``); ``KernelPath.info`` and the widget's state detail say which.

VIEWER: the kernel's ``ViewerSession`` receives the master's frames; each is sent to the page
as a JPEG picture (the newest only, when the page or the encoder falls behind) to draw on a
canvas, with the master's capture time when the frame carries a stamp (else its receive time);
the page's microphone goes up as the viewer's audio (Opus or PCM, as above).

``BrowserSession`` calls ``start_kernel_path(widget, channel)`` when its transport resolves to
"kernel". The widget's side of the contract: traits ``role``, ``channel`` and ``client_id``,
attributes ``target`` (a ``Target``) and ``policy`` (a ``JoinPolicy`` or ``None``), optional
``_media()`` (the media options sent to the page with ``kernel_start``) and
``_kernel_state(state, detail)``: called with the session's state ("starting", "joining",
"connected", "reconnecting", "failed", "closed") and a ``detail`` dict (``transport``,
``video``, ``audio`` the formats in use, ``error`` a message when failing). The page's side is
``browser_media.js`` (``kvsnbKernelMaster``, ``kvsnbKernelViewer``), called by the widget's
front end at ``{"type": "kernel_start"}`` and stopped at ``{"type": "kernel_stop"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from kvsnb.client.received import ReceivedFrame
from kvsnb.client.session import JoinPolicy, MasterSession, SessionError, ViewerSession
from kvsnb.sources.encoded import (
    KIND_INFO,
    KIND_JPEG,
    KIND_KEYFRAME_REQUEST,
    ChunkError,
    EncodedChunk,
    EncodedVideoTrack,
    JpegEncoder,
    forward_keyframe_requests,
    pack_chunk,
    parse_chunk,
    track_for,
)
from kvsnb.widgets.bridge import BridgeChannel, BridgeClosed

__all__ = ["KernelPath", "start_kernel_path"]

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 60.0  # the page connects to the bridge
MEDIA_TIMEOUT_S = 60.0  # the page opens its camera/microphone and says what it sends
VIDEO_FORMATS = ("h264", "jpeg")
AUDIO_FORMATS = ("opus", "pcm")


class KernelPath:
    """One widget's media through the kernel: the bridge channel to its page and the kernel
    session (``session``, a ``MasterSession`` or ``ViewerSession`` once the page has said what
    it sends, in ``info``). ``task`` runs the set-up; ``stop()`` ends everything (awaitable).
    ``stats()`` counts chunks and frames both ways and the tracks' figures."""

    def __init__(self, widget: Any, channel: BridgeChannel) -> None:
        self.widget = widget
        self.channel = channel
        self.role = "VIEWER" if str(getattr(widget, "role", "MASTER")) == "VIEWER" else "MASTER"
        self.session: MasterSession | ViewerSession | None = None
        self.video: Any = None
        self.audio: Any = None
        self.info: dict[str, Any] = {}
        self.state = "new"
        self.error = ""
        self.chunks_in = 0
        self.bad_chunks = 0
        self.frames_to_page = 0
        self.bytes_to_page = 0
        self.keyframe_requests_sent = 0
        self._loop = asyncio.get_running_loop()
        self._info: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._info.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._stopped = False
        self._senders: set[int] = set()
        self._latest: ReceivedFrame | None = None
        self._frame_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jpeg = JpegEncoder()
        channel.on_bytes(self._on_bytes)
        channel.on_json(self._on_json)
        self.task: asyncio.Task[None] = self._spawn(self._run())

    def __repr__(self) -> str:
        return f"<KernelPath {self.role} {self.state} {self.info or ''}>"

    # ------------------------------------------------------------------ public

    def stats(self) -> dict[str, Any]:
        """Chunks received from the page (``chunks_in``, ``bad_chunks``), frames and bytes
        sent to it (viewer), keyframe requests passed to it (master), and the tracks'
        counts (``video``, ``audio``: fed, sent, dropped, queued)."""
        out: dict[str, Any] = {
            "state": self.state,
            "chunks_in": self.chunks_in,
            "bad_chunks": self.bad_chunks,
            "frames_to_page": self.frames_to_page,
            "bytes_to_page": self.bytes_to_page,
            "keyframe_requests_sent": self.keyframe_requests_sent,
        }
        for name in ("video", "audio"):
            track = getattr(self, name)
            if track is not None:
                out[name] = track.stats()
        return out

    async def stop(self) -> None:
        """Stop the page's media, the kernel session and its tracks."""
        if self._stopped:
            return
        self._stopped = True
        if not self._info.done():
            self._info.cancel()
        with contextlib.suppress(BridgeClosed):
            await self.channel.send_json({"type": "kernel_stop"})
        for track in (self.video, self.audio):
            if track is not None:
                track.stop()
        if self.session is not None:
            await self.session.stop()
        self._frame_ready.set()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._report("closed")

    # ------------------------------------------------------------------ set-up

    async def _run(self) -> None:
        self._report("starting")
        try:
            await self.channel.wait_open(OPEN_TIMEOUT_S)
            media = getattr(self.widget, "_media", None)
            options = dict(media()) if callable(media) else {}
            if self.role == "VIEWER":
                options.update(video=False, audio=True)
            await self.channel.send_json({"type": "kernel_start", **options})
            self.info = await asyncio.wait_for(self._info, MEDIA_TIMEOUT_S)
            self.session = self._make_session(self.info)
            self.session.on_state(self._on_session_state)
            await self.session.start()
            if self.role == "VIEWER":
                self.session.received.on_frame(self._on_viewer_frame)
                self._spawn(self._frames_to_page())
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            what = (
                "no page connected to the kernel bridge"
                if not self.channel.connected
                else "the page did not start its media"
            )
            self._fail(f"{what}: {exc}")
        except Exception as exc:
            self._fail(
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, SessionError) else str(exc)
            )

    def _make_session(self, info: dict[str, Any]) -> MasterSession | ViewerSession:
        widget = self.widget
        policy: JoinPolicy | None = getattr(widget, "policy", None)
        audio_format = info.get("audio")
        if audio_format is not None and audio_format not in AUDIO_FORMATS:
            raise SessionError(f"the page sends audio as {audio_format!r}: not opus or pcm")
        self.audio = track_for(audio_format) if audio_format else None
        if self.role == "VIEWER":
            client_id = str(getattr(widget, "client_id", "") or "") or None
            session: MasterSession | ViewerSession = ViewerSession(
                widget.target,
                str(widget.channel),
                client_id=client_id,
                audio=self.audio,
                policy=policy,
            )
            if hasattr(widget, "client_id"):
                widget.client_id = session.client_id or ""
            return session
        video_format = info.get("video")
        if video_format not in VIDEO_FORMATS:
            raise SessionError(
                f"the page sends video as {video_format!r}: a master needs h264 or jpeg"
            )
        self.video = track_for(video_format)
        if isinstance(self.video, EncodedVideoTrack):
            self.video.on_keyframe_request(self._ask_page_for_keyframe)
        return MasterSession(
            widget.target, str(widget.channel), video=self.video, audio=self.audio, policy=policy
        )

    # ------------------------------------------------------------------ page → kernel

    def _on_bytes(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            chunk = parse_chunk(data)
            if chunk.kind == KIND_INFO:
                if not self._info.done():
                    info = chunk.json()
                    if not isinstance(info, dict):
                        raise ChunkError("an info chunk holds a JSON object")
                    self._info.set_result(info)
                return
            self.chunks_in += 1
            self._feed(chunk)
        except ChunkError as exc:
            self.bad_chunks += 1
            if self.bad_chunks <= 3:
                logger.warning("kernel path: a chunk from the page refused: %s", exc)

    def _feed(self, chunk: EncodedChunk) -> None:
        name = chunk.kind_name
        if name == self.info.get("video") and self.video is not None:
            self.video.feed_chunk(chunk)
        elif name == self.info.get("audio") and self.audio is not None:
            self.audio.feed_chunk(chunk)
        # chunks before the session exists (its tracks) are dropped: the page is told to
        # send a keyframe once the sender wants frames

    def _on_json(self, msg: Any) -> None:
        if not isinstance(msg, dict) or self._stopped:
            return
        if msg.get("type") == "media_error" and not self._info.done():
            name, message = msg.get("name", "Error"), msg.get("message", "")
            self._info.set_exception(SessionError(f"the page's media failed: {name}: {message}"))

    # ------------------------------------------------------------------ kernel → page

    def _ask_page_for_keyframe(self) -> None:
        if self._stopped or not self.channel.connected:
            return
        self.keyframe_requests_sent += 1
        message = pack_chunk(KIND_KEYFRAME_REQUEST, b"", time.time_ns() // 1000)
        self._spawn(self._send(message))

    async def _send(self, message: bytes) -> None:
        with contextlib.suppress(BridgeClosed, ConnectionError):
            await self.channel.send_bytes(message)

    def _on_viewer_frame(self, received: ReceivedFrame) -> None:
        self._latest = received
        self._frame_ready.set()

    async def _frames_to_page(self) -> None:
        """Send the newest received frame as JPEG whenever there is a new one (frames that
        arrive while one is being encoded or sent are skipped: the page shows the latest)."""
        while not self._stopped:
            await self._frame_ready.wait()
            self._frame_ready.clear()
            received, self._latest = self._latest, None
            if received is None or self._stopped:
                continue
            jpeg = await asyncio.to_thread(self._jpeg.encode, received.frame)
            if received.stamp is not None:  # stamped media: the master's capture time
                when_us = received.stamp.capture_ms * 1000
            else:
                when_us = int(received.received_at * 1_000_000)
            message = pack_chunk(KIND_JPEG, jpeg, when_us, key=True)
            try:
                await self.channel.send_bytes(message)
            except (BridgeClosed, ConnectionError):
                continue
            self.frames_to_page += 1
            self.bytes_to_page += len(message)

    # ------------------------------------------------------------------ state

    def _on_session_state(self, state: str) -> None:
        if state == "connected" and self.session is not None:
            self._watch_keyframe_requests()
        if state in ("connected", "joining", "reconnecting", "failed"):
            self._report(state)

    def _watch_keyframe_requests(self) -> None:
        """The storage session's PLI on the current peer's video sender goes to the page."""
        session = self.session
        if not isinstance(self.video, EncodedVideoTrack) or session is None or session.pc is None:
            return
        for transceiver in session.pc.getTransceivers():
            sender = transceiver.sender
            if transceiver.kind == "video" and id(sender) not in self._senders:
                self._senders.add(id(sender))
                forward_keyframe_requests(sender, self.video)

    def _fail(self, message: str) -> None:
        self.error = message
        logger.warning("kernel path (%s) failed: %s", self.role, message)
        self._report("failed", error=message)

    def _report(self, state: str, **extra: Any) -> None:
        self.state = state
        detail: dict[str, Any] = {"transport": "kernel", **extra}
        if self.info:
            detail.update(video=self.info.get("video"), audio=self.info.get("audio"))
        report = getattr(self.widget, "_kernel_state", None)
        if callable(report):
            try:
                report(state, detail)
            except Exception:
                logger.exception("the widget's _kernel_state failed")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def start_kernel_path(widget: Any, channel: BridgeChannel) -> KernelPath:
    """Start the kernel path for ``widget`` over ``channel`` (on the running loop, the
    kernel's): ask the page to start its media, then join as the widget's role with a kernel
    session fed from (MASTER) or feeding (VIEWER) the page. Returns at once; the set-up runs
    in ``KernelPath.task`` and reports through ``widget._kernel_state``."""
    return KernelPath(widget, channel)
