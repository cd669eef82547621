"""The storage peer: Local KVS's side of a WebRTC storage session.

On each accepted JoinStorageSession (or JoinStorageSessionAsViewer) it sends the participant
an offer in AWS's shape, checks the answer (a wrong one gets a STATUS_RESPONSE and the
session ends), records the master by passthrough and serves viewers the master's video and
everyone else's audio. The rule: docs/wire.md, "Storage sessions"; each configurable part of
it is a field of ``StorageOptions`` (which also has switches that imitate a browser's codec
order, late offers and candidates with ``usernameFragment``, to test how clients cope). How
peer, passthrough, recorder and fan-out fit: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from kvsnb.local.control.plane import Channel
from kvsnb.local.core import memory
from kvsnb.local.core.errors import ClientLimitExceededException, InvalidArgumentException
from kvsnb.local.signaling.relay import ClientConnection, ClientMessage, StorageRelay
from kvsnb.local.storage.fanout import MASTER, STORE, AudioMixer, MixedAudioTrack, VideoFanout
from kvsnb.local.storage.passthrough import (
    EncodedFrame,
    OpusDecoder,
    OpusPacket,
    direct_audio,
    direct_audio_packets,
    direct_video,
    keyframe_requester,
    receiver_for_track,
)
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.fragments import FragmentStore
from kvsnb.local.turn.server import RELAY_IP, TurnEndpoint
from kvsnb.wire import aiortc_compat, ice, sdp, webrtc
from kvsnb.wire.defaults import LOOPBACK

logger = logging.getLogger(__name__)


H264_RTX_PT = 127
WATCHDOG_PERIOD_S = 0.25


@dataclass
class StorageOptions:
    """How storage sessions behave; durations are configurable so tests can shorten them."""

    h264_profile_level_id: str = webrtc.OFFER_PROFILE_LEVEL_ID
    bundle_only_video: bool = False
    browser_codec_order: bool = False  # VP8 + High H.264 first, PCMU/PCMA before Opus
    offer_delays_s: tuple[float, ...] = ()  # n-th accepted join's offer sent this late
    candidate_ufrag: bool = False  # trickled candidates carry usernameFragment
    candidates_first: bool = True
    require_audio: bool = True  # the API reference requires both tracks; SDKs since 2026 not
    fragment_duration_s: float = 2.0
    max_session_s: float = 3600.0
    master_idle_timeout_s: float = 180.0
    viewer_idle_timeout_s: float = 60.0  # a viewer's peer not connected for this long ends
    max_viewers: int = 3
    viewer_wait_for_master_s: float = 180.0
    viewer_slot_hold_s: float = 60.0
    # The TURN server the storage peer is reachable through (relay candidates only, as on
    # AWS); None: host candidates on loopback (Local KVS's ice="host").
    turn: TurnEndpoint | None = None
    # AWS sometimes answers JoinStorageSession 200 and never sends the offer (docs/wire.md):
    # the first ``unanswered_joins`` accepted joins of each channel do just that.
    unanswered_joins: int = 0


def peer_configuration(turn: TurnEndpoint | None, channel_arn: str) -> RTCConfiguration:
    """The storage peer's ICE configuration: with a TURN server, relay candidates only, with
    credentials fresh for this session (a peer reachable only through TURN, as on AWS);
    without, no ICE server (host candidates on loopback)."""
    if turn is None:
        return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    entry = turn.peer_ice_server(channel_arn)
    server = RTCIceServer(
        urls=entry["Uris"], username=entry["Username"], credential=entry["Password"]
    )
    return RTCConfiguration(
        iceServers=[server],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


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


@dataclass(frozen=True)
class EndedSession:
    """What is kept of a storage session that a newer join replaced (not the session
    itself: its peer connection and recorder are freed)."""

    role: str
    channel_arn: str
    client_id: str | None
    stats: SessionStats


ENDED_KEPT = 256  # records of replaced sessions kept for inspection, newest last


HIGH_PROFILE_LEVEL_ID = "640c1f"  # what ``browser_codec_order`` offers before the storage H.264
BROWSER_FIRST = {"audio": ("audio/pcmu", "audio/pcma"), "video": ("video/vp8",)}


def _codec_preferences(pc_transceiver: RTCRtpTransceiver, kind: str, browser: bool) -> None:
    wanted = webrtc.storage_codec_preferences(kind, (webrtc.AIORTC_H264_PROFILE,))
    if browser:
        caps = RTCRtpSender.getCapabilities(kind).codecs
        first = [c for m in BROWSER_FIRST[kind] for c in caps if c.mimeType.lower() == m]
        if kind == "video":  # aiortc's Baseline entry, offered as High (relabelled)
            first += webrtc.storage_codec_preferences(kind, ("42001f",))[:1]
        wanted = first + wanted
    pc_transceiver.setCodecPreferences(wanted)


def _h264_payload_type(text: str, profile_level_id: str) -> int | None:
    for pt in sdp.payload_types(text, "video", "H264"):
        if sdp.fmtp(text, pt).get("profile-level-id", "").lower() == profile_level_id:
            return pt
    return None


def _rtx_payload_type(text: str, apt: int) -> int | None:
    for pt in sdp.payload_types(text, "video", "rtx"):
        if sdp.fmtp(text, pt).get("apt") == str(apt):
            return pt
    return None


VIEWER_LIMIT_MESSAGE = "Reached the maximum number of viewers connected to the session."


def check_viewer_answer(answer: str) -> bool:
    """Raise ``InvalidArgumentException`` unless a viewer's answer follows AWS's rules;
    return whether the viewer sends audio."""
    kinds = sdp.directions(answer)
    video = [(d, p) for k, d, p in kinds if k == "video"]
    audio = [(d, p) for k, d, p in kinds if k == "audio"]
    if not video or video[0][0] != "recvonly":
        raise InvalidArgumentException(
            "The answer's video must be recvonly: a viewer receives video and never sends it."
        )
    if not audio or audio[0][0] not in ("recvonly", "sendrecv"):
        raise InvalidArgumentException("The answer's audio must be recvonly or sendrecv.")
    if any(c.upper() != "H264" for c in sdp.codec_names(answer, "video")):
        raise InvalidArgumentException("The answer's video codec must be H.264.")
    if any(c.lower() != "opus" for c in sdp.codec_names(answer, "audio")):
        raise InvalidArgumentException("The answer's audio codec must be Opus.")
    return audio[0][0] == "sendrecv" and audio[0][1] != 0


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


class _StoragePeer(abc.ABC):
    """The storage session's side of one participant: offer, answer, candidates, lifetime."""

    role = "MASTER"

    def __init__(
        self,
        state: ChannelState,
        conn: ClientConnection,
        relay: StorageRelay,
        options: StorageOptions,
    ) -> None:
        self.state = state
        self.channel = state.channel
        self.conn = conn
        self.relay = relay
        self.options = options
        self.stats = SessionStats()
        self.pc = RTCPeerConnection(peer_configuration(options.turn, self.channel.arn))
        self._pending_candidates: list[dict[str, Any]] = []
        self._answered = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self.late_offer: asyncio.Task[None] | None = None  # an offer sent late (options)

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self._closed.is_set()

    @property
    def finished(self) -> bool:
        """True once ``close()`` has completed: the peer connection closed, the session's
        tasks ended and what it held released (a master's partial fragment stored)."""
        return self._close_task is not None and self._close_task.done()

    @property
    def running_tasks(self) -> int:
        """How many of the session's background tasks (watchdog, ...) are still running."""
        return len(self._tasks)

    def record(self) -> EndedSession:
        """A small record of this session (role, channel, ClientId, stats)."""
        return EndedSession(
            self.role, self.channel.arn, getattr(self, "client_id", None), self.stats
        )

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

    @abc.abstractmethod
    def _transceivers(self) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver]:
        """Add the audio (first) and video transceivers in this role's directions."""

    async def start(self, delay_s: float = 0.0) -> None:
        """Create the offer in AWS's shape and send it (and the candidates) to the client,
        ``delay_s`` late if asked (then in the background: the offer goes out even if a
        newer join has replaced this session by then, as AWS's late offers do)."""
        ice.set_host_addresses([LOOPBACK])
        audio, video = self._transceivers()
        browser = self.options.browser_codec_order
        _codec_preferences(audio, "audio", browser)
        _codec_preferences(video, "video", browser)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._open_relay()
        local = self.pc.localDescription.sdp
        mapping: dict[int, int] = {}
        opus = sdp.payload_types(local, "audio", "opus")
        if opus:
            mapping[opus[0]] = webrtc.OPUS_PAYLOAD_TYPE
        h264 = _h264_payload_type(local, webrtc.AIORTC_H264_PROFILE)
        if h264 is not None:
            mapping[h264] = webrtc.H264_PAYLOAD_TYPE
            rtx = _rtx_payload_type(local, h264)
            if rtx is not None:
                mapping[rtx] = H264_RTX_PT
        high = _h264_payload_type(local, "42001f") if browser else None
        offer = sdp.rename_payload_types(local, mapping)
        offer = sdp.set_fmtp(
            offer, webrtc.H264_PAYLOAD_TYPE, profile_level_id=self.options.h264_profile_level_id
        )
        if high is not None:
            offer = sdp.set_fmtp(offer, high, profile_level_id=HIGH_PROFILE_LEVEL_ID)
        offer, candidates = sdp.split_candidates(offer)
        candidates = sdp.bundled_candidates(candidates, offer)
        if self.options.bundle_only_video:
            offer = sdp.make_bundle_only(offer, "video")
        cand_payloads = [webrtc.candidate_to_payload(c, with_mid=False) for c in candidates]
        ufrag = sdp.ice_ufrag(offer)
        if self.options.candidate_ufrag and ufrag:
            for p in cand_payloads:
                p["usernameFragment"] = ufrag
        self._spawn(self._watchdog())
        if delay_s > 0:  # not one of the session's tasks: closing it does not cancel this
            self.late_offer = asyncio.get_running_loop().create_task(
                self._send_offer(offer, cand_payloads, delay_s)
            )
        else:
            await self._send_offer(offer, cand_payloads)

    def _open_relay(self) -> None:
        """Let every relayed peer reach this peer from the first packet
        (``aiortc_compat.open_relay_permissions``). Every peer a storage session can have
        relays from ``RELAY_IP`` (coturn relays only between relay addresses), so one
        permission for that address, installed now, covers them all."""
        if self.options.turn is not None:
            aiortc_compat.open_relay_permissions(self.pc, [RELAY_IP])

    async def _send_offer(
        self, offer: str, cand_payloads: list[dict[str, Any]], delay_s: float = 0.0
    ) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if self.options.candidates_first:
            for p in cand_payloads:
                await self.relay.send_from_storage(self.conn, "ICE_CANDIDATE", p)
        await self.relay.send_from_storage(self.conn, "SDP_OFFER", {"type": "offer", "sdp": offer})
        self.stats.offer_sent_at = time.monotonic()
        if not self.options.candidates_first:
            for p in cand_payloads:
                await self.relay.send_from_storage(self.conn, "ICE_CANDIDATE", p)

    async def on_message(self, msg: ClientMessage) -> None:
        """An SDP_ANSWER or ICE_CANDIDATE from the client."""
        payload = msg.decoded()
        if msg.action == "SDP_ANSWER":
            if self.stats.offer_sent_at is None:
                logger.info("%s: an answer before this session's offer went out: ignored", self)
                return
            await self._on_answer(payload)
        elif msg.action == "ICE_CANDIDATE":
            if not self._answered:
                self._pending_candidates.append(payload)
            else:
                await self._add_candidate(payload)
        else:
            raise InvalidArgumentException(
                "Clients send answers and candidates to the storage session, not offers."
            )

    @abc.abstractmethod
    def _check_answer(self, text: str) -> None:
        """Raise ``InvalidArgumentException`` for an answer against AWS's rules; prepare
        what the answer decides (the role's job)."""

    async def _on_answer(self, payload: dict[str, Any]) -> None:
        if self._answered:
            raise InvalidArgumentException("The storage session already has an answer.")
        text = payload.get("sdp")
        if payload.get("type") != "answer" or not isinstance(text, str):
            raise InvalidArgumentException("SDP_ANSWER payload must be {type: answer, sdp}.")
        try:
            self._check_answer(text)
        except InvalidArgumentException:
            await self.close("invalid answer")
            raise
        # The answer keeps AWS's payload types (aiortc adopts the remote ones); only the
        # H.264 profile goes back to the one aiortc's codec table matches.
        answer, _ = webrtc.relabel_h264_profiles(
            sdp.expand_bundle_only(text), keep=(webrtc.AIORTC_H264_PROFILE,)
        )
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
        mids = [tr.mid for tr in self.pc.getTransceivers()]
        try:
            cand = webrtc.candidate_from_payload(payload, mids)
        except webrtc.CandidateError as exc:
            raise InvalidArgumentException(str(exc)) from exc
        if cand is not None:
            await self.pc.addIceCandidate(cand)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.stats.connected_at is None:
            self.stats.connected_at = time.monotonic()
        elif state in ("failed", "closed"):
            self._spawn(self.close(f"peer connection {state}"))

    @abc.abstractmethod
    def _on_track(self, track: MediaStreamTrack) -> None:
        """Media from the client (the role's job)."""

    def _audio_frame(self, frame: Any, producer: float, arrival: float) -> None:
        """A decoded audio frame from the client (``direct_audio`` sink, on the loop)."""
        if self.closed:
            return
        self.stats.last_media_at = time.monotonic()
        self.stats.audio_frames += 1
        self._on_audio(frame, producer, arrival)

    @abc.abstractmethod
    def _on_audio(self, frame: Any, producer: float, arrival: float) -> None:
        """A decoded audio frame from the client (the role's job)."""

    def _idle(self, now: float) -> str | None:
        """Why the session should end now, if it should."""
        if now - self._started > self.options.max_session_s:
            return "maximum session duration"
        return None

    async def _watchdog(self) -> None:
        while not self.closed:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            reason = self._idle(time.monotonic())
            if reason is not None:
                await self.close(reason)

    async def close(self, reason: str) -> None:
        """End the session and release what it holds; every caller waits for the end."""
        if self._close_task is None:
            self._closed.set()
            self.stats.ended_at = time.monotonic()
            self.stats.end_reason = reason
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        logger.info(
            "storage session (%s) on %s ended: %s",
            self.role,
            self.channel.name,
            self.stats.end_reason,
        )
        # what was received is stored before the peer connection closes: closing it waits for
        # the TURN server to free the allocation, ~30 s when that server is gone (Local KVS
        # killed, its coturn with it)
        others = list(self._tasks)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._release()
        await self.pc.close()
        memory.trim_later()  # what the session held natively goes back to the system

    @abc.abstractmethod
    async def _release(self) -> None:
        """Role-specific clean-up once the peer's tasks ended (before its connection closes)."""


