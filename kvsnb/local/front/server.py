"""Local KVS: one aiohttp application on 127.0.0.1 that serves every KVS plane on one port.

Requests are routed by plane prefix (``/signaling``, ``/webrtc``, ``/archived-media``,
``/stream-media``; anything else is the control plane), and the control plane returns those
endpoints, so boto3 clients and the AWS CLI work with ``endpoint_url`` as they do against AWS (the
table is in docs/design.md, "Local KVS"). With ``tls=True`` every plane is served over TLS
on the same port (``https://`` and ``wss://`` endpoints; certificate from ``front/tls.py``);
every plane answers CORS (``front/cors.py``). ``LocalKvs`` runs in the caller's event loop
(``await start()``), on its own event-loop thread (``start_in_thread()``, what notebooks and
tests use), or as ``kvsnb local``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web

from kvsnb.local.archive.clip import ClipPlane
from kvsnb.local.archive.dash import DashPlane
from kvsnb.local.archive.hls import HlsPlane
from kvsnb.local.archive.images import ImagesPlane
from kvsnb.local.archive.plane import ArchivePlane
from kvsnb.local.control.plane import MAX_STORAGE_CHANNELS, ControlPlane, Endpoints
from kvsnb.local.core import protocol
from kvsnb.local.core.errors import (
    AwsError,
    InvalidArgumentException,
    NotImplementedByLocalKvs,
    ResourceNotFoundException,
    UnknownOperationException,
)
from kvsnb.local.core.responses import RawResponse
from kvsnb.local.front import cors
from kvsnb.local.front.sigv4 import SigV4Checker, StrictKeys
from kvsnb.local.front.tls import TlsFiles, local_ca_files, user_files
from kvsnb.local.media.plane import MediaPlane
from kvsnb.local.signaling.relay import Role, SignalingLimits, SignalingRelay
from kvsnb.local.signaling.rest import SignalingRestPlane
from kvsnb.local.storage.peer import StorageOptions, StorageSessionManager
from kvsnb.local.storage.plane import StoragePlane
from kvsnb.local.storage.workers import StorageWorkerPool
from kvsnb.local.store.fragments import FragmentStore
from kvsnb.local.turn.credentials import TTL_S
from kvsnb.local.turn.server import NO_COTURN, TurnEndpoint, TurnServer, coturn_binary
from kvsnb.wire.defaults import DEFAULT_REGION, LOOPBACK

logger = logging.getLogger(__name__)

DEFAULT_HOST = LOOPBACK
PLANE_PREFIXES = (
    ("/signaling", "signaling"),
    ("/webrtc", "webrtc"),
    ("/archived-media", "archived-media"),
    ("/stream-media", "stream-media"),
)
PLANE_SERVICE = {plane: name for name, plane in protocol.SERVICES.items()}
MAX_BODY_BYTES = 8 * 1024 * 1024
# A request handler still running this long after the planes closed is cancelled at stop
# (aiohttp waits 60 s by default; a long-lived response must not hold Local KVS's exit).
SHUTDOWN_TIMEOUT_S = 5.0
ADMIN_PREFIX = "/_localkvs/"
CA_PATH = ADMIN_PREFIX + "ca.pem"
ROLE_PATHS: dict[str, Role] = {"/master": "MASTER", "/viewer": "VIEWER"}
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
T = TypeVar("T")


def operation_method(name: str) -> str:
    """``CreateSignalingChannel`` → ``create_signaling_channel``."""
    return _SNAKE.sub("_", name).lower()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """End a stopped loop as ``asyncio.run`` does: cancel the tasks still pending (such as a
    closed peer connection's DTLS reader) and let them unwind for up to
    ``SHUTDOWN_TIMEOUT_S``, then finish async generators and close it. Closing it with
    tasks pending would destroy their coroutines mid-flight (``GeneratorExit``)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT_S))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@dataclass
