"""Where KVS is: AWS, or Local KVS (embedded, or already running at a URL).

This is the only module of the client half that knows the difference (docs/design.md, principle 5).
Everything else asks a ``Target`` for boto3 clients, credentials for presigning, and the
ICE settings, and then speaks the same wire protocol to either.

A target is AWS (``aws_target``), a KVS endpoint at a URL (``endpoint_target``), or a Local
KVS started in this process (``embedded_target``); ``kvsnb.connect()`` (``kvsnb.launch``)
chooses among them, from its arguments and ``KVSNB_TARGET``/``KVSNB_ENDPOINT_URL``.

TLS: ``connect(tls=True)`` serves the embedded Local KVS over https/wss with its local CA;
for an ``https://`` endpoint the CA is ``ca_bundle=``, else (on a loopback address) the
local CA that Local KVS serves at ``/_localkvs/ca.pem``. The target verifies every
connection with it: boto3 (``verify=``), and the signaling WebSocket and HLS fetches
through ``kvsnb.client.trust``. Otherwise the usual trust applies (the system's CAs; boto3 also
reads ``AWS_CA_BUNDLE``).
Reached through a proxy: a Local KVS may be given the public base URL browsers reach it at
(``public_url``, ``KVSNB_PUBLIC_URL``, ``kvsnb local --public-url``), and then every endpoint
and HLS/DASH session URL it returns starts with it, so a player or the JS SDK in the browser
can use them. An embedded Local KVS started by a kernel of a Jupyter server that has
jupyter-server-proxy gets ``<server base_url>proxy/{port}`` (root-relative) by itself
(``KVSNB_PUBLIC_URL=none`` turns that off). The target itself keeps talking to Local KVS
directly: ``direct_url`` maps a public URL back, and endpoints are mapped before boto3 sees
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import ssl
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

if TYPE_CHECKING:
    from aiortc import RTCConfiguration
from kvsnb.client import trust
from kvsnb.client.clock import SigningClock
from kvsnb.errors import KvsnbError
from kvsnb.wire.defaults import DEFAULT_REGION, LOOPBACK
from kvsnb.wire.webrtc import Role

logger = logging.getLogger(__name__)

ENV_TARGET = "KVSNB_TARGET"
ENV_ENDPOINT = "KVSNB_ENDPOINT_URL"
ENV_REGION = "KVSNB_REGION"
LOCAL_CA_PATH = "/_localkvs/ca.pem"
ENV_PUBLIC_URL = "KVSNB_PUBLIC_URL"
LOCAL_ACCESS_KEY = "KVSNBLOCAL"
LOCAL_SECRET_KEY = "kvsnb-local-secret"
DEFAULT_RETENTION_HOURS = 24

EndpointProtocol = Literal["WSS", "HTTPS", "WEBRTC"]


class TargetError(KvsnbError, RuntimeError):
    """The target cannot be reached or is misconfigured."""


@dataclass(frozen=True)
class ChannelEndpoints:
    """The endpoints of one channel for one role, as GetSignalingChannelEndpoint gave them."""

    channel_arn: str
    role: Role
    urls: dict[str, str]

    @property
    def wss(self) -> str:
        """The signaling WebSocket endpoint."""
        return self.urls["WSS"]

    @property
    def https(self) -> str:
        """The signaling REST endpoint (GetIceServerConfig)."""
        return self.urls["HTTPS"]

    @property
    def webrtc(self) -> str:
        """The webrtc-storage endpoint (JoinStorageSession[AsViewer])."""
        return self.urls["WEBRTC"]


@dataclass
class Target:
    """A KVS target: boto3 clients per plane, credentials and ICE settings.

    Use ``connect()`` to make one. ``close()`` stops an embedded Local KVS.
    """

    name: str
    region: str
    session: boto3.Session
    endpoint_url: str | None = None
    local: Any = None  # the embedded kvsnb.local.LocalKvs, if any
    ice_host_addresses: tuple[str, ...] | None = None
    add_aws_stun: bool = True
    ca_bundle: str | None = None  # the CA file connections are verified with (None: system's)
    _own_ca_file: str | None = field(default=None, repr=False)  # a fetched CA, removed on close
    public_url: str | None = None  # the base browsers reach Local KVS at, if not endpoint_url
    # the time requests are signed at, corrected after a clock-skew refusal (kvsnb.client.clock)
    clock: SigningClock = field(default_factory=SigningClock)
    _clients: dict[tuple[str, str | None], Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        where = self.endpoint_url or f"AWS {self.region}"
        return f"<kvsnb.Target {self.name}: {where}>"

    # ------------------------------------------------------------------ clients

    def client(self, service: str, endpoint_url: str | None = None) -> Any:
        """A boto3 client for a KVS plane. Data planes need the ``endpoint_url`` that the
        control plane returned (GetSignalingChannelEndpoint / GetDataEndpoint).

        It signs at ``clock``'s time and, refused for a skewed clock, corrects ``clock`` from
        the response's ``Date`` and retries once (the JS SDK's ``correctClockSkew``)."""
        url = endpoint_url if endpoint_url is not None else self.endpoint_url
        key = (service, url)
        if key not in self._clients:
            client = self.session.client(  # type: ignore[call-overload]
                service,
                region_name=self.region,
                endpoint_url=url,
                verify=self.ca_bundle,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
            self.clock.attach(client)
            self._clients[key] = client
        return self._clients[key]

    @property
    def kinesisvideo(self) -> Any:
        """The control-plane client."""
        return self.client("kinesisvideo")

    def credentials(self) -> ReadOnlyCredentials:
        """Frozen credentials, e.g. for presigning the signaling WebSocket URL."""
        creds = self.session.get_credentials()
        if creds is None:
            raise TargetError(
                "No AWS credentials found (boto3 credential chain). Configure them, or use "
                "Local KVS (unset KVSNB_TARGET)."
            )
        return creds.get_frozen_credentials()

    def direct_url(self, url: str, *, websocket: bool = False) -> str:
        """A URL Local KVS returned (an endpoint, an HLS/DASH session URL), as this process
        reaches it: a public-URL prefix is swapped for ``endpoint_url`` (``ws`` scheme for a
        WebSocket endpoint). Other URLs (AWS's) are returned unchanged."""
        if self.public_url is None or self.endpoint_url is None:
            return url
        direct = self.endpoint_url
        pairs = [(self.public_url, direct)]
        if self.public_url.startswith("http"):
            pairs.append(("ws" + self.public_url[4:], "ws" + direct[4:]))
        elif websocket:
            pairs = [(self.public_url, "ws" + direct[4:])]
        for public, local in pairs:
            if url == public or url.startswith(public + "/") or url.startswith(public + "?"):
                return local + url[len(public) :]
        return url

    def public(self, url: str) -> str:
        """The inverse of ``direct_url``: a URL of this target as a browser reaches it."""
        if self.public_url is None or self.endpoint_url is None:
            return url
        if url.startswith(self.endpoint_url):
            return self.public_url + url[len(self.endpoint_url) :]
        return url

    # ------------------------------------------------------------------ discovery

    def channel_arn(self, channel: str) -> str:
        """The ARN of a channel given by name or ARN (DescribeSignalingChannel)."""
        if channel.startswith("arn:"):
            return channel
        info = self.kinesisvideo.describe_signaling_channel(ChannelName=channel)
        return str(info["ChannelInfo"]["ChannelARN"])

    def endpoints(
        self,
        channel_arn: str,
        role: Role,
        protocols: Sequence[EndpointProtocol] = ("WSS", "HTTPS", "WEBRTC"),
    ) -> ChannelEndpoints:
        """GetSignalingChannelEndpoint for a role."""
        resp = self.kinesisvideo.get_signaling_channel_endpoint(
            ChannelARN=channel_arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": list(protocols), "Role": role},
        )
        urls = {
            e["Protocol"]: self.direct_url(e["ResourceEndpoint"], websocket=e["Protocol"] == "WSS")
            for e in resp["ResourceEndpointList"]
        }
        return ChannelEndpoints(channel_arn, role, urls)

    def data_endpoint(self, stream: str, api: str) -> str:
        """GetDataEndpoint for a stream (name or ARN) and API name."""
        key = {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}
        endpoint = self.kinesisvideo.get_data_endpoint(APIName=api, **key)["DataEndpoint"]
        return self.direct_url(str(endpoint))

    def ice_servers(
        self, endpoints: ChannelEndpoints, client_id: str | None
    ) -> list[dict[str, Any]]:
        """GetIceServerConfig, plus KVS's STUN server on AWS (as the SDKs add it)."""
        client = self.client("kinesis-video-signaling", endpoints.https)
        args: dict[str, Any] = {"ChannelARN": endpoints.channel_arn, "Service": "TURN"}
        if client_id:
            args["ClientId"] = client_id
        servers: list[dict[str, Any]] = list(client.get_ice_server_config(**args)["IceServerList"])
        if self.add_aws_stun:
            servers.insert(0, {"Uris": [f"stun:stun.kinesisvideo.{self.region}.amazonaws.com:443"]})
        return servers

    def rtc_configuration(
        self, ice_servers: Sequence[dict[str, Any]], *, force_turn: bool = False
    ) -> RTCConfiguration:
        """An aiortc configuration from an IceServerList (never aiortc's default servers);
        ``force_turn``: relay candidates only (the SDK samples' "force TURN")."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

        return RTCConfiguration(
            iceServers=[
                RTCIceServer(
                    urls=list(s["Uris"]), username=s.get("Username"), credential=s.get("Password")
                )
                for s in ice_servers
            ],
            iceTransportPolicy=(
                RTCIceTransportPolicy.RELAY if force_turn else RTCIceTransportPolicy.ALL
            ),
        )

    # ------------------------------------------------------------------ set-up helpers

    def create_storage_channel(
        self,
        name: str,
        *,
        stream_name: str | None = None,
        retention_hours: int = DEFAULT_RETENTION_HOURS,
    ) -> tuple[str, str]:
        """Make (or reuse) a channel and a stream of the same name and map them for media
        storage. Returns ``(channel_arn, stream_arn)``."""
        kv = self.kinesisvideo
        stream_name = stream_name or name
        try:
            channel_arn = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
        except kv.exceptions.ResourceInUseException:
            channel_arn = self.channel_arn(name)
        try:
            stream_arn = kv.create_stream(
                StreamName=stream_name,
                DataRetentionInHours=retention_hours,
                MediaType="video/h264,audio/aac",
            )["StreamARN"]
        except kv.exceptions.ResourceInUseException:
            stream_arn = kv.describe_stream(StreamName=stream_name)["StreamInfo"]["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=channel_arn,
            MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
        )
        return str(channel_arn), str(stream_arn)

    def close(self) -> None:
        """Stop the embedded Local KVS, if this target started one (and stop trusting its
        CA)."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        if self.local is not None:
            trust.forget(self.local.url)
            self.local.stop_in_thread()
            self.local = None
        if self._own_ca_file is not None:
            if self.endpoint_url and trust.ca_file(self.endpoint_url) == self._own_ca_file:
                trust.forget(self.endpoint_url)
            with contextlib.suppress(OSError):
                os.unlink(self._own_ca_file)
            self._own_ca_file = None

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_session(region: str) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name=region,
    )


