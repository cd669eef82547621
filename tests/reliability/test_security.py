"""Security faults: SigV4 in strict mode (wrong secret, unknown key, tampered body, expired
presigned URL), expired HLS session tokens, and HLS URLs that try to leave the data
directory (``..``, percent-encoded ``%2e%2e%2f``, absolute paths, in FragmentNumber,
SessionToken, TrackNumber or any path segment). Each is refused with an AWS-style 4xx, and
an audit hook shows that Local KVS opened no file outside its data directory meanwhile."""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import http.client
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.auth
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from yarl import URL

from kvsnb.client.ingest import ingest
from kvsnb.client.signaling import presign_url
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, StrictKeys
from kvsnb.local.archive.hls import HlsPlane
from tests.conftest import (
    FAST,
    make_client,
    start_kvs,
    stored_frame_count,
    wait_until,
    wait_until_sync,
)
from tests.reliability.conftest import RawResponse, healthy, signed_post

pytestmark = pytest.mark.timeout(90)

KEY = "AKIASTRICTRELIABLE01"
SECRET = "strict-secret/for+reliability"
CANARY = "canary-outside-the-data-dir-7f3a"


# ---------------------------------------------------------------------------- SigV4 strict


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[LocalKvs]:
    server = start_kvs(tmp_path / "strict", strict_keys=StrictKeys(KEY, SECRET))
    yield server
    server.stop_in_thread()