class LocalKvsConfig:
    """How a Local KVS runs. Durations are configurable so tests can shorten them."""

    host: str = DEFAULT_HOST
    port: int = 0
    data_dir: Path | None = None
    region: str = DEFAULT_REGION
    account: str = "000000000000"
    strict_keys: StrictKeys | None = None
    signaling: SignalingLimits = field(default_factory=SignalingLimits)
    # > 0: storage sessions run in that many worker processes, plus a join worker that takes
    # new joins while the others carry media
    storage_workers: int = 0
    tls: bool = False  # serve https/wss (a local CA in data_dir/tls unless cert/key given)
    tls_cert: Path | None = None  # the user's certificate (chain), PEM; implies tls
    tls_key: Path | None = None  # its private key, PEM
    # The base URL browsers reach this Local KVS at (a proxy path such as jupyter-server-
    # proxy's ``/proxy/{port}``, absolute or root-relative; ``{port}`` is the bound port):
    # every endpoint and session URL Local KVS returns starts with it. None: ``url``.
    public_url: str | None = None
    # How peers reach storage sessions: "turn" (as AWS: only through the TURN server, coturn,
    # a child process; GetIceServerConfig hands out its credentials) or "host" (directly on
    # loopback host candidates, with an empty IceServerList). Without coturn installed,
    # "turn" falls back to "host" and says so once.
    ice: Literal["turn", "host"] = "turn"
    turn_ttl_s: int = TTL_S  # the Ttl of TURN credentials (AWS: 300 s)
    # At most this many signaling channels with media storage enabled (AWS: 100 per account)
    max_storage_channels: int = MAX_STORAGE_CHANNELS
    # For tests only: Local KVS's clock runs this many seconds ahead of the machine's (behind
    # when negative). Strict SigV4 checks request times against it and every response's
    # ``Date`` header tells it, so a client's clock-skew correction can be tested.
    clock_offset_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def split_plane(path: str) -> tuple[str, str]:
    """Which plane a request path is for, and the path within that plane."""
    for prefix, plane in PLANE_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return plane, path[len(prefix) :] or "/"
    return "control", path