def aws_target(region: str | None = None, profile: str | None = None) -> Target:
    """AWS itself, with boto3's credential chain (``profile`` if given) and region."""
    session = boto3.Session(profile_name=profile, region_name=region)
    return Target("aws", session.region_name or DEFAULT_REGION, session, add_aws_stun=True)


def endpoint_target(
    endpoint_url: str,
    *,
    region: str | None = None,
    profile: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    public_url: str | None = None,
) -> Target:
    """A Local KVS (or anything else speaking KVS) already running at ``endpoint_url``.

    With no credentials in boto3's chain, Local KVS's own keys are used. An ``https://``
    endpoint is verified with ``ca_bundle``, else (on loopback) with the local CA that Local
    KVS serves; ``public_url`` must be the one the Local KVS was started with."""
    region = region or DEFAULT_REGION
    session = boto3.Session(profile_name=profile, region_name=region)
    if session.get_credentials() is None:
        session = _local_session(region)
    endpoint_url = endpoint_url.rstrip("/")
    ca = os.fspath(ca_bundle) if ca_bundle else None
    fetched = None
    if ca is None and endpoint_url.startswith("https://") and _is_loopback(endpoint_url):
        ca = fetched = _fetch_local_ca(endpoint_url)
    if ca and endpoint_url.startswith("https://"):
        trust.trust_ca(endpoint_url, ca)
    return Target(
        "endpoint",
        region,
        session,
        endpoint_url=endpoint_url,
        ice_host_addresses=(LOOPBACK,) if _is_loopback(endpoint_url) else None,
        add_aws_stun=False,
        ca_bundle=ca,
        _own_ca_file=fetched,
        public_url=public_url_setting(public_url, None),
    )


