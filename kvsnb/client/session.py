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

Each job has its module: the remote candidates per offer in ``kvsnb.client.candidates``,
the offers and what was sent back in ``kvsnb.client.offers``, the media received in
``kvsnb.client.received``; the join call and the tracks per role in ``MasterSession`` and
``ViewerSession``. The session waits on events (aiortc's ``connectionstatechange``, the
signaling messages), never polls.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from botocore.exceptions import BotoCoreError, ClientError

from kvsnb.client.candidates import CandidateBuffer, candidate_ufrag
from kvsnb.client.connectivity import (
    TURN_REQUIRED,
    candidate_kinds,
    explain_failure,
    turn_uris,
)
from kvsnb.client.offers import OfferBook
from kvsnb.client.received import ReceivedFrame, ReceivedMedia, try_read_stamp_frame
from kvsnb.client.signaling import SignalingClient, SignalingError, SignalingEvent, SignalingMessage
from kvsnb.client.target import ChannelEndpoints, Target, new_client_id, run_sync
from kvsnb.client.timeline import SessionTimeline
from kvsnb.errors import KvsnbError, reap
from kvsnb.sources.tracks import MASTER_VIDEO_BITRATE_BPS, RealtimeH264Encoder
from kvsnb.wire import aiortc_compat, ice, sdp, webrtc
from kvsnb.wire.webrtc import Role

__all__ = [
    "JoinPolicy",
    "MasterSession",
    "ReceivedFrame",
    "ReceivedMedia",
    "SessionError",
    "State",
    "StorageSessionBase",
    "ViewerSession",
    "candidate_ufrag",
    "is_retryable",
    "prepare_remote_offer",
    "try_read_stamp_frame",
]

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


class _PeerTrack(MediaStreamTrack):
    """One peer connection's handle on a session's source. aiortc stops a sender's track
    when the connection ends, also when the storage session ends it (its 1 h limit); only
    this handle ends then, and the source goes on to the next peer connection (the re-join).
    The session's ``stop()`` stops the sources."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source

    async def recv(self) -> Any:
        return await self._source.recv()


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


class _Connecting:
    """How one peer connection's attempt to connect ends: ``outcome`` resolves when aiortc
    fires ``connectionstatechange`` with "connected", and fails on "failed"/"closed" or when
    a STATUS_RESPONSE refuses the peer's answer (whichever comes first)."""

    def __init__(self) -> None:
        self.outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # retrieved here, so an outcome nobody waits for any more logs no warning
        self.outcome.add_done_callback(lambda f: f.cancelled() or f.exception())

    def connected(self) -> None:
        """The peer connected (first outcome wins)."""
        if not self.outcome.done():
            self.outcome.set_result(None)

    def failed(self, exc: BaseException) -> None:
        """The peer will not connect (first outcome wins)."""
        if not self.outcome.done():
            self.outcome.set_exception(exc)


