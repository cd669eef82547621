"""The storage peer: Local KVS's side of a WebRTC storage session (WIRE.md, "Storage
sessions").

On an accepted JoinStorageSession the channel's storage session (an aiortc peer) sends the
connected master an SDP_OFFER in AWS's shape over the master's signaling socket: no
``senderClientId``; the audio m-line first and ``sendrecv``; video ``recvonly``; H.264 on
payload type 126 (``packetization-mode=1``, a configurable ``profile-level-id``, default
``42e01f``) and Opus on 111; BUNDLE; ICE candidates trickled as separate ICE_CANDIDATE
messages without ``sdpMid``, sent before the offer by default (clients must buffer them).
``StorageOptions.bundle_only_video`` produces the ``m=video 0`` + ``a=bundle-only`` variant.

The answer is checked against AWS's rules (video ``sendonly``; audio ``sendonly`` or
``sendrecv``, or absent when audio is optional; H.264 and Opus only): a wrong answer gets a
STATUS_RESPONSE ``InvalidArgumentException`` 400 (when it carried a correlationId) and the
session is dropped.

Media is recorded by passthrough (DESIGN principle 3): the video track yields encoded access
units (``passthrough``) that go unchanged into the ``FragmentRecorder``, which asks for
keyframes (PLI) on its fragment schedule; Opus is decoded by aiortc and transcoded to AAC.
Not idempotent: each join sends one offer; the newest master wins and the older session
ends (its partial fragment is stored). Sessions end at the maximum duration and after the
master's idle timeout (no media).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.sdp import candidate_from_sdp

from .. import ice, sdp
from .control import Channel, ControlPlane
from .errors import InvalidArgumentException, NotImplementedByLocalKvs
from .passthrough import (
    EncodedFrame,
    RtpClock,
    enable_passthrough,
    keyframe_requester,
    receiver_for_track,
)
from .recorder import FragmentRecorder
from .relay import ClientMessage, Connection, SignalingRelay
from .store import FragmentStore

logger = logging.getLogger(__name__)

OPUS_PT = 111  # payload types seen in AWS's offers
H264_PT = 126
H264_RTX_PT = 127
AIORTC_H264_PROFILE = "42e01f"  # the constrained-baseline entry of aiortc's codec table
LOOPBACK = ["127.0.0.1"]
AUDIO_CLOCK_RATE = 48_000


@dataclass
class StorageOptions:
    """How storage sessions behave; durations are configurable so tests can shorten them."""

    h264_profile_level_id: str = "42e01f"
    bundle_only_video: bool = False
    candidates_first: bool = True
    require_audio: bool = True  # the API reference requires both tracks; SDKs since 2026 not
    fragment_duration_s: float = 2.0
    max_session_s: float = 3600.0
    master_idle_timeout_s: float = 180.0
    viewer_idle_timeout_s: float = 60.0
    # AWS sometimes answers JoinStorageSession 200 and never sends the offer (WIRE.md):
    # the first ``unanswered_joins`` accepted joins of each channel do just that.
    unanswered_joins: int = 0


@dataclass
class SessionStats:
    """What a storage session has seen, with monotonic times (``time.monotonic()``)."""

    offer_sent_at: float | None = None
    answer_at: float | None = None
    connected_at: float | None = None
    first_frame_at: float | None = None
    last_media_at: float | None = None
    video_frames: int = 0
    audio_frames: int = 0
    ended_at: float | None = None
    end_reason: str | None = None


def _codec_preferences(pc_transceiver: RTCRtpTransceiver, kind: str) -> None:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        wanted = [c for c in caps if c.mimeType.lower() == "audio/opus"]
    else:
        wanted = [
            c
            for c in caps
            if c.mimeType.lower() == "video/rtx"
            or (
                c.mimeType.lower() == "video/h264"
                and c.parameters.get("profile-level-id") == AIORTC_H264_PROFILE
            )
        ]
    pc_transceiver.setCodecPreferences(wanted)


def check_master_answer(answer: str, *, require_audio: bool) -> bool:
    """Raise ``InvalidArgumentException`` unless a master's answer follows AWS's rules;
    return whether the master sends audio."""
    kinds = sdp.directions(answer)
    video = [(d, p) for k, d, p in kinds if k == "video"]
    audio = [(d, p) for k, d, p in kinds if k == "audio"]
    if not video or video[0][1] == 0 or video[0][0] != "sendonly":
        raise InvalidArgumentException(
            "The answer's video must be sendonly: a master sends H.264 video to the storage "
            "session."
        )
    audio_ok = bool(audio) and audio[0][1] != 0 and audio[0][0] in ("sendonly", "sendrecv")
    if require_audio and not audio_ok:
        raise InvalidArgumentException(
            "The answer's audio must be sendonly or sendrecv: a master sends Opus audio to the "
            "storage session."
        )
    if any(c.upper() != "H264" for c in sdp.codec_names(answer, "video")) or not sdp.codec_names(
        answer, "video"
    ):
        raise InvalidArgumentException("The answer's video codec must be H.264.")
    if audio_ok and any(c.lower() != "opus" for c in sdp.codec_names(answer, "audio")):
        raise InvalidArgumentException("The answer's audio codec must be Opus.")
    return audio_ok


class MasterSession:
    """One storage session with a master: the aiortc peer, the recorder and its stats."""

    def __init__(
        self,
        channel: Channel,
        conn: Connection,
        relay: SignalingRelay,
        store: FragmentStore,
        options: StorageOptions,
    ) -> None:
        assert channel.storage_stream_arn is not None
        self.channel = channel
        self.conn = conn
        self.relay = relay
        self.options = options
        self.stats = SessionStats()
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.store = store
        self.recorder: FragmentRecorder | None = None  # made once the answer says what comes
        self._keyframe_requester: Callable[[], None] | None = None
        self._pending_candidates: list[dict[str, Any]] = []
        self._answered = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._started = time.monotonic()

    def _request_keyframe(self) -> None:
        if self._keyframe_requester is not None and not self.closed:
            self._keyframe_requester()

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self._closed.is_set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "storage session task on %s failed", self.channel.name, exc_info=task.exception()
            )

    async def start(self) -> None:
        """Create the offer in AWS's shape and send it (and the candidates) to the master."""
        ice.set_host_addresses(LOOPBACK)
        audio = self.pc.addTransceiver("audio", direction="sendrecv")
        video = self.pc.addTransceiver("video", direction="recvonly")
        _codec_preferences(audio, "audio")
        _codec_preferences(video, "video")
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        local = self.pc.localDescription.sdp
        mapping = {}
        for kind, codec, pt in (
            ("audio", "opus", OPUS_PT),
            ("video", "H264", H264_PT),
            ("video", "rtx", H264_RTX_PT),
        ):
            found = sdp.payload_types(local, kind, codec)
            if found:
                mapping[found[0]] = pt
        offer = sdp.rename_payload_types(local, mapping)
        offer = sdp.set_fmtp(offer, H264_PT, profile_level_id=self.options.h264_profile_level_id)
        offer, candidates = sdp.split_candidates(offer)
        if self.options.bundle_only_video:
            offer = sdp.make_bundle_only(offer, "video")
        cand_payloads = [
            {"candidate": c.candidate, "sdpMLineIndex": c.sdp_mline_index} for c in candidates
        ]
        if self.options.candidates_first:
            for p in cand_payloads:
                await self.relay.send_from_storage(self.conn, "ICE_CANDIDATE", p)
        await self.relay.send_from_storage(self.conn, "SDP_OFFER", {"type": "offer", "sdp": offer})
        self.stats.offer_sent_at = time.monotonic()
        if not self.options.candidates_first:
            for p in cand_payloads:
                await self.relay.send_from_storage(self.conn, "ICE_CANDIDATE", p)
        self._spawn(self._watchdog())

    async def on_message(self, msg: ClientMessage) -> None:
        """An SDP_ANSWER or ICE_CANDIDATE from the master."""
        payload = msg.decoded()
        if msg.action == "SDP_ANSWER":
            await self._on_answer(payload)
        elif msg.action == "ICE_CANDIDATE":
            if not self._answered:
                self._pending_candidates.append(payload)
            else:
                await self._add_candidate(payload)
        else:
            raise InvalidArgumentException("A master sends answers and candidates, not offers.")

    async def _on_answer(self, payload: dict[str, Any]) -> None:
        if self._answered:
            raise InvalidArgumentException("The storage session already has an answer.")
        text = payload.get("sdp")
        if payload.get("type") != "answer" or not isinstance(text, str):
            raise InvalidArgumentException("SDP_ANSWER payload must be {type: answer, sdp}.")
        try:
            sends_audio = check_master_answer(text, require_audio=self.options.require_audio)
        except InvalidArgumentException:
            await self.close("invalid answer")
            raise
        assert self.channel.storage_stream_arn is not None
        self.recorder = FragmentRecorder(
            self.store,
            self.channel.storage_stream_arn,
            fragment_duration_s=self.options.fragment_duration_s,
            request_keyframe=self._request_keyframe,
            audio=sends_audio,
        )
        # The answer keeps AWS's payload types (aiortc adopts the remote ones); only the
        # H.264 profile goes back to the one aiortc's codec table matches.
        answer = sdp.expand_bundle_only(text)
        for pt in sdp.payload_types(answer, "video", "H264"):
            answer = sdp.set_fmtp(answer, pt, profile_level_id=AIORTC_H264_PROFILE)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except Exception as exc:
            await self.close("unusable answer")
            raise InvalidArgumentException(f"The answer could not be applied: {exc}") from exc
        self._answered = True
        self.stats.answer_at = time.monotonic()
        for pending in self._pending_candidates:
            await self._add_candidate(pending)
        self._pending_candidates.clear()

    async def _add_candidate(self, payload: dict[str, Any]) -> None:
        value = payload.get("candidate")
        if not isinstance(value, str):
            raise InvalidArgumentException("ICE_CANDIDATE payload must carry a candidate.")
        if not value:
            return  # end of candidates
        try:
            cand = candidate_from_sdp(value.removeprefix("candidate:"))
        except (ValueError, IndexError) as exc:
            raise InvalidArgumentException(f"Malformed ICE candidate: {value!r}") from exc
        transceivers = self.pc.getTransceivers()
        index = payload.get("sdpMLineIndex")
        mid = payload.get("sdpMid")
        if not mid:
            i = index if isinstance(index, int) and 0 <= index < len(transceivers) else 0
            mid = transceivers[i].mid
        cand.sdpMid = mid
        cand.sdpMLineIndex = index if isinstance(index, int) else 0
        await self.pc.addIceCandidate(cand)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.stats.connected_at is None:
            self.stats.connected_at = time.monotonic()
        elif state in ("failed", "closed"):
            self._spawn(self.close(f"peer connection {state}"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = receiver_for_track(self.pc, track)
        if track.kind == "video":
            enable_passthrough(receiver)
            self._keyframe_requester = keyframe_requester(receiver)
            self._spawn(self._pump_video(track))
        else:
            self._spawn(self._pump_audio(track, RtpClock(receiver, AUDIO_CLOCK_RATE)))

    async def _pump_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, EncodedFrame)
                now = time.monotonic()
                if self.stats.first_frame_at is None:
                    self.stats.first_frame_at = now
                self.stats.last_media_at = now
                self.stats.video_frames += 1
                assert self.recorder is not None
                self.recorder.add_video(frame)

    async def _pump_audio(self, track: MediaStreamTrack, clock: RtpClock) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                arrival = time.time()
                self.stats.last_media_at = time.monotonic()
                self.stats.audio_frames += 1
                producer, _ = clock.producer_time(int(frame.pts or 0), arrival)
                if self.recorder is not None:
                    self.recorder.add_audio(frame, producer, arrival)

    async def _watchdog(self) -> None:
        period = max(0.05, min(self.options.master_idle_timeout_s, 1.0) / 2)
        while not self.closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - self._started > self.options.max_session_s:
                await self.close("maximum session duration")
            last = self.stats.last_media_at or self.stats.offer_sent_at or self._started
            if now - last > self.options.master_idle_timeout_s:
                await self.close("idle timeout")

    async def close(self, reason: str) -> None:
        """End the session: close the peer and store the partial fragment."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.stats.ended_at = time.monotonic()
        self.stats.end_reason = reason
        logger.info("storage session on %s ended: %s", self.channel.name, reason)
        await self.pc.close()
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self.recorder is not None:
            await self.recorder.close()


@dataclass
class StorageSessionManager:
    """The storage sessions of one Local KVS: joins from the webrtc-storage plane, client
    messages from the signaling relay (it is the relay's ``StorageSink``)."""

    control: ControlPlane
    relay: SignalingRelay
    store: FragmentStore
    options: StorageOptions = field(default_factory=StorageOptions)
    sessions: dict[str, MasterSession] = field(default_factory=dict)
    ended: list[MasterSession] = field(default_factory=list)
    joins: dict[str, int] = field(default_factory=dict)

    async def join_master(self, channel: Channel) -> None:
        """Offer a new session to the channel's connected master; the older one ends."""
        conn = self.relay.master(channel.arn)
        if conn is None:
            logger.info("JoinStorageSession on %s with no master socket: no offer", channel.name)
            return
        self.joins[channel.arn] = n = self.joins.get(channel.arn, 0) + 1
        if n <= self.options.unanswered_joins:
            logger.info("JoinStorageSession %d on %s left unanswered (as AWS may)", n, channel.name)
            return
        old = self.sessions.pop(channel.arn, None)
        if old is not None:
            await old.close("replaced by a newer JoinStorageSession")
            self.ended.append(old)
        session = MasterSession(channel, conn, self.relay, self.store, self.options)
        self.sessions[channel.arn] = session
        await session.start()

    async def join_viewer(self, channel: Channel, client_id: str) -> None:
        """Viewers in storage sessions are not in Local KVS yet (see the README)."""
        raise NotImplementedByLocalKvs(
            "Local KVS does not implement JoinStorageSessionAsViewer yet; see the coverage "
            "table in the README."
        )

    async def on_client_message(self, conn: Connection, msg: ClientMessage) -> None:
        """Route a master's answer or candidate to its session."""
        session = self.sessions.get(conn.channel_arn)
        if conn.role != "MASTER" or session is None or session.closed:
            raise InvalidArgumentException(
                "No storage session awaits this message; call JoinStorageSession first."
            )
        if session.conn is not conn:
            session.conn = conn  # the master reconnected its socket
        await session.on_message(msg)

    async def on_client_connected(self, conn: Connection) -> None:
        """Nothing to do: a session starts on JoinStorageSession."""

    async def on_client_disconnected(self, conn: Connection) -> None:
        """The media path outlives the socket; the idle timeout ends a silent session."""

    def on_storage_changed(self, channel: Channel) -> None:
        """Storage disabled or remapped: end the channel's session."""
        session = self.sessions.get(channel.arn)
        if session is not None and (
            not channel.storage_enabled
            or channel.storage_stream_arn != session.channel.storage_stream_arn
        ):
            self.sessions.pop(channel.arn, None)
            asyncio.get_running_loop().create_task(session.close("storage configuration changed"))

    async def close(self) -> None:
        """End every session (their partial fragments are stored)."""
        for session in list(self.sessions.values()):
            await session.close("Local KVS stopping")
        self.sessions.clear()