class LocalKvs:
    """A Local KVS server: control plane, signaling, webrtc-storage, media and archived media.

    ``url`` is the control-plane endpoint once started. The data directory holds everything
    stored; with none given a temporary one is made and removed on ``stop()``.
    """

    def __init__(self, config: LocalKvsConfig | None = None, **kwargs: Any) -> None:
        self.config = config or LocalKvsConfig(**kwargs)
        self._own_dir: Path | None = None
        if self.config.data_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="kvsnb-local-"))
            self.config.data_dir = self._own_dir
        self.data_dir = Path(self.config.data_dir)
        self.checker = SigV4Checker(self.config.strict_keys, clock=self.now)
        self.planes: dict[str, Any] = {}
        self.control: ControlPlane | None = None
        self.relay: SignalingRelay | None = None
        self.store: Any = None  # kvsnb.local.store.fragments.FragmentStore, once started
        self.sessions: Any = None  # kvsnb.local.storage.peer.StorageSessionManager, once started
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.tls: TlsFiles | None = None  # the TLS files served with, once started in TLS mode
        self.turn: TurnServer | None = None  # coturn, once started (ice="turn")

    # ------------------------------------------------------------------ lifecycle

    def now(self) -> dt.datetime:
        """Local KVS's clock: the machine's, ``config.clock_offset_s`` ahead (tests only)."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.config.clock_offset_s)

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response's ``Date`` is Local KVS's clock (clients correct skew from it)."""
        if self.config.clock_offset_s:
            when = time.time() + self.config.clock_offset_s
            response.headers["Date"] = formatdate(when, usegmt=True)

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._site_port is None:
            raise RuntimeError("Local KVS is not started")
        return self._site_port

    @property
    def scheme(self) -> str:
        """``https`` in TLS mode, else ``http``."""
        cfg = self.config
        tls = cfg.tls or cfg.tls_cert is not None or cfg.tls_key is not None
        return "https" if tls else "http"

    @property
    def url(self) -> str:
        """The control-plane endpoint, ``http://HOST:PORT`` (``https://`` in TLS mode)."""
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The local CA's certificate clients trust (TLS mode with the local CA only)."""
        return self.tls.ca if self.tls is not None else None

    @property
    def public_url(self) -> str:
        """The base of every endpoint and session URL returned (``config.public_url`` with
        the port filled in, else ``url``)."""
        if self.config.public_url is None:
            return self.url
        return self.config.public_url.format(port=self.port).rstrip("/")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop Local KVS runs on."""
        if self._loop is None:
            raise RuntimeError("Local KVS is not started")
        return self._loop

    async def start(self) -> LocalKvs:
        """Bind, build every plane and serve in the running event loop."""
        self._loop = asyncio.get_running_loop()
        ssl_context = None
        if self.scheme == "https":
            self.tls = await asyncio.to_thread(self._tls_files)
            ssl_context = self.tls.server_context()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        cors.install(app)
        app.on_response_prepare.append(self._date_header)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=ssl_context
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "the site did not bind"
        self._site_port = int(sockets[0].getsockname()[1])
        endpoints = Endpoints(self.public_url)
        self.control = ControlPlane(
            self.data_dir,
            endpoints,
            region=self.config.region,
            account=self.config.account,
            max_storage_channels=self.config.max_storage_channels,
        )
        self.relay = SignalingRelay(self.control, self._authorize_ws, self.config.signaling)
        self.planes = {"control": self.control}
        await self._start_turn()
        await build_planes(self)  # the data planes build on the control plane
        logger.info(
            "Local KVS serving at %s, reached at %s (data: %s)",
            self.url,
            self.public_url,
            self.data_dir,
        )
        return self

    @property
    def turn_endpoint(self) -> TurnEndpoint | None:
        """Where the TURN server is, when sessions go through TURN (``ice="turn"``)."""
        return self.turn.endpoint if self.turn is not None else None

    async def _start_turn(self) -> None:
        if self.config.ice != "turn":
            return
        if coturn_binary() is None:
            logger.warning(NO_COTURN)
            return
        files = self.tls
        if files is None:  # not in TLS mode: turns: still needs a certificate
            files = await asyncio.to_thread(local_ca_files, self.data_dir, self.config.host)
        self.turn = TurnServer(
            self.data_dir,
            cert=files.cert,
            key=files.key,
            ttl=self.config.turn_ttl_s,
        )
        await self.turn.start()

    def _tls_files(self) -> TlsFiles:
        cfg = self.config
        if cfg.tls_cert is not None or cfg.tls_key is not None:
            if cfg.tls_cert is None or cfg.tls_key is None:
                raise ValueError("tls_cert and tls_key go together: give both or neither")
            return user_files(cfg.tls_cert, cfg.tls_key)
        return local_ca_files(self.data_dir, cfg.host)

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when Local KVS stops (planes register their shutdown)."""
        self._closers.append(closer)

    async def stop(self) -> None:
        """Stop taking connections, then close every connection and session, stop serving
        and close the databases. A client that reconnects at once (a master's signaling
        socket does) cannot open a new connection once the planes are closing: it would
        hold the stop for as long as the connection lives."""
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                logger.exception("error while stopping a plane")
        self._closers.clear()
        if self.relay is not None:
            await self.relay.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.turn is not None:
            await self.turn.stop()
            self.turn = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def start_in_thread(self) -> LocalKvs:
        """Start on a new event-loop thread of its own; returns once serving."""
        started: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            _close_loop(loop)

        self._thread = threading.Thread(target=run, name="local-kvs", daemon=True)
        self._thread.start()
        started.result(timeout=30)
        return self

    def call(self, coro: Awaitable[T], timeout: float | None = 30) -> T:
        """Run a coroutine on Local KVS's loop from another thread and wait for it."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def stop_in_thread(self) -> None:
        """Stop a Local KVS started with ``start_in_thread`` and join its thread."""
        if self._thread is None:
            return
        self.call(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> LocalKvs:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_in_thread()

    async def __aenter__(self) -> LocalKvs:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ admin

    async def _admin(self, request: web.Request, action: str) -> web.StreamResponse:
        """Local KVS's own controls (not AWS APIs), signed like any request:
        ``POST /_localkvs/go-away`` and ``/_localkvs/reconnect-ice-server``, each with an
        optional ``ChannelARN`` query parameter (all channels otherwise); ``go-away`` takes
        ``GraceSeconds`` (default: the configured grace)."""
        await self._authorize(request, await request.read())
        assert self.relay is not None and self.control is not None
        arn = request.query.get("ChannelARN") or None
        if arn is not None:
            self.control.channel(arn=arn)  # ResourceNotFoundException for an unknown channel
        if action == "go-away":
            grace = request.query.get("GraceSeconds")
            try:
                grace_s = float(grace) if grace else None
            except ValueError:
                raise InvalidArgumentException("GraceSeconds must be a number") from None
            told = await self.relay.go_away(arn, grace_s)
        elif action == "reconnect-ice-server":
            told = await self.relay.reconnect_ice_server(arn)
        else:
            raise UnknownOperationException(f"No Local KVS control at {request.path}")
        return web.json_response({"connections": told})

    def _ca_response(self) -> web.Response:
        """``GET /_localkvs/ca.pem``: the local CA's certificate (public, so unsigned), for
        clients on this machine to trust; 404 when Local KVS has none."""
        ca = self.ca_file
        if ca is None:
            raise ResourceNotFoundException(
                "This Local KVS has no local CA (not in TLS mode, "
                "or serving a user-supplied certificate)"
            )
        return web.Response(body=ca.read_bytes(), content_type="application/x-pem-file")

    # ------------------------------------------------------------------ requests

    async def _authorize(self, request: web.Request, body: bytes) -> None:
        self.checker.check_request(
            method=request.method,
            url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers=dict(request.headers),
            body=body,
        )

    async def _authorize_ws(self, request: web.Request) -> None:
        self.checker.check_presigned(
            method=request.method,
            url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers=dict(request.headers),
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        plane, path = split_plane(request.path)
        service = protocol.service_model(PLANE_SERVICE[plane])
        try:
            return await self._handle(request, plane, path)
        except AwsError as err:
            status, headers, body = protocol.error_body(service, err)
            return web.Response(status=status, headers=headers, body=body)
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("internal error in %s %s", request.method, request.path)
            internal = AwsError("Local KVS hit an internal error; see its log.", status=500)
            status, headers, body = protocol.error_body(service, internal)
            return web.Response(status=status, headers=headers, body=body)

    async def _handle(self, request: web.Request, plane: str, path: str) -> web.StreamResponse:
        if request.method == "GET":
            get_handler = getattr(self.planes.get(plane), "handle_get", None)
            if plane == "signaling":
                sub = path.rstrip("/")
                if sub in ("", "/master", "/viewer"):
                    assert self.relay is not None
                    role = ROLE_PATHS.get(sub)
                    return await self.relay.handle(request, role)
            if get_handler is not None:
                response: web.StreamResponse = await get_handler(request, path)
                return response
            if plane == "control" and path in ("/", "/_localkvs/health"):
                return web.json_response({"status": "ok", "service": "Local KVS"})
            if plane == "control" and path == CA_PATH:
                return self._ca_response()
        if request.method == "POST" and plane == "control" and path.startswith(ADMIN_PREFIX):
            return await self._admin(request, path[len(ADMIN_PREFIX) :])
        if request.method != "POST":
            raise UnknownOperationException(f"No KVS operation at {request.method} {request.path}")
        streaming = getattr(self.planes.get(plane), "streaming_routes", {}).get(path)
        if streaming is not None:  # PutMedia / GetMedia: bodies and answers that stream
            streamed: web.StreamResponse = await streaming(request, self._authorize)
            return streamed
        route = protocol.routes().get((plane, path))
        if route is None:
            raise UnknownOperationException(f"No KVS operation at POST {request.path}")
        body = await request.read()
        await self._authorize(request, body)
        backend = self.planes.get(plane)
        method = getattr(backend, operation_method(route.name), None)
        if method is None:
            raise NotImplementedByLocalKvs(
                f"Local KVS does not implement {route.name}; see the coverage table in the README."
            )
        params = protocol.parse_input(route, body)
        result = method(params)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, RawResponse):
            return web.Response(
                status=result.status,
                body=result.body,
                headers={"Content-Type": result.content_type, **result.headers},
            )
        payload = protocol.serialize_output(route.operation.output_shape, result)
        return web.json_response(payload)


class CompositePlane:
    """One plane served by several objects: an operation is looked up on each part in turn,
    a GET goes to the part whose ``GET_PREFIX`` starts the path."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def part(self, kind: type[T]) -> T:
        """The part of type ``kind`` (``LookupError`` if there is none)."""
        for part in self.parts:
            if isinstance(part, kind):
                return part
        raise LookupError(f"no {kind.__name__} in this plane")

    async def handle_get(self, request: web.Request, path: str) -> web.StreamResponse:
        """Route a GET to the part serving that path (UnknownOperationException otherwise)."""
        for part in self.parts:
            prefix = getattr(part, "GET_PREFIX", None)
            if prefix is not None and path.startswith(prefix):
                response: web.StreamResponse = await part.handle_get(request, path)
                return response
        raise UnknownOperationException(f"No KVS resource at GET {request.path}")

    def __getattr__(self, name: str) -> Any:
        for part in self.parts:
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)


