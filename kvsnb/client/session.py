"""Joining a channel's WebRTC storage session as the video-producing master (``MasterSession``)
or as a viewer (``ViewerSession``).

The rule is the official JS SDK's (docs/wire.md, "Storage sessions"; the numbers are in
``JoinPolicy``): the master sequence with JoinStorageSession called only once the signaling
socket is open, candidates that arrive before the offer buffered, retries only for the
errors the SDK retries, and a re-join after every signaling reconnect (GO_AWAY included) and
at the 1 h limit, each on a new peer connection with the same sources (``stop()`` ends
them). Every step lands in ``session.timeline`` (``SessionTimeline``).

Three choices of its own, each written down in the README ("Storage sessions: how kvsnb
joins, retries and reconnects"): the answer names H.264 at a profile the encoder really
produces (with its RTX) and Opus, whatever the offer's order, or a ``SessionError`` names
what was offered; the newest offer is answered (a superseded peer and its candidates are
dropped) and each local candidate trickled once; a STATUS_RESPONSE ends the session only
when it names the answer being connected.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

import av
import numpy as np
import pandas as pd
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from botocore.exceptions import BotoCoreError, ClientError

from kvsnb.client.signaling import SignalingClient, SignalingError, SignalingEvent, SignalingMessage
from kvsnb.client.target import ChannelEndpoints, Target, new_client_id, run_sync
from kvsnb.client.timeline import SessionTimeline
from kvsnb.errors import KvsnbError, reap
from kvsnb.sources.stamp import Stamp, StampError, read_stamp_frame
from kvsnb.sources.tracks import MASTER_VIDEO_BITRATE_BPS
from kvsnb.wire import ice, sdp, webrtc
from kvsnb.wire.webrtc import Role

logger = logging.getLogger(__name__)

VIEWER_CAP_TEXT = "maximum number of viewers"
State = Literal["new", "joining", "connected", "reconnecting", "failed", "closed"]


class SessionError(KvsnbError, RuntimeError):
    """A session could not be joined; ``code`` is the AWS error code when there is one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JoinPolicy:
    """Retry and timeout rules (defaults: the JS SDK's). Tests shorten them."""

    offer_wait_s: float = 6.0
    jitter_base: float = 200.0
    jitter_cap_ms: float = 10_000.0
    # The JS sample's maxAPICallRetriesPerConnectionAttempt = 5, checked as ``retries <= 5``
    # after counting the retry: 1 first call + 6 retries.
    max_calls_per_attempt: int = 7
    connect_timeout_s: float = 30.0
    max_failures: int = 5
    failure_window_s: float = 600.0
    session_max_s: float = 3600.0
    join_timeout_s: float = 10.0
    # kvsnb's own cap on the H.264 encoder: the storage session takes 1 Mbps in all; the
    # receiver's bandwidth estimate (REMB) may otherwise raise aiortc's target to 3 Mbps
    max_video_bitrate_bps: int = MASTER_VIDEO_BITRATE_BPS

    @classmethod
    def local(cls, **changes: Any) -> JoinPolicy:
        """The JS SDK's rules with the waits shortened for a Local KVS on this machine, whose
        offer arrives within milliseconds: a 0.6 s offer wait, a jitter of at most 50 ms, a
        10 s connect timeout. ``changes`` override any field. Against AWS keep the defaults."""
        fields: dict[str, Any] = {
            "offer_wait_s": 0.6,
            "jitter_base": 2.0,
            "jitter_cap_ms": 50.0,
            "connect_timeout_s": 10.0,
        }
        fields.update(changes)
        return cls(**fields)

    def retry_delay(self, n: int, rng: random.Random | None = None) -> float:
        """Seconds to wait for an offer after the n-th call (n ≥ 1) before calling again:
        the JS sample's ``6000 + min(rand·200^(retries−1), 10000)`` ms with ``retries = n−1``
        (the calls made before this one)."""
        r = (rng or random).random()
        jitter_ms = min(r * self.jitter_base ** (n - 2), self.jitter_cap_ms)
        return self.offer_wait_s + jitter_ms / 1000.0