class StorageSessionBase(abc.ABC):
    """What a master and a viewer in a channel's storage session share: set-up, the join and
    retry loop, the aiortc peer, the timeline and the media received (see the module
    docstring). Use ``MasterSession`` or ``ViewerSession``, with ``async with`` or
    ``await start()`` / ``await stop()``.

    ``candidates`` (``CandidateBuffer``) holds the remote candidates and the ufrag of the
    offer being connected; ``offers`` (``OfferBook``) the offers received and what was sent
    back; ``closed`` is True once ``stop()`` has finished.
    """

    role: Role

    def __init__(
        self,
        target: Target,
        channel: str,
        *,
        audio: MediaStreamTrack | None = None,
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
        force_turn: bool = False,
        ice_servers: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.force_turn = force_turn
        self._given_ice_servers = list(ice_servers) if ice_servers is not None else None
        self._ice_fetched_at = 0.0
        self._local_kinds: list[str] = []
        self._remote_kinds: list[str] = []
        self._remote_ips: set[str] = set()  # remote candidates'; relay permissions opened for each
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
        self.status_responses: list[SignalingMessage] = []
        self.received = ReceivedMedia()
        self.candidates = CandidateBuffer()
        self.offers = OfferBook(self.timeline, self.candidates)
        self._audio = audio
        self._ice_servers: list[dict[str, Any]] = []
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._rejoin = asyncio.Event()
        self._closed = asyncio.Event()
        self._connecting: _Connecting | None = None  # of the current peer
        self._state_listeners: list[Callable[[State], None]] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self._signaling_lost = False
        self._peer_ended = False  # the connected peer connection ended (not by us)
        self._video_at_connect = 0  # video frames received before the last connect

    # ------------------------------------------------------------------ public

    @property
    def closed(self) -> bool:
        """True once ``stop()`` has finished: peer, media pumps and signaling socket closed."""
        return self._closed.is_set()

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
        for source in self._sources():
            source.stop()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self.signaling is not None:
            await self.signaling.close()
        self.timeline.mark("stopped")
        self._closed.set()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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

    def _sources(self) -> list[MediaStreamTrack]:
        """The tracks this session sends (stopped by ``stop()``)."""
        return [self._audio] if self._audio is not None else []

    def _ended_for_good(self) -> str | None:
        """Why a connected session that lost its peer connection must not join again
        (``None``: it joins again)."""
        return None

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
        await self._load_ice_servers()
        creds = self.target.credentials()
        self.signaling = SignalingClient(
            self.endpoints.wss,
            self.channel_arn,
            creds,
            self.target.region,
            role=self.role,
            client_id=self.client_id,
            clock=self.target.clock,
        )
        await self.signaling.open()
        self.timeline.mark("socket_open")

    async def _load_ice_servers(self, *, refresh: bool = False) -> None:
        """The ICE servers of the next peer connection: those given, else GetIceServerConfig's
        (fetched again once their credentials near their Ttl, as the SDKs refresh them)."""
        if self._given_ice_servers is not None:
            self._ice_servers = self._given_ice_servers
            self.timeline.mark("ice_servers_given", turn=len(turn_uris(self._ice_servers)))
        else:
            self._ice_servers = await self._aws(
                "get_ice_config", self.target.ice_servers, self.endpoints, self.client_id
            )
            self._ice_fetched_at = time.monotonic()
            if refresh:
                self.timeline.mark("ice_config_refreshed")
        if self.force_turn and not turn_uris(self._ice_servers):
            self._set_state("failed")
            raise SessionError(
                f"force_turn needs a TURN server and this target's IceServerList has none. "
                f"{TURN_REQUIRED} (against Local KVS: install coturn, and run it with TURN, "
                "the default)"
            )

    async def _refresh_stale_ice_servers(self) -> None:
        """Before a new peer connection: GetIceServerConfig again if the credentials held
        are near their Ttl (an expired name is refused for a new allocation)."""
        if self._ice_servers_stale():
            await self._load_ice_servers(refresh=True)

    async def _apply_early_candidates(self) -> None:
        """Once the offer is the remote description: the storage session's candidates that
        came before it (those of a discarded offer are dropped and marked)."""
        early, dropped = self.candidates.remote_set()
        for _ in range(dropped):
            self.timeline.mark("candidate_discarded", reason="of a discarded offer")
        for cand in early:
            await self._add_candidate(cand)
        self.timeline.mark("candidates_buffered", count=len(early))

    def _mark_answer_sent(self, answer: str) -> None:
        """The answer's codecs, in the timeline."""
        self.timeline.mark(
            "answer_sent",
            video=", ".join(c.describe() for c in sdp.codecs(answer, "video")),
            audio=", ".join(c.describe() for c in sdp.codecs(answer, "audio")),
        )

    def _ice_servers_stale(self) -> bool:
        """Whether the TURN credentials fetched are near their Ttl (refreshed before use)."""
        if self._given_ice_servers is not None:
            return False
        ttls = [float(s["Ttl"]) for s in self._ice_servers if s.get("Ttl")]
        if not ttls:
            return False
        ttl = min(ttls)
        return time.monotonic() - self._ice_fetched_at >= ttl - min(30.0, ttl / 2)

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
                self._peer_ended = False
                self._video_at_connect = len(self.received.rows)
                try:
                    await asyncio.wait_for(self._rejoin.wait(), self.policy.session_max_s)
                except TimeoutError:
                    self.timeline.mark("session_limit")
                reason = self._ended_for_good()
                if reason is not None:
                    self.timeline.mark("session_failed", reason=reason[:200])
                    self._set_state("failed")
                    raise SessionError(reason)
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
        offer: SignalingMessage | None = self.offers.newest(await self._join_until_offer())
        while offer is not None:
            await self._answer(offer)
            assert self.pc is not None
            offer = await self._connected_or_newer_offer(self.pc)
            if offer is not None:
                offer = self.offers.newest(offer)
                self.timeline.mark("offer_superseded", reason="a newer offer before connecting")
                await self._close_pc(keep_tracks=True)

    async def _connected_or_newer_offer(self, pc: RTCPeerConnection) -> SignalingMessage | None:
        """Wait until ``pc`` is connected (``None``) or a newer offer comes first (returned).
        Raises ``TimeoutError`` when neither happens within ``policy.connect_timeout_s``."""
        connect = asyncio.ensure_future(
            asyncio.wait_for(self._wait_connected(pc), self.policy.connect_timeout_s)
        )
        newer = asyncio.ensure_future(self.offers.get())
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
            self.offers.put_back(newer.result())  # came with the connection: kept
        try:
            connect.result()
        except (TimeoutError, ConnectionError) as exc:
            self._explain_ice_failure(exc)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"peer not connected within {self.policy.connect_timeout_s} s"
                ) from exc
            raise
        return None

    def _explain_ice_failure(self, exc: BaseException) -> None:
        """A peer that never connected: when the cause is the missing relay path (the storage
        session takes media only through TURN), end the session saying so."""
        why = explain_failure(self._local_kinds, self._remote_kinds, self._ice_servers)
        if why is None:
            return
        self.timeline.mark(
            "ice_failed",
            reason="no relay candidate",
            local=", ".join(self._local_kinds),
            remote=", ".join(self._remote_kinds),
        )
        self._set_state("failed")
        raise SessionError(why, "TurnRequired") from exc

    @abc.abstractmethod
    async def _join(self, client: Any) -> None:
        """Call this role's join API (JoinStorageSession[AsViewer]) with ``client``."""

    async def _join_call(self) -> None:
        assert self.endpoints is not None and self.channel_arn is not None
        client = self.target.client("kinesis-video-webrtc-storage", self.endpoints.webrtc)
        self.joins += 1
        self.timeline.mark("join_call", n=self.joins)
        await asyncio.wait_for(self._join(client), self.policy.join_timeout_s)
        self.timeline.mark("join_response", n=self.joins)

    async def _join_until_offer(self) -> SignalingMessage:
        self.offers.drop_stale()  # offers of an earlier attempt
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
                offer = await asyncio.wait_for(self.offers.get(), wait)
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
            transceiver.sender.replaceTrack(_PeerTrack(self._audio))
            transceiver.direction = "sendrecv"
        else:
            transceiver.direction = "recvonly"

    async def _answer(self, offer: SignalingMessage) -> None:
        assert self.signaling is not None and offer.payload is not None
        offered = self.offers.answering(offer)
        try:
            text = prepare_remote_offer(offered)
        except SessionError as exc:
            self.timeline.mark("offer_refused", error=exc.code, description=str(exc))
            self._set_state("failed")
            raise
        await self._refresh_stale_ice_servers()
        pc = RTCPeerConnection(
            self.target.rtc_configuration(self._ice_servers, force_turn=self.force_turn)
        )
        self.pc = pc
        self._remote_kinds = []
        self._remote_ips = set()
        self._connecting = _Connecting()
        self.candidates.answering(sdp.ice_ufrag(offered))
        pc.on("connectionstatechange", lambda: self._on_pc_state(pc))
        pc.on("track", self._on_remote_track)
        # As the JS SDK: codec preferences on each transceiver, H.264 and Opus only. aiortc
        # negotiates codecs in setRemoteDescription, so the transceivers (one per m-section,
        # in the offer's order) get their preferences before it.
        for kind, _, _ in sdp.directions(text):
            transceiver = pc.addTransceiver(kind, direction="inactive")
            transceiver.setCodecPreferences(webrtc.storage_codec_preferences(kind))
        await pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
        await self._apply_early_candidates()
        self._attach_tracks(pc)
        with ice.host_addresses(self.target.ice_host_addresses):
            await pc.setLocalDescription(await pc.createAnswer())
        # the TURN allocations are there now: the storage session's checks, which start
        # when the answer reaches it, get through from the first (open_relay_permissions)
        aiortc_compat.open_relay_permissions(pc, self._remote_ips)
        answer, candidates = sdp.split_candidates(pc.localDescription.sdp)
        self._local_kinds = candidate_kinds(c.candidate for c in candidates)
        self.timeline.mark(
            "ice_candidates",
            local=", ".join(self._local_kinds) or "none",
            remote=", ".join(self._remote_kinds) or "none yet",
        )
        answer_id = await self.signaling.send("SDP_ANSWER", {"type": "answer", "sdp": answer})
        self.offers.answer_sent(answer_id)
        self._mark_answer_sent(answer)
        for c in sdp.bundled_candidates(candidates, answer):
            sent = await self.signaling.send("ICE_CANDIDATE", webrtc.candidate_to_payload(c))
            self.offers.sent(sent, "candidate")

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
            kind = f"{cand.type}/{cand.protocol.lower()}"
            if kind not in self._remote_kinds:
                self._remote_kinds.append(kind)
            await self.pc.addIceCandidate(cand)
            if cand.ip not in self._remote_ips:
                self._remote_ips.add(cand.ip)
                if self.pc.localDescription is not None:  # else opened once it is set
                    aiortc_compat.open_relay_permissions(self.pc, [cand.ip])

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
            pair = aiortc_compat.selected_pair(pc)
            if pair is not None:
                local, remote = pair
                self.timeline.mark(
                    "ice_selected_pair",
                    local=f"{local.type}/{local.transport}",
                    remote=f"{remote.type}/{remote.transport}",
                    turn=self._turn_used() if local.type == "relay" else None,
                )
            if self._connecting is not None:
                self._connecting.connected()
        elif state in ("failed", "closed"):
            if self._connecting is not None:
                self._connecting.failed(ConnectionError(f"peer connection {state}"))
            if self.state == "connected":
                self._peer_ended = True  # the storage session (or the network) ended it
                self._rejoin.set()

    def _turn_used(self) -> str | None:
        """The TURN URI aiortc allocates with: its first ``turn:`` (udp/tcp) or
        ``turns:…?transport=tcp`` (TLS) URI."""
        for uri in turn_uris(self._ice_servers):
            transport = uri.partition("?transport=")[2] or "udp"
            if uri.startswith("turn:") or transport == "tcp":
                return uri
        return None

    async def _wait_connected(self, pc: RTCPeerConnection) -> None:
        """Until ``pc`` is connected (aiortc's ``connectionstatechange``); raises when it
        fails or closes first, or when the storage session refuses its answer."""
        if pc.connectionState == "connected":
            return
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"peer connection {pc.connectionState}")
        if pc is not self.pc or self._connecting is None:
            raise ConnectionError("peer connection replaced before it connected")
        await asyncio.shield(self._connecting.outcome)

    async def _close_pc(self, *, keep_tracks: bool = False) -> None:
        """Close the peer connection. With ``keep_tracks`` the sources stay live for the
        next one (a re-join): aiortc stops a sender's track when the sender stops."""
        if self.pc is not None:
            pc, self.pc = self.pc, None
            if keep_tracks:
                for transceiver in pc.getTransceivers():
                    transceiver.sender.replaceTrack(None)
            self.candidates.peer_closed()
            self.offers.supersede_answer()
            if self._connecting is not None:
                self._connecting.failed(ConnectionError("peer connection closed"))
                self._connecting = None
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
            self.offers.put(msg)
        elif msg.type == "ICE_CANDIDATE" and msg.payload is not None:
            route = self.candidates.route(msg.payload)
            if route == "discard":
                self.timeline.mark("candidate_discarded", reason="of a discarded offer")
            elif route == "add" and self.pc is not None:
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
            about = self.offers.about(cid)
            fatal = msg.status is not None and self.offers.is_current_answer(cid)
            if fatal and msg.status is not None and self._connecting is not None:
                # the storage session refused the answer of the offer being connected:
                # retrying would send the same one, so the session ends (the JS sample stops
                # on any error; a superseded answer's or a candidate's is only recorded)
                self._connecting.failed(
                    SessionError(
                        f"answer refused: {msg.status.error_type}: {msg.status.description}",
                        msg.status.error_type,
                    )
                )
            self.timeline.mark(
                "status_response",
                error=msg.status.error_type if msg.status else None,
                status=msg.status.status_code if msg.status else None,
                description=msg.status.description if msg.status else None,
                about=about,
                fatal=fatal,
            )