def embedded_target(local: Any, region: str, *, public_url: str | None) -> Target:
    """The target of a Local KVS started in this process (``local`` has ``url``,
    ``ca_file`` and ``stop_in_thread()``); closing the target stops it."""
    ca = str(local.ca_file) if local.ca_file is not None else None
    if ca:
        trust.trust_ca(local.url, ca)
    return Target(
        "local",
        region,
        _local_session(region),
        endpoint_url=local.url,
        local=local,
        ice_host_addresses=(LOOPBACK,),
        add_aws_stun=False,
        ca_bundle=ca,
        public_url=public_url,
    )


def _fetch_local_ca(endpoint_url: str) -> str | None:
    """The local CA of the Local KVS at a loopback ``https://`` endpoint, saved to a
    temporary file; ``None`` when it has none (a user-supplied certificate: the system's
    CAs or ``AWS_CA_BUNDLE`` then apply). The CA is public, so it is fetched without
    verification (this machine's own loopback); every connection after that verifies
    against it."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            endpoint_url + LOCAL_CA_PATH, timeout=10, context=insecure
        ) as resp:
            pem = bytes(resp.read(1 << 16))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise TargetError(f"cannot get the local CA from {endpoint_url}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot reach {endpoint_url}: {exc}") from exc
    if b"BEGIN CERTIFICATE" not in pem:
        raise TargetError(f"{endpoint_url}{LOCAL_CA_PATH} did not return a PEM certificate")
    fd, path = tempfile.mkstemp(prefix="kvsnb-local-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def public_url_setting(given: str | None, detected: str | None) -> str | None:
    """The public base URL: given, else ``KVSNB_PUBLIC_URL`` (``none``: no public URL),
    else what was detected."""
    if given is not None:
        return given.rstrip("/") or None
    env = os.environ.get(ENV_PUBLIC_URL)
    if env is not None:
        return None if env.strip().lower() in ("", "none") else env.strip().rstrip("/")
    return detected


def jupyter_proxy_base() -> str | None:
    """``<base_url>proxy/{port}`` when this process is a kernel of a running Jupyter server
    (its ``JPY_PARENT_PID``) that has jupyter-server-proxy; else None (a kernel run by nbval
    or nbclient has no server, a browser could not reach it anyway)."""
    parent = os.environ.get("JPY_PARENT_PID")
    if not parent or importlib.util.find_spec("jupyter_server_proxy") is None:
        return None
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    for info in list_running_servers():
        if str(info.get("pid")) == parent:
            base = str(info.get("base_url") or "/")
            return f"{base if base.endswith('/') else base + '/'}proxy/{{port}}"
    return None


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def new_client_id(prefix: str = "kvsnb") -> str:
    """A fresh ClientId ([a-zA-Z0-9_.-], as the API requires)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def run_sync(func: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking boto3 call off the event loop."""
    return await asyncio.to_thread(func, *args, **kwargs)