def test_strict_mode_rejects_bad_signatures(strict: LocalKvs) -> None:
    good = make_client(
        "kinesisvideo", strict.url, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    arn = good.create_signaling_channel(ChannelName="strict")["ChannelARN"]
    cases = [
        ({"aws_access_key_id": KEY, "aws_secret_access_key": "wrong"}, "InvalidSignatureException"),
        (
            {"aws_access_key_id": "AKIAUNKNOWNKEY000000", "aws_secret_access_key": SECRET},
            "UnrecognizedClientException",
        ),
    ]
    for creds, code in cases:
        bad = make_client("kinesisvideo", strict.url, **creds)
        with pytest.raises(ClientError) as err:
            bad.describe_signaling_channel(ChannelARN=arn)
        response: Any = err.value.response
        assert response["Error"]["Code"] == code
        assert 400 <= response["ResponseMetadata"]["HTTPStatusCode"] < 500
    # A body changed after signing.
    url = f"{strict.url}/describeSignalingChannel"
    body = json.dumps({"ChannelARN": arn}).encode()
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    botocore.auth.SigV4Auth(Credentials(KEY, SECRET), "kinesisvideo", "us-west-2").add_auth(request)
    from tests.reliability.conftest import http

    tampered = http("POST", url, body.replace(b"strict", b"strixt"), dict(request.headers))
    assert tampered.status == 403 and tampered.error_code == "InvalidSignatureException"
    # The same request untouched passes; the channel was never changed by the others.
    assert http("POST", url, body, dict(request.headers)).status == 200
    assert signed_post(url, body).error_code == "UnrecognizedClientException"


async def test_strict_mode_rejects_expired_and_forged_presigned_urls(
    strict: LocalKvs, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = make_client(
        "kinesisvideo", strict.url, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    arn = good.create_signaling_channel(ChannelName="presigned")["ChannelARN"]
    wss = good.get_signaling_channel_endpoint(
        ChannelARN=arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS"], "Role": "MASTER"},
    )["ResourceEndpointList"][0]["ResourceEndpoint"]
    # Signed ten minutes ago with X-Amz-Expires=299: expired.
    then = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: then)
    request = AWSRequest(method="GET", url=f"{wss}/?X-Amz-ChannelARN={quote(arn, safe='')}")
    SigV4QueryAuth(Credentials(KEY, SECRET), "kinesisvideo", "us-west-2", 299).add_auth(request)
    expired = str(request.url)
    monkeypatch.undo()
    fresh = presign_url(wss, arn, Credentials(KEY, SECRET), "us-west-2")
    wrong = presign_url(wss, arn, Credentials(KEY, "not-the-secret"), "us-west-2")
    async with aiohttp.ClientSession() as session:
        for url, code in (
            (expired, "InvalidSignatureException"),
            (wrong, "InvalidSignatureException"),
            (fresh.replace("X-Amz-Expires=299", "X-Amz-Expires=300"), "InvalidSignature"),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(URL(url, encoded=True))
            assert err.value.status == 403, url
            assert err.value.headers is not None
            assert err.value.headers["x-amzn-ErrorType"].startswith(code)
        ws = await session.ws_connect(URL(fresh, encoded=True))
        assert not ws.closed
        await ws.close()
    assert strict.relay is not None
    relay = strict.relay
    await wait_until(  # the accepted socket unregisters soon after its close
        lambda: not relay.connections(), "the closed socket is unregistered"
    )


# ---------------------------------------------------------------------------- HLS


@dataclass
class Hls:
    kvs: LocalKvs
    base: str  # .../archived-media/hls/v1
    token: str
    plane: HlsPlane
    data_dir: Path
    canary: Path


@pytest.fixture(scope="module")
def hls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hls]:
    root = tmp_path_factory.mktemp("sec")
    canary = root / "secret.txt"
    canary.write_text(CANARY)
    kvs = start_kvs(root / "data")
    try:
        with connect(endpoint_url=kvs.url) as tg:
            _, arn = tg.create_storage_channel("sec")
            result = asyncio.run(ingest(tg, "sec", seconds=1.2, policy=FAST, width=320, height=240))
        sent = len(result.frames_sent)
        wait_until_sync(lambda: stored_frame_count(kvs, arn) >= sent, "every frame is stored")
        kv = make_client("kinesisvideo", kvs.url)
        ep = kv.get_data_endpoint(StreamARN=arn, APIName="GET_HLS_STREAMING_SESSION_URL")
        am = make_client("kinesis-video-archived-media", ep["DataEndpoint"])
        now = dt.datetime.now(dt.UTC)
        url = am.get_hls_streaming_session_url(
            StreamARN=arn,
            PlaybackMode="ON_DEMAND",
            HLSFragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {
                    "StartTimestamp": now - dt.timedelta(minutes=5),
                    "EndTimestamp": now,
                },
            },
            Expires=300,
        )["HLSStreamingSessionURL"]
        plane = next(p for p in kvs.planes["archived-media"].parts if isinstance(p, HlsPlane))
        yield Hls(
            kvs,
            url.rsplit("/", 1)[0],
            url.split("SessionToken=", 1)[1],
            plane,
            kvs.data_dir.resolve(),
            canary,
        )
    finally:
        kvs.stop_in_thread()


def raw_get(base_url: str, path_and_query: str) -> RawResponse:
    """GET with the request target sent exactly as given (no client-side normalization)."""
    parts = urlsplit(base_url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path_and_query, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class OpenWatch:
    """inotify (Linux, via ctypes) on some directories and files: which names anyone, in
    any process and from C code too (PyAV opens fragments itself), opened or read."""

    IN_ACCESS = 0x001
    IN_OPEN = 0x020

    def __init__(self, paths: list[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        self.watches: dict[int, Path] = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(
                self.fd, str(path).encode(), self.IN_OPEN | self.IN_ACCESS
            )
            assert wd >= 0, (path, ctypes.get_errno())
            self.watches[wd] = path

    def events(self) -> list[Path]:
        """The paths opened or read since the last call."""
        out: list[Path] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                base = self.watches[wd]
                out.append(base / name if name else base)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


TRAVERSALS = [
    "../../../../../../etc/passwd",
    "..%2f..%2f..%2fsecret.txt",
    "%2e%2e%2f%2e%2e%2fsecret.txt",
    "%2E%2E/%2E%2E/fragments.sqlite",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "..\\..\\secret.txt",
    "0/../../secret.txt",
    "1%00.mp4",
    "-1",
    "99999999999999999999999999999999",
]


def traversal_targets(hls: Hls) -> list[str]:
    """Request targets that try to leave the data directory, in every place of an HLS URL."""
    base = urlsplit(hls.base).path  # /archived-media/hls/v1
    token = hls.token
    out = []
    for bad in TRAVERSALS:
        out += [
            f"{base}/getMP4MediaFragment.mp4?FragmentNumber={bad}&SessionToken={token}"
            "&TrackNumber=1",
            f"{base}/getMP4MediaFragment.mp4?FragmentNumber=0&SessionToken={bad}&TrackNumber=1",
            f"{base}/getMP4InitFragment.mp4?SessionToken={token}&TrackNumber={bad}",
            f"{base}/getTSFragment.ts?FragmentNumber={bad}&SessionToken={token}",
            f"{base}/{bad}?SessionToken={token}",
            f"{base}/{bad}/getHLSMasterPlaylist.m3u8?SessionToken={token}",
            f"{base}/getHLSMasterPlaylist.m3u8/{bad}?SessionToken={token}",
        ]
    out += [
        f"{base}/../../../secret.txt?SessionToken={token}",
        f"{base}/%2e%2e/%2e%2e/%2e%2e/fragments.sqlite?SessionToken={token}",
        f"/archived-media/hls/v1/..%2f..%2f..%2f{hls.canary}?SessionToken={token}",
        f"/archived-media/{hls.canary}",
        f"/{hls.canary}",
        f"//{hls.canary}",
        f"/archived-media/hls/v1//etc/passwd?SessionToken={token}",
        f"/fragments/../fragments.sqlite?SessionToken={token}",
    ]
    return out


def test_hls_urls_cannot_leave_the_data_directory(hls: Hls) -> None:
    # The fixture's URL works, so the refusals below are about the traversal, not the setup.
    base = urlsplit(hls.base).path
    ok = raw_get(
        hls.kvs.url,
        f"{base}/getMP4MediaFragment.mp4?FragmentNumber=0&SessionToken={hls.token}&TrackNumber=1",
    )
    assert ok.status == 200 and ok.body[4:8] in (b"styp", b"moof", b"ftyp"), ok.status
    root = hls.data_dir.parent
    watch = OpenWatch([root, Path("/etc/passwd")])
    try:
        hls.canary.read_text()  # the watch sees opens: this one must show up
        assert hls.canary in watch.events()
        answers = [(t, raw_get(hls.kvs.url, t)) for t in traversal_targets(hls)]
        opened = watch.events()
    finally:
        watch.close()
    for target, response in answers:
        assert 400 <= response.status < 500, (target, response.status, response.body[:200])
        assert response.error_code, (target, response.headers)
        assert CANARY.encode() not in response.body, target
        assert b"root:" not in response.body and b"SQLite format" not in response.body, target
    # Only the data directory itself may have been opened (nothing beside it, no passwd).
    assert all(p == hls.data_dir for p in opened), opened
    assert healthy(hls.kvs.url)


def test_expired_hls_token_is_refused(hls: Hls) -> None:
    base = urlsplit(hls.base).path
    playlist = f"{base}/getHLSMasterPlaylist.m3u8?SessionToken={hls.token}"
    assert raw_get(hls.kvs.url, playlist).status == 200
    unknown = raw_get(hls.kvs.url, playlist.replace(hls.token, "A" * len(hls.token)))
    assert unknown.status == 401 and unknown.error_code == "NotAuthorizedException"
    hls.plane.clock = lambda: time.time() + 301  # past Expires=300
    try:
        for resource in (
            playlist,
            f"{base}/getHLSMediaPlaylist.m3u8?SessionToken={hls.token}&TrackNumber=1",
            f"{base}/getMP4InitFragment.mp4?SessionToken={hls.token}&TrackNumber=1",
        ):
            expired = raw_get(hls.kvs.url, resource)
            assert expired.status == 401, (resource, expired.status)
            assert expired.error_code == "NotAuthorizedException"
    finally:
        hls.plane.clock = time.time
    # gone for good, even with the clock back
    assert raw_get(hls.kvs.url, playlist).error_code == "NotAuthorizedException"