def is_retryable(exc: BaseException) -> bool:
    """Whether the JS SDK would call JoinStorageSession again after this error."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if err.get("Code") == "ClientLimitExceededException":
            return VIEWER_CAP_TEXT not in str(err.get("Message", ""))
        return int(status) >= 500
    return isinstance(exc, BotoCoreError | TimeoutError | OSError | SignalingError)


def _aws_error(exc: ClientError) -> SessionError:
    err = exc.response.get("Error", {})
    return SessionError(f"{err.get('Code')}: {err.get('Message')}", err.get("Code"))


class _InstrumentedTrack(MediaStreamTrack):
    """Wraps a source track: records each frame's send time in the timeline."""

    def __init__(self, source: MediaStreamTrack, on_frame: Callable[[int], None]) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._on_frame = on_frame
        self._count = 0

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self._on_frame(self._count)
        self._count += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


@dataclass
class ReceivedFrame:
    """A video frame received from the storage session, with its receive time and, for
    stamped media, the stamp read back (``None`` otherwise)."""

    received_at: float  # epoch s
    frame: av.VideoFrame
    stamp: Stamp | None


class ReceivedMedia:
    """What a session receives from the storage session: video frames (the last
    ``keep_frames`` kept, with a row per frame in ``rows``) and audio (the last
    ``keep_audio_s`` seconds, mono 48 kHz)."""

    def __init__(self, keep_frames: int = 150, keep_audio_s: float = 30.0) -> None:
        self.frames: deque[ReceivedFrame] = deque(maxlen=keep_frames)
        self.rows: list[tuple[float, int | None, int | None]] = []
        self._audio: deque[np.ndarray] = deque()
        self._audio_len = 0
        self.audio_started_at: float | None = None
        self.keep_audio = int(keep_audio_s * webrtc.OPUS_SAMPLE_RATE)
        self.audio_frames = 0

    async def pump(self, track: MediaStreamTrack) -> None:
        """Read a remote track until it ends."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.time()
                if isinstance(frame, av.VideoFrame):
                    stamp = try_read_stamp_frame(frame)
                    self.frames.append(ReceivedFrame(now, frame, stamp))
                    self.rows.append(
                        (now, stamp.index if stamp else None, stamp.capture_ms if stamp else None)
                    )
                elif isinstance(frame, av.AudioFrame):
                    self._add_audio(frame, now)

    def _add_audio(self, frame: av.AudioFrame, now: float) -> None:
        mono = webrtc.to_mono(frame)
        if self.audio_started_at is None:
            self.audio_started_at = now - frame.samples / webrtc.OPUS_SAMPLE_RATE
        self._audio.append(mono)
        self._audio_len += len(mono)
        self.audio_frames += 1
        while self._audio_len - len(self._audio[0]) > self.keep_audio:
            self._audio_len -= len(self._audio.popleft())

    def audio(self) -> np.ndarray:
        """The audio kept so far, mono int16 at 48 kHz."""
        return np.concatenate(list(self._audio)) if self._audio else np.zeros(0, np.int16)

    def rate(self, window_s: float = 1.0) -> float:
        """Video frames received per second over the last ``window_s`` seconds."""
        now = time.time()
        n = 0
        for received_at, _, _ in reversed(self.rows):
            if now - received_at > window_s:
                break
            n += 1
        return n / window_s

    def latest_frame(self, fmt: str = "rgb24") -> np.ndarray | None:
        """The latest video frame as a numpy array, if any."""
        return self.frames[-1].frame.to_ndarray(format=fmt) if self.frames else None

    def frames_df(self) -> pd.DataFrame:
        """One row per video frame received: receive time, and for stamped media the frame
        index, capture time and capture → receive latency (ms)."""
        df = pd.DataFrame(self.rows, columns=["received_at", "frame_index", "capture_ms"])
        df["latency_ms"] = df["received_at"] * 1000 - df["capture_ms"]
        return df


def try_read_stamp_frame(frame: av.VideoFrame) -> Stamp | None:
    """The stamp of a decoded frame, or ``None`` when it has none."""
    try:
        return read_stamp_frame(frame)
    except StampError:
        return None


def prepare_remote_offer(offer: str) -> str:
    """Make a storage session's offer acceptable to aiortc (explicit bundle-only sections).
    Raises ``SessionError`` (code ``InvalidArgumentException``) when the offer has no H.264
    that kvsnb's encoder produces or no Opus, naming what it offered. No profile is
    relabelled: the answer declares only what is sent."""
    try:
        webrtc.check_offer_codecs(offer)
    except webrtc.CodecError as exc:
        raise SessionError(str(exc), "InvalidArgumentException") from exc
    return sdp.expand_bundle_only(offer)


def candidate_ufrag(payload: dict[str, Any]) -> str | None:
    """The ICE username fragment a candidate payload names (``usernameFragment``, or the
    candidate's ``ufrag`` extension), if any: it ties the candidate to one offer."""
    ufrag = payload.get("usernameFragment")
    if isinstance(ufrag, str) and ufrag:
        return ufrag
    parts = str(payload.get("candidate", "")).split()
    for key, value in itertools.pairwise(parts):
        if key == "ufrag":
            return value
    return None


class StorageSessionBase(abc.ABC):
    """What a master and a viewer in a channel's storage session share: set-up, the join and
    retry loop, the aiortc peer, early-candidate buffering, the timeline and the media
    received (see the module docstring). Use ``MasterSession`` or ``ViewerSession``, with
    ``async with`` or ``await start()`` / ``await stop()``.
    """

    role: Role

    def __init__(
        self,
        target: Target,
        channel: str,
        *,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None = None,
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
    ) -> None:
        self.target = target
        self.channel = channel
        self.client_id = client_id
        self.policy = policy or JoinPolicy()
        self.timeline = SessionTimeline()
        self.state: State = "new"
        self.channel_arn: str | None = None
        self.endpoints: ChannelEndpoints | None = None
        self.pc: RTCPeerConnection | None = None
        self.signaling: SignalingClient | None = None
        self.joins = 0
        self.failures: deque[float] = deque()
        self._video = _InstrumentedTrack(video, self.timeline.frame_sent) if video else None
        self._audio = audio
        self._ice_servers: list[dict[str, Any]] = []
        self._offers: asyncio.Queue[SignalingMessage] = asyncio.Queue()
        self._early_candidates: list[dict[str, Any]] = []
        self._remote_set = False
        self._remote_ufrag: str | None = None  # of the offer the current peer answers
        self._discarded_ufrags: set[str] = set()  # of superseded or stale offers
        self._sent: dict[str, str] = {}  # correlationId → what it was ("answer", "candidate")
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._rejoin = asyncio.Event()
        self._error: BaseException | None = None
        self._state_listeners: list[Callable[[State], None]] = []
        self.status_responses: list[SignalingMessage] = []
        self._answer_id: str | None = None
        self.received = ReceivedMedia()
        self._pumps: set[asyncio.Task[None]] = set()
        self._signaling_lost = False
        self._answer_error: SessionError | None = None

    # ------------------------------------------------------------------ public

    def on_state(self, listener: Callable[[State], None]) -> None:
        """Call ``listener(state)`` on every state change."""
        self._state_listeners.append(listener)

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            for listener in list(self._state_listeners):
                listener(state)

    async def start(self, timeout: float | None = None) -> Self:
        """Set up, join and wait until the peer connection is connected.

        Raises ``SessionError`` when the target refuses (e.g. storage not enabled) or after
        too many failures; ``asyncio.TimeoutError`` after ``timeout`` seconds.
        """
        await self._setup()
        self._runner = asyncio.get_running_loop().create_task(self._run())
        waiter = asyncio.ensure_future(self._connected.wait())
        done, _ = await asyncio.wait(
            {waiter, self._runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            waiter.cancel()
            await self.stop()
            raise TimeoutError(f"{self.role} session not connected after {timeout} s")
        if self._runner in done:
            waiter.cancel()
            exc = self._runner.exception()
            await self.stop()
            raise exc or SessionError("session ended before connecting")
        return self

    async def wait_closed(self) -> None:
        """Wait until the session ends (by ``stop()`` or by giving up)."""
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def stop(self) -> None:
        """Close the peer connection and the signaling socket."""
        self._set_state("closed")
        if self._runner is not None:
            if not self._runner.done():
                self._runner.cancel()
            await reap(self._runner, f"the {self.role.lower()} session's join loop", logger)
        await self._close_pc()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self.signaling is not None:
            await self.signaling.close()
        self.timeline.mark("stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ setup

    async def _aws(self, step: str, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            result = await run_sync(func, *args, **kw)
        except ClientError as exc:
            self.timeline.mark(step, error=exc.response.get("Error", {}).get("Code"))
            raise _aws_error(exc) from exc
        self.timeline.mark(step)
        return result

    async def _setup(self) -> None:
        kv = self.target.kinesisvideo
        if self.channel.startswith("arn:"):
            info = await self._aws(
                "describe_channel", kv.describe_signaling_channel, ChannelARN=self.channel
            )
        else:
            info = await self._aws(
                "describe_channel", kv.describe_signaling_channel, ChannelName=self.channel
            )
        self.channel_arn = str(info["ChannelInfo"]["ChannelARN"])
        conf = await self._aws(
            "describe_media_storage",
            kv.describe_media_storage_configuration,
            ChannelARN=self.channel_arn,
        )
        status = conf["MediaStorageConfiguration"]["Status"]
        if status != "ENABLED":
            raise SessionError(
                f"Channel {self.channel} has media storage {status}: enable it with "
                "UpdateMediaStorageConfiguration (a stream with retention > 0) first.",
                "InvalidArgumentException",
            )
        self.endpoints = await self._aws(
            "get_endpoints", self.target.endpoints, self.channel_arn, self.role
        )
        self._ice_servers = await self._aws(
            "get_ice_config", self.target.ice_servers, self.endpoints, self.client_id
        )
        creds = self.target.credentials()
        self.signaling = SignalingClient(
            self.endpoints.wss,
            self.channel_arn,
            creds,
            self.target.region,
            role=self.role,
            client_id=self.client_id,
        )
        await self.signaling.open()
        self.timeline.mark("socket_open")

    # ------------------------------------------------------------------ join loop

    async def _run(self) -> None:
        assert self.signaling is not None
        reader = asyncio.get_running_loop().create_task(self._read_signaling())
        try:
            while True:
                self._rejoin.clear()
                if self._signaling_lost:
                    self.timeline.mark("session_failed", reason="signaling socket closed for good")
                    self._set_state("failed")
                    raise SessionError(
                        "the signaling socket was closed for good by the server (a newer "
                        f"{self.role.lower()} connection replaced it, or the channel was deleted)"
                    )
                try:
                    await self._attempt()
                except SessionError as exc:
                    self.timeline.mark("session_failed", error=exc.code, reason=str(exc)[:200])
                    raise
                except Exception as exc:
                    if not is_retryable(exc):  # a bug or an error the JS SDK does not retry
                        self.timeline.mark(
                            "session_failed", error=type(exc).__name__, reason=str(exc)[:200]
                        )
                        self._set_state("failed")
                        raise
                    logger.info("%s join attempt failed: %s", self.role, exc)
                    self.timeline.mark("attempt_failed", reason=str(exc)[:200])
                    self._count_failure()
                    continue
                # connected: stay until a re-join is needed
                self._set_state("connected")
                self._connected.set()
                guard = asyncio.get_running_loop().create_task(self._cap_bitrate())
                try:
                    await asyncio.wait_for(self._rejoin.wait(), self.policy.session_max_s)
                except TimeoutError:
                    self.timeline.mark("session_limit")
                finally:
                    guard.cancel()
                self._set_state("reconnecting")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _count_failure(self) -> None:
        now = time.monotonic()
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.policy.failure_window_s:
            self.failures.popleft()
        if len(self.failures) >= self.policy.max_failures:
            self.timeline.mark("gave_up", failures=len(self.failures))
            self._set_state("failed")
            raise SessionError(
                f"gave up after {len(self.failures)} failures within "
                f"{self.policy.failure_window_s:.0f} s"
            )

    async def _attempt(self) -> None:
        """One connection attempt: join (with offer-wait retries), answer the newest offer,
        connect; a newer offer before the peer connects replaces the peer."""
        self._set_state("joining")
        await self._close_pc(keep_tracks=True)
        offer: SignalingMessage | None = self._newest_offer(await self._join_until_offer())
        while offer is not None:
            await self._answer(offer)
            assert self.pc is not None
            offer = await self._connected_or_newer_offer(self.pc)
            if offer is not None:
                offer = self._newest_offer(offer)
                self.timeline.mark("offer_superseded", reason="a newer offer before connecting")
                await self._close_pc(keep_tracks=True)

    def _newest_offer(self, offer: SignalingMessage) -> SignalingMessage:
        """``offer`` or, when more are queued, the newest one (the others are discarded)."""
        while not self._offers.empty():
            self._discard_offer(offer)
            offer = self._offers.get_nowait()
            self.timeline.mark("offer_superseded", reason="a newer offer was queued")
        return offer

    def _discard_offer(self, offer: SignalingMessage) -> None:
        ufrag = sdp.ice_ufrag(str((offer.payload or {}).get("sdp", "")))
        if ufrag:
            self._discarded_ufrags.add(ufrag)

    async def _connected_or_newer_offer(self, pc: RTCPeerConnection) -> SignalingMessage | None:
        """Wait until ``pc`` is connected (``None``) or a newer offer comes first (returned).
        Raises ``TimeoutError`` when neither happens within ``policy.connect_timeout_s``."""
        connect = asyncio.ensure_future(
            asyncio.wait_for(self._wait_connected(pc), self.policy.connect_timeout_s)
        )
        newer = asyncio.ensure_future(self._offers.get())
        try:
            done, _ = await asyncio.wait({connect, newer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (connect, newer):
                if not task.done():
                    task.cancel()
            await asyncio.gather(connect, newer, return_exceptions=True)
        if newer in done and connect not in done:
            return newer.result()
        if newer in done:
            self._offers.put_nowait(newer.result())  # came with the connection: kept
        try:
            connect.result()
        except TimeoutError as exc:
            raise TimeoutError(
                f"peer not connected within {self.policy.connect_timeout_s} s"
            ) from exc
        return None

    async def _join_call(self) -> None:
        assert self.endpoints is not None and self.channel_arn is not None
        client = self.target.client("kinesis-video-webrtc-storage", self.endpoints.webrtc)
        self.joins += 1
        self.timeline.mark("join_call", n=self.joins)
        if self.role == "MASTER":
            await asyncio.wait_for(
                run_sync(client.join_storage_session, channelArn=self.channel_arn),
                self.policy.join_timeout_s,
            )
        else:
            await asyncio.wait_for(
                run_sync(
                    client.join_storage_session_as_viewer,
                    channelArn=self.channel_arn,
                    clientId=self.client_id,
                ),
                self.policy.join_timeout_s,
            )
        self.timeline.mark("join_response", n=self.joins)

    async def _join_until_offer(self) -> SignalingMessage:
        while not self._offers.empty():  # stale offers from an earlier attempt
            self._discard_offer(self._offers.get_nowait())
            self.timeline.mark("offer_discarded", reason="from an earlier attempt")
        for n in range(1, self.policy.max_calls_per_attempt + 1):
            try:
                await self._join_call()
            except ClientError as exc:
                self.timeline.mark("join_error", code=exc.response.get("Error", {}).get("Code"))
                if not is_retryable(exc):
                    raise _aws_error(exc) from exc
            except Exception as exc:
                self.timeline.mark("join_error", error=type(exc).__name__)
                if not is_retryable(exc):
                    raise
            wait = self.policy.retry_delay(n)
            try:
                offer = await asyncio.wait_for(self._offers.get(), wait)
            except TimeoutError:
                self.timeline.mark("offer_timeout", n=n, waited_s=round(wait, 3))
                continue
            self.timeline.mark("offer_received", n=n)
            return offer
        raise TimeoutError(f"no offer after {self.policy.max_calls_per_attempt} join calls")

    # ------------------------------------------------------------------ WebRTC

    @abc.abstractmethod
    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        """Give the offer's transceivers their directions and our tracks (per role)."""

    def _attach_audio(self, transceiver: Any) -> None:
        """Send our audio if we have some (and hear the storage session's mix either way)."""
        if self._audio is not None:
            transceiver.sender.replaceTrack(self._audio)
            transceiver.direction = "sendrecv"
        else:
            transceiver.direction = "recvonly"

    async def _answer(self, offer: SignalingMessage) -> None:
        assert self.signaling is not None and offer.payload is not None
        offered = str(offer.payload.get("sdp", ""))
        try:
            text = prepare_remote_offer(offered)
        except SessionError as exc:
            self.timeline.mark("offer_refused", error=exc.code, description=str(exc))
            self._set_state("failed")
            raise
        pc = RTCPeerConnection(self.target.rtc_configuration(self._ice_servers))
        self.pc = pc
        self._remote_set = False
        self._remote_ufrag = sdp.ice_ufrag(offered)
        pc.on("connectionstatechange", lambda: self._on_pc_state(pc))
        pc.on("track", self._on_remote_track)
        # As the JS SDK: codec preferences on each transceiver, H.264 and Opus only. aiortc
        # negotiates codecs in setRemoteDescription, so the transceivers (one per m-section,
        # in the offer's order) get their preferences before it.
        for kind, _, _ in sdp.directions(text):
            transceiver = pc.addTransceiver(kind, direction="inactive")
            transceiver.setCodecPreferences(webrtc.storage_codec_preferences(kind))
        await pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
        self._remote_set = True
        early, self._early_candidates = self._early_candidates, []
        applied = 0
        for cand in early:
            ufrag = candidate_ufrag(cand)
            if ufrag is None or ufrag == self._remote_ufrag:
                await self._add_candidate(cand)
                applied += 1
            elif ufrag in self._discarded_ufrags:
                self.timeline.mark("candidate_discarded", reason="of a discarded offer")
            else:
                self._early_candidates.append(cand)  # for an offer still to come
        self.timeline.mark("candidates_buffered", count=applied)
        self._attach_tracks(pc)
        with ice.host_addresses(self.target.ice_host_addresses):
            await pc.setLocalDescription(await pc.createAnswer())
        answer, candidates = sdp.split_candidates(pc.localDescription.sdp)
        self._answer_id = await self.signaling.send("SDP_ANSWER", {"type": "answer", "sdp": answer})
        self._sent[self._answer_id] = "answer"
        self._answer_error = None
        self.timeline.mark(
            "answer_sent",
            video=", ".join(c.describe() for c in sdp.codecs(answer, "video")),
            audio=", ".join(c.describe() for c in sdp.codecs(answer, "audio")),
        )
        for c in sdp.bundled_candidates(candidates, answer):
            sent = await self.signaling.send("ICE_CANDIDATE", webrtc.candidate_to_payload(c))
            self._sent[sent] = "candidate"

    async def _cap_bitrate(self) -> None:
        """Keep the video encoder's target at or below ``policy.max_video_bitrate_bps``.

        aiortc raises the target on the receiver's REMB and offers no public cap, so this
        sets the sender's encoder (created on the first frame) every half second."""
        cap = self.policy.max_video_bitrate_bps
        while True:
            pc = self.pc
            for sender in pc.getSenders() if pc is not None else []:
                encoder: Any = getattr(sender, "_RTCRtpSender__encoder", None)
                if sender.kind == "video" and encoder is not None:
                    if getattr(encoder, "target_bitrate", 0) > cap:
                        encoder.target_bitrate = cap
            await asyncio.sleep(0.5)

    async def stats(self) -> dict[str, dict[str, int]]:
        """What the peer connection sent and received so far, per kind: ``bytes_sent``,
        ``packets_sent``, ``bytes_received``, ``packets_received`` (from RTCStats)."""
        out: dict[str, dict[str, int]] = {}
        if self.pc is None:
            return out
        report = await self.pc.getStats()
        for stat in report.values():
            kind = getattr(stat, "kind", None)
            if kind is None:
                continue
            entry = out.setdefault(
                kind,
                {"bytes_sent": 0, "packets_sent": 0, "bytes_received": 0, "packets_received": 0},
            )
            if stat.type == "outbound-rtp":
                entry["bytes_sent"] += int(stat.bytesSent)
                entry["packets_sent"] += int(stat.packetsSent)
            elif stat.type == "inbound-rtp":
                entry["bytes_received"] += int(getattr(stat, "bytesReceived", 0))
                entry["packets_received"] += int(stat.packetsReceived)
        return out

    def _on_remote_track(self, track: MediaStreamTrack) -> None:
        """Remote media from the storage session: kept by ``self.received``."""
        task = asyncio.get_running_loop().create_task(self.received.pump(track))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _add_candidate(self, payload: dict[str, Any]) -> None:
        assert self.pc is not None
        mids = [t.mid for t in self.pc.getTransceivers()]
        try:
            cand = webrtc.candidate_from_payload(payload, mids)
        except webrtc.CandidateError as exc:
            logger.warning("ignoring a candidate from the storage session: %s", exc)
            self.timeline.mark("bad_candidate", detail=str(exc))
            return
        if cand is not None:
            await self.pc.addIceCandidate(cand)

    def _on_pc_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self.pc:
            return
        ice_state = pc.iceConnectionState
        if ice_state in ("connected", "completed") and not self.timeline.first("ice_connected"):
            self.timeline.mark("ice_connected")
        state = pc.connectionState
        self.timeline.mark("pc_state", state=state)
        if state == "connected":
            self.timeline.mark("dtls_connected")
        elif state in ("failed", "closed") and self.state == "connected":
            self._rejoin.set()

    async def _wait_connected(self, pc: RTCPeerConnection) -> None:
        while pc.connectionState != "connected":
            if self._answer_error is not None:
                raise self._answer_error
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {pc.connectionState}")
            await asyncio.sleep(0.01)

    async def _close_pc(self, *, keep_tracks: bool = False) -> None:
        """Close the peer connection. With ``keep_tracks`` the sources stay live for the
        next one (a re-join): aiortc stops a sender's track when the sender stops."""
        if self.pc is not None:
            pc, self.pc = self.pc, None
            if keep_tracks:
                for transceiver in pc.getTransceivers():
                    transceiver.sender.replaceTrack(None)
            if self._remote_ufrag:
                self._discarded_ufrags.add(self._remote_ufrag)
            self._remote_ufrag = None
            self._remote_set = False
            if self._answer_id is not None:
                self._sent[self._answer_id] = "superseded answer"
            self._answer_id = None
            await pc.close()

    # ------------------------------------------------------------------ signaling

    async def _read_signaling(self) -> None:
        assert self.signaling is not None
        async for event in self.signaling.events():
            await self._on_signaling(event)

    async def _on_signaling(self, event: SignalingEvent) -> None:
        if event.kind == "open":
            return  # marked by _setup, when open() returned
        if event.kind == "closed":
            if self.state != "closed":
                self.timeline.mark("socket_closed")
                self._signaling_lost = True
                self._rejoin.set()
            return
        if event.kind == "reconnected":
            self.timeline.mark("socket_reconnected")
            if self.state == "connected":
                self._rejoin.set()  # the JS SDK re-joins after every signaling reconnect
            return
        msg = event.message
        if msg is None:
            return
        if msg.type == "SDP_OFFER" and msg.payload is not None:
            await self._offers.put(msg)
        elif msg.type == "ICE_CANDIDATE" and msg.payload is not None:
            ufrag = candidate_ufrag(msg.payload)
            if ufrag is not None and ufrag in self._discarded_ufrags:
                self.timeline.mark("candidate_discarded", reason="of a discarded offer")
            elif (
                self.pc is None
                or not self._remote_set
                or (ufrag is not None and ufrag != self._remote_ufrag)
            ):
                self._early_candidates.append(msg.payload)
            else:
                try:
                    await self._add_candidate(msg.payload)
                except Exception as exc:
                    logger.info("ignoring unusable remote candidate: %s", exc)
                    self.timeline.mark("bad_candidate", detail=str(exc)[:200])
        elif msg.type == "GO_AWAY":
            self.timeline.mark("go_away")
        elif msg.type == "RECONNECT_ICE_SERVER":
            self.timeline.mark("reconnect_ice_server")
        elif msg.type == "STATUS_RESPONSE":
            self.status_responses.append(msg)
            cid = msg.status.correlation_id if msg.status is not None else None
            about = self._sent.get(cid or "", "unknown")
            if msg.status is not None and cid is not None and cid == self._answer_id:
                # the storage session refused the answer of the offer being connected:
                # retrying would send the same one, so the session ends (the JS sample stops
                # on any error; a superseded answer's or a candidate's is only recorded)
                self._answer_error = SessionError(
                    f"answer refused: {msg.status.error_type}: {msg.status.description}",
                    msg.status.error_type,
                )
            self.timeline.mark(
                "status_response",
                error=msg.status.error_type if msg.status else None,
                status=msg.status.status_code if msg.status else None,
                description=msg.status.description if msg.status else None,
                about=about,
                fatal=self._answer_error is not None and about == "answer",
            )


class MasterSession(StorageSessionBase):
    """A master in a channel's storage session: joins with JoinStorageSession and sends
    ``video`` (required: H.264 is what the storage session takes) and ``audio`` (``None``
    only where the service accepts video alone)."""

    role: Role = "MASTER"

    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                if self._video is None:
                    raise SessionError("a master must send video")
                transceiver.sender.replaceTrack(self._video)
                transceiver.direction = "sendonly"
            elif transceiver.kind == "audio":
                self._attach_audio(transceiver)


"""The master's earlier name, kept for code written against kvsnb 0.1."""


class ViewerSession(StorageSessionBase):
    """A viewer in a channel's storage session (JoinStorageSessionAsViewer).

    It receives the master's video and audio from the storage session (never peer to peer)
    in ``received`` (frames as numpy on demand, per-frame receive times, so stamped media
    gives master → viewer latency) and may send audio (``audio``), never video. The same
    join, retry and timeline machinery as the master's.
    """

    role: Role = "VIEWER"

    def __init__(
        self,
        target: Target,
        channel: str,
        *,
        client_id: str | None = None,
        audio: MediaStreamTrack | None = None,
        policy: JoinPolicy | None = None,
    ) -> None:
        super().__init__(
            target,
            channel,
            video=None,
            audio=audio,
            client_id=client_id or new_client_id("viewer"),
            policy=policy,
        )

    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.direction = "recvonly"  # a viewer never sends video
            elif transceiver.kind == "audio":
                self._attach_audio(transceiver)