class MasterSession(StorageSessionBase):
    """A master in a channel's storage session: joins with JoinStorageSession and sends
    ``video`` (required: H.264 is what the storage session takes; a ``SessionError`` at once
    without it) and ``audio`` (``None`` only where the service accepts video alone).

    The H.264 encoder's target stays at or below ``policy.max_video_bitrate_bps``: aiortc
    raises it on the receiver's bandwidth estimate (REMB) and has no public cap, so each
    frame handed to the sender, and each RTCP packet it gets, lowers it again
    (``kvsnb.wire.aiortc_compat``).
    """

    role: Role = "MASTER"

    def __init__(
        self,
        target: Target,
        channel: str,
        *,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None = None,
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
        force_turn: bool = False,
        ice_servers: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if video is None or getattr(video, "kind", None) != "video":
            got = "None" if video is None else f"a {getattr(video, 'kind', '?')} track"
            raise SessionError(
                f"a master must send video, got {got}: pass video= a video MediaStreamTrack "
                "(e.g. kvsnb.sources.TestPatternTrack(), a camera track, or the .video of "
                "a kvsnb.sources.FileSource of a file with video); the storage session "
                "records the master's H.264 video",
                "InvalidArgumentException",
            )
        super().__init__(
            target,
            channel,
            audio=audio,
            client_id=client_id,
            policy=policy,
            force_turn=force_turn,
            ice_servers=ice_servers,
        )
        self._video = _InstrumentedTrack(video, self._on_video_frame)
        self._video_sender: RTCRtpSender | None = None
        self._video_transceiver: RTCRtpTransceiver | None = None

    async def _join(self, client: Any) -> None:
        await run_sync(client.join_storage_session, channelArn=self.channel_arn)

    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(_PeerTrack(self._video))
                transceiver.direction = "sendonly"
                self._video_sender = transceiver.sender
                self._video_transceiver = transceiver
                aiortc_compat.after_rtcp(transceiver.sender, lambda _: self._cap_bitrate())
            elif transceiver.kind == "audio":
                self._attach_audio(transceiver)

    def _sources(self) -> list[MediaStreamTrack]:
        return [self._video, *super()._sources()]

    def _on_video_frame(self, n: int) -> None:
        """A video frame goes to the sender: timed, and the encoder kept within the cap. A
        sender without an encoder yet (its first frame, a re-join's too) gets a
        ``RealtimeH264Encoder`` for H.264 before aiortc makes its own."""
        self.timeline.frame_sent(n)
        sender, transceiver = self._video_sender, self._video_transceiver
        if sender is not None and aiortc_compat.sender_encoder(sender) is None:
            if (aiortc_compat.sent_codec(transceiver) or "").lower() == "video/h264":
                aiortc_compat.use_encoder(sender, RealtimeH264Encoder())
        self._cap_bitrate()

    def _cap_bitrate(self) -> None:
        sender = self._video_sender
        if sender is not None:
            aiortc_compat.cap_encoder_bitrate(sender, self.policy.max_video_bitrate_bps)


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
        force_turn: bool = False,
        ice_servers: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            target,
            channel,
            audio=audio,
            client_id=client_id or new_client_id("viewer"),
            policy=policy,
            force_turn=force_turn,
            ice_servers=ice_servers,
        )

    def _ended_for_good(self) -> str | None:
        """The storage session ended a viewer's connection that no master video reached:
        AWS ends a viewer's session after at most 3 minutes without a master; joining again
        would only wait again, so the viewer ends (``failed``)."""
        if self._peer_ended and len(self.received.rows) == self._video_at_connect:
            return (
                "the storage session ended this viewer's session with no master video: a "
                "viewer waits at most 3 minutes for a master (AWS); join again once a "
                "master is in"
            )
        return None

    async def _join(self, client: Any) -> None:
        await run_sync(
            client.join_storage_session_as_viewer,
            channelArn=self.channel_arn,
            clientId=self.client_id,
        )

    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.direction = "recvonly"  # a viewer never sends video
            elif transceiver.kind == "audio":
                self._attach_audio(transceiver)