async def build_planes(kvs: LocalKvs) -> None:
    """Create the signaling REST, webrtc-storage, media and archived-media planes of ``kvs``.

    ``kvs.config.extra["storage"]`` may hold a ``StorageOptions`` and ``extra["media"]`` a
    ``MediaOptions``; with ``kvs.config.storage_workers`` > 0 the storage sessions run in
    that many worker processes (``workers``).
    """
    control, relay = kvs.control, kvs.relay
    assert control is not None and relay is not None
    store = await asyncio.to_thread(FragmentStore, kvs.data_dir)
    options = dataclasses.replace(
        kvs.config.extra.get("storage") or StorageOptions(), turn=kvs.turn_endpoint
    )
    sessions: StorageSessionManager | StorageWorkerPool
    if kvs.config.storage_workers > 0:
        sessions = StorageWorkerPool(relay, store, options, kvs.config.storage_workers)
        await sessions.start()
    else:
        sessions = StorageSessionManager(relay, store, options)
    relay.storage = sessions
    control.events.storage_changed.append(sessions.on_storage_changed)
    control.events.stream_deleted.append(lambda st: store.delete_stream(st.arn))
    kvs.store = store
    kvs.sessions = sessions
    kvs.planes["signaling"] = SignalingRestPlane(control, kvs.turn_endpoint)
    kvs.planes["webrtc"] = StoragePlane(control, sessions)
    kvs.planes["archived-media"] = CompositePlane(
        ArchivePlane(control, store),
        HlsPlane(control, store, control.endpoints),
        DashPlane(control, store, control.endpoints),
        ImagesPlane(control, store),
        ClipPlane(control, store),
    )
    media = MediaPlane(control, store, kvs.config.extra.get("media"))
    kvs.planes["stream-media"] = media

    async def close() -> None:
        await media.close()
        await sessions.close()
        store.close()

    kvs.on_stop(close)