class MasterPeer(_StoragePeer):
    """The storage session with the master: records its media, relays it to viewers."""

    role = "MASTER"

    def __init__(
        self,
        state: ChannelState,
        conn: ClientConnection,
        relay: StorageRelay,
        store: FragmentStore,
        options: StorageOptions,
    ) -> None:
        super().__init__(state, conn, relay, options)
        self.store = store
        self.recorder: FragmentRecorder | None = None  # made once the answer says what comes
        self._keyframe_requester: Callable[[], None] | None = None
        self._decoder: OpusDecoder | None = None  # only while the master's audio is mixed

    def _request_keyframe(self) -> None:
        if self._keyframe_requester is not None and not self.closed:
            self._keyframe_requester()

    def _transceivers(self) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver]:
        audio = self.pc.addTransceiver(
            MixedAudioTrack(self.state.mixer, MASTER), direction="sendrecv"
        )
        video = self.pc.addTransceiver("video", direction="recvonly")
        return audio, video

    def _check_answer(self, text: str) -> None:
        sends_audio = check_master_answer(text, require_audio=self.options.require_audio)
        assert self.channel.storage_stream_arn is not None
        self.recorder = FragmentRecorder(
            self.store,
            self.channel.storage_stream_arn,
            fragment_duration_s=self.options.fragment_duration_s,
            request_keyframe=self._request_keyframe,
            audio=sends_audio,
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        # Media goes straight from the jitter buffers to the recorder, on the event loop:
        # video as received (passthrough), Opus packets as they arrive (no playout buffer).
        receiver = receiver_for_track(self.pc, track)
        if track.kind == "video":
            direct_video(receiver, self._video_frame)
            self._keyframe_requester = keyframe_requester(receiver)
            self.state.fanout.request_keyframe = self._request_keyframe
        else:
            direct_audio_packets(receiver, self._audio_packet)

    def _video_frame(self, frame: EncodedFrame) -> None:
        """An H.264 access unit from the master (``direct_video`` sink, on the loop)."""
        if self.closed or self.recorder is None:
            return
        now = time.monotonic()
        if self.stats.first_frame_at is None:
            self.stats.first_frame_at = now
        self.stats.last_media_at = now
        self.stats.video_frames += 1
        self.recorder.add_video(frame)
        self.state.fanout.push(frame)

    def _audio_packet(self, packet: OpusPacket) -> None:
        """An Opus packet from the master (``direct_audio_packets`` sink, on the loop). While
        no viewer hears the master and no viewer audio is to be mixed into the stored track,
        the packet goes to the recorder undecoded (decoded on its thread); otherwise it is
        decoded here for the mixer."""
        mixer = self.state.mixer
        if self.recorder is not None and not mixer.wants(MASTER) and not mixer.has_waiting(STORE):
            if not self.closed:
                self.stats.last_media_at = time.monotonic()
                self.stats.audio_frames += 1
                self.recorder.add_opus(packet)
            return
        if self._decoder is None:
            self._decoder = OpusDecoder()
        for frame, producer in self._decoder.decode(packet):
            self._audio_frame(frame, producer, packet.arrival_time)

    def _on_audio(self, frame: Any, producer: float, arrival: float) -> None:
        self.state.mixer.push(MASTER, frame)
        if self.recorder is not None:
            self.recorder.add_audio(self.state.mixer.mix_into(frame), producer, arrival)

    def _idle(self, now: float) -> str | None:
        last = self.stats.last_media_at or self.stats.offer_sent_at or self._started
        if now - last > self.options.master_idle_timeout_s:
            return "idle timeout"
        return super()._idle(now)

    async def _release(self) -> None:
        if self.state.fanout.request_keyframe == self._request_keyframe:
            self.state.fanout.request_keyframe = None
        if self.state.master is self:
            self.state.mixer.master_present = False
            self.state.master_left_at = time.monotonic()
        if self.recorder is not None:
            await self.recorder.close()


class ViewerPeer(_StoragePeer):
    """The storage session with one viewer: the master's video relayed to it, the others'
    audio mixed for it, its audio mixed into the others' (and the stored track)."""

    role = "VIEWER"

    def __init__(
        self,
        state: ChannelState,
        conn: ClientConnection,
        relay: StorageRelay,
        options: StorageOptions,
        client_id: str,
    ) -> None:
        super().__init__(state, conn, relay, options)
        self.client_id = client_id
        self.listener = f"viewer:{client_id}"
        self.video_track = state.fanout.new_track()
        self.audio_track = MixedAudioTrack(state.mixer, self.listener)

    def _transceivers(self) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver]:
        audio = self.pc.addTransceiver(self.audio_track, direction="sendrecv")
        video = self.pc.addTransceiver(self.video_track, direction="sendonly")
        self.state.fanout.forward_pli(video.sender)
        return audio, video

    def _check_answer(self, text: str) -> None:
        check_viewer_answer(text)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            direct_audio(receiver_for_track(self.pc, track), self._audio_frame)

    def _on_audio(self, frame: Any, producer: float, arrival: float) -> None:
        self.state.mixer.push(self.listener, frame)

    def _idle(self, now: float) -> str | None:
        if self.state.master is None or self.state.master.closed:
            waiting_since = self.state.master_left_at or self._started
            if now - max(waiting_since, self._started) > self.options.viewer_wait_for_master_s:
                return "no master within the viewer wait limit"
        connected = self.stats.connected_at is not None and self.pc.connectionState == "connected"
        if not connected and now - self._started > self.options.viewer_idle_timeout_s:
            return "viewer idle timeout"
        return super()._idle(now)

    async def _release(self) -> None:
        self.video_track.stop()
        self.audio_track.stop()
        self.state.left_viewers[self.client_id] = time.monotonic()
        if self.state.viewers.get(self.client_id) is self:
            del self.state.viewers[self.client_id]


@dataclass
class ChannelState:
    """One channel's storage session: master, viewers, the video fan-out and audio mixer."""

    channel: Channel
    master: MasterPeer | None = None
    viewers: dict[str, ViewerPeer] = field(default_factory=dict)
    left_viewers: dict[str, float] = field(default_factory=dict)  # ClientId → left at
    master_left_at: float | None = None
    fanout: VideoFanout = field(default_factory=VideoFanout)
    mixer: AudioMixer = field(default_factory=AudioMixer)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # joins of this channel, in turn

    def __post_init__(self) -> None:
        self.mixer.add_listener(STORE)

    def viewer_slots_taken(self, hold_s: float, except_client: str) -> int:
        """Viewers connected plus departed viewers whose slot is still held."""
        now = time.monotonic()
        for cid, left in list(self.left_viewers.items()):
            if now - left > hold_s:
                del self.left_viewers[cid]
        held = {c for c in self.left_viewers if c not in self.viewers}
        return len(set(self.viewers) - {except_client}) + len(held - {except_client})


@dataclass
class StorageSessionManager:
    """The storage sessions of one Local KVS: joins from the webrtc-storage plane, client
    messages from the signaling relay (it is the relay's ``StorageSink``)."""

    relay: StorageRelay
    store: FragmentStore
    options: StorageOptions = field(default_factory=StorageOptions)
    channels: dict[str, ChannelState] = field(default_factory=dict)
    ended: deque[EndedSession] = field(default_factory=lambda: deque(maxlen=ENDED_KEPT))
    joins: dict[str, int] = field(default_factory=dict)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def sessions(self) -> dict[str, MasterPeer]:
        """The current master session of each channel that has one."""
        return {arn: st.master for arn, st in self.channels.items() if st.master is not None}

    def _state(self, channel: Channel) -> ChannelState:
        st = self.channels.get(channel.arn)
        if st is None:
            st = self.channels[channel.arn] = ChannelState(channel)
        st.channel = channel
        return st

    def _offer_delay(self, channel: Channel) -> float:
        n = self.joins.get(channel.arn, 0)
        delays = self.options.offer_delays_s
        return delays[n - 1] if 0 < n <= len(delays) else 0.0

    def _unanswered(self, channel: Channel) -> bool:
        self.joins[channel.arn] = n = self.joins.get(channel.arn, 0) + 1
        if n <= self.options.unanswered_joins:
            logger.info("JoinStorageSession %d on %s left unanswered (as AWS may)", n, channel.name)
            return True
        return False

    async def join_master(self, channel: Channel) -> None:
        """Offer a new session to the channel's connected master; the older one ends."""
        conn = self.relay.master(channel.arn)
        if conn is None:
            logger.info("JoinStorageSession on %s with no master socket: no offer", channel.name)
            return
        if self._unanswered(channel):
            return
        st = self._state(channel)
        async with st.lock:
            old = st.master
            if old is not None:
                await old.close("replaced by a newer JoinStorageSession")
                self.ended.append(old.record())
            session = MasterPeer(st, conn, self.relay, self.store, self.options)
            st.master = session
            st.mixer.master_present = True
            st.master_left_at = None
            await session.start(self._offer_delay(channel))
            if session.late_offer is not None:
                self._closing.add(session.late_offer)
                session.late_offer.add_done_callback(self._closing.discard)

    async def join_viewer(self, channel: Channel, client_id: str) -> None:
        """Offer a session to a viewer: at most ``max_viewers`` (slots of departed viewers
        held for a while); the same ClientId replaces its older session."""
        st = self._state(channel)
        if st.viewer_slots_taken(self.options.viewer_slot_hold_s, client_id) >= (
            self.options.max_viewers
        ):
            raise ClientLimitExceededException(VIEWER_LIMIT_MESSAGE)
        conn = self.relay.viewer(channel.arn, client_id)
        if conn is None:
            logger.info("JoinStorageSessionAsViewer for %s with no socket: no offer", client_id)
            return
        if self._unanswered(channel):
            return
        async with st.lock:
            old = st.viewers.pop(client_id, None)
            if old is not None:
                await old.close("replaced by a newer JoinStorageSessionAsViewer")
                self.ended.append(old.record())
            st.left_viewers.pop(client_id, None)
            viewer = ViewerPeer(st, conn, self.relay, self.options, client_id)
            st.viewers[client_id] = viewer
            await viewer.start()

    async def on_client_message(self, conn: ClientConnection, msg: ClientMessage) -> None:
        """Route a client's answer or candidate to its session."""
        st = self.channels.get(conn.channel_arn)
        peer: _StoragePeer | None = None
        if st is not None:
            peer = st.master if conn.role == "MASTER" else st.viewers.get(str(conn.client_id))
        if peer is None or peer.closed:
            raise InvalidArgumentException(
                "No storage session awaits this message; call JoinStorageSession"
                + ("AsViewer" if conn.role == "VIEWER" else "")
                + " first."
            )
        if peer.conn is not conn:
            peer.conn = conn  # the client reconnected its socket
        await peer.on_message(msg)

    async def on_client_connected(self, conn: ClientConnection) -> None:
        """Nothing to do: a session starts on JoinStorageSession[AsViewer]."""

    async def on_client_disconnected(self, conn: ClientConnection) -> None:
        """The media path outlives the socket; the idle timeouts end silent sessions."""

    def on_storage_changed(self, channel: Channel) -> None:
        """Storage disabled or remapped: end the channel's sessions."""
        st = self.channels.get(channel.arn)
        if st is None or st.master is None:
            return
        if (
            not channel.storage_enabled
            or channel.storage_stream_arn != st.master.channel.storage_stream_arn
        ):
            self.channels.pop(channel.arn, None)
            loop = asyncio.get_running_loop()
            for peer in [st.master, *st.viewers.values()]:
                task = loop.create_task(peer.close("storage configuration changed"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def close(self, turn_gone: bool = False) -> None:
        """End every session (their partial fragments are stored), all at once. With
        ``turn_gone`` (the server, and so its coturn, died) the TURN allocations are dropped
        without asking coturn to free them, which would wait ~30 s for an answer each."""
        peers = [
            peer
            for st in self.channels.values()
            for peer in [*st.viewers.values(), *([st.master] if st.master else [])]
        ]
        if turn_gone:
            for peer in peers:
                aiortc_compat.abandon_turn_allocations(peer.pc)
        await asyncio.gather(*(peer.close("Local KVS stopping") for peer in peers))
        self.channels.clear()
