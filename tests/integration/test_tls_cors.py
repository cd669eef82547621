"""Local KVS in TLS mode (https/wss on one port, a local CA kept in the data directory) and
CORS on every plane: real servers on 127.0.0.1, boto3, aiohttp, aiortc and the ``kvsnb
local`` command, verifying certificates for real (never ``verify=False``)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import botocore.exceptions
import pytest
from cryptography import x509

from kvsnb.client import trust
from kvsnb.client.ingest import ingest
from kvsnb.client.session import MasterSession, ViewerSession
from kvsnb.client.signaling import SignalingClient, SignalingError
from kvsnb.client.target import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, StrictKeys
from kvsnb.local.front import cors
from kvsnb.local.front.tls import TlsSetupError, local_ca_files
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import get_images, get_media, hls_session_url, list_fragments
from kvsnb.playback.hls import HlsReader
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import FAST, FRAGMENT_S, make_client, wait_for, wait_until

ORIGIN = "http://localhost:8888"
STRICT = StrictKeys(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)


def tls_kvs(data: Path, **config: Any) -> LocalKvs:
    """A Local KVS in TLS mode with 1 s fragments on its own thread."""
    options = StorageOptions(fragment_duration_s=FRAGMENT_S)
    return LocalKvs(
        LocalKvsConfig(data_dir=data, tls=True, extra={"storage": options}, **config)
    ).start_in_thread()


@pytest.fixture
def strict_tls_kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """Local KVS in TLS mode verifying every SigV4 signature (kvsnb's local keys)."""
    kvs = tls_kvs(tmp_path / "data", strict_keys=STRICT)
    yield kvs
    kvs.stop_in_thread()


def peer_certificate(url: str, cafile: Path, server_hostname: str) -> x509.Certificate:
    """Connect with full verification as ``server_hostname``; the server's certificate."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# ---------------------------------------------------------------------- TLS mode


def test_tls_endpoints_and_a_local_ca_reused_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    kvs = tls_kvs(data)
    try:
        assert kvs.url.startswith("https://127.0.0.1:")
        ca = kvs.ca_file
        assert ca is not None and ca.parent == data / "tls"
        assert oct(os.stat(data / "tls" / "ca-key.pem").st_mode & 0o777) == "0o600"
        kv = make_client("kinesisvideo", kvs.url, verify=str(ca))
        arn = kv.create_signaling_channel(ChannelName="tls")["ChannelARN"]
        stream = kv.create_stream(StreamName="tls", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=arn, MediaStorageConfiguration={"StreamARN": stream, "Status": "ENABLED"}
        )
        endpoints = {
            e["Protocol"]: e["ResourceEndpoint"]
            for e in kv.get_signaling_channel_endpoint(
                ChannelARN=arn,
                SingleMasterChannelEndpointConfiguration={
                    "Protocols": ["WSS", "HTTPS", "WEBRTC"],
                    "Role": "MASTER",
                },
            )["ResourceEndpointList"]
        }
        assert endpoints == {
            "WSS": f"wss://127.0.0.1:{kvs.port}/signaling/master",
            "HTTPS": f"{kvs.url}/signaling",
            "WEBRTC": f"{kvs.url}/webrtc",
        }
        data_endpoint = kv.get_data_endpoint(StreamARN=stream, APIName="LIST_FRAGMENTS")
        assert data_endpoint["DataEndpoint"] == f"{kvs.url}/archived-media"
        signaling = make_client("kinesis-video-signaling", endpoints["HTTPS"], verify=str(ca))
        servers = signaling.get_ice_server_config(ChannelARN=arn)["IceServerList"]
        assert len(servers) == 2  # Local KVS's TURN server (coturn), as AWS hands out two
        # its turns: port serves TLS with Local KVS's certificate, chained to the same CA
        tls_port = int(servers[0]["Uris"][2].split(":")[2].split("?")[0])
        context = ssl.create_default_context(cafile=str(ca))
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() is not None
        # one certificate for every loopback name, chained to the local CA
        cert = peer_certificate(kvs.url, ca, "localhost")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        peer_certificate(kvs.url, ca, "127.0.0.1")
        # without the CA, certificate verification fails (nothing trusts it by default)
        untrusted = make_client("kinesisvideo", kvs.url)
        with pytest.raises(botocore.exceptions.SSLError):
            untrusted.list_streams()
        ca_pem, serial = ca.read_bytes(), cert.serial_number
    finally:
        kvs.stop_in_thread()

    again = tls_kvs(data)  # same data directory: the same CA and server certificate
    try:
        assert again.ca_file is not None and again.ca_file.read_bytes() == ca_pem
        assert peer_certificate(again.url, again.ca_file, "127.0.0.1").serial_number == serial
        kv = make_client("kinesisvideo", again.url, verify=str(again.ca_file))
        assert [c["ChannelName"] for c in kv.list_signaling_channels()["ChannelInfoList"]] == [
            "tls"
        ]
    finally:
        again.stop_in_thread()


def test_a_damaged_server_certificate_is_reissued_by_the_same_ca(tmp_path: Path) -> None:
    first = local_ca_files(tmp_path)
    ca_pem = first.ca.read_bytes() if first.ca else b""
    first.cert.write_text("not a certificate")
    again = local_ca_files(tmp_path)
    assert again.ca is not None and again.ca.read_bytes() == ca_pem
    cert = x509.load_pem_x509_certificate(again.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    again.server_context()  # the new key matches the new certificate


def test_user_certificate_and_key(tmp_path: Path) -> None:
    pair = local_ca_files(tmp_path / "elsewhere")  # any CA-signed pair will do
    assert pair.ca is not None
    kvs = LocalKvs(
        LocalKvsConfig(data_dir=tmp_path / "data", tls_cert=pair.cert, tls_key=pair.key)
    ).start_in_thread()
    try:
        assert kvs.url.startswith("https://") and kvs.ca_file is None
        assert not (tmp_path / "data" / "tls").exists()  # no local CA made
        kv = make_client("kinesisvideo", kvs.url, verify=str(pair.ca))
        assert kv.list_streams()["StreamInfoList"] == []
        with connect(kvs.url, ca_bundle=pair.ca) as target:
            assert target.ca_bundle == str(pair.ca)
            assert target.kinesisvideo.list_signaling_channels()["ChannelInfoList"] == []
        # no local CA to fetch (/_localkvs/ca.pem is 404): the usual trust, which fails here
        with connect(kvs.url) as plain:
            assert plain.ca_bundle is None
            with pytest.raises(botocore.exceptions.SSLError):
                plain.kinesisvideo.list_streams()
    finally:
        kvs.stop_in_thread()

    other = local_ca_files(tmp_path / "other")
    for cert, key, error in (
        (pair.cert, other.key, TlsSetupError),  # key of another certificate
        (tmp_path / "missing.pem", pair.key, TlsSetupError),
        (pair.cert, None, ValueError),  # a certificate without its key
    ):
        with pytest.raises(error):
            LocalKvs(
                LocalKvsConfig(data_dir=tmp_path / "bad", tls_cert=cert, tls_key=key)
            ).start_in_thread()


# ---------------------------------------------------------------------- the kvsnb client


async def test_embedded_tls_master_viewer_and_playback(tmp_path: Path) -> None:
    target = connect(
        tls=True,
        data_dir=tmp_path / "data",
        extra={"storage": StorageOptions(fragment_duration_s=FRAGMENT_S)},
    )
    try:
        assert target.endpoint_url and target.endpoint_url.startswith("https://")
        assert target.ca_bundle == str(tmp_path / "data" / "tls" / "ca.pem")
        _, stream_arn = target.create_storage_channel("tls-room")
        m = MasterSession(
            target,
            "tls-room",
            video=TestPatternTrack(320, 240, 15),
            audio=ToneTrack(440.0),
            policy=FAST,
        )
        await m.start(timeout=30)
        assert m.endpoints is not None and m.endpoints.wss.startswith("wss://")
        v = ViewerSession(target, "tls-room", client_id="tls-viewer", policy=FAST)
        await v.start(timeout=30)
        await wait_until(
            lambda: len(v.received.frames_df()) >= 10,
            "the viewer gets video over TLS signaling",
            deadline_s=30,
        )
        await v.stop()
        await m.stop()
        await assert_stored_and_playable(target, stream_arn)
    finally:
        await asyncio.to_thread(target.close)
    assert trust.ca_file(target.endpoint_url or "") is None  # closing forgets the CA


async def assert_stored_and_playable(target: Target, stream_arn: str) -> None:
    """ListFragments, GetMediaForFragmentList, GetImages and HLS through kvsnb.playback."""

    async def stored() -> bool:
        return len(await asyncio.to_thread(list_fragments, target, stream_arn)) > 0

    await wait_for(stored, "a fragment is stored", deadline_s=30, every_s=0.2)
    fragments = await asyncio.to_thread(list_fragments, target, stream_arn)
    media = await asyncio.to_thread(
        get_media, target, stream_arn, list(fragments["fragment_number"])
    )
    assert media.startswith(b"\x1a\x45\xdf\xa3")  # EBML: a Matroska stream
    start = fragments["producer_time"].min().to_pydatetime()
    end = fragments["producer_time"].max().to_pydatetime()
    images = await asyncio.to_thread(get_images, target, stream_arn, start, end, progress=False)
    assert images["image"].notna().any()
    url = await asyncio.to_thread(hls_session_url, target, stream_arn)
    assert url.startswith("https://")
    frames = [f async for f in HlsReader(url).frames(follow=False)]
    assert frames and frames[0].keyframe


async def test_pointed_at_a_tls_local_kvs_with_strict_sigv4(strict_tls_kvs: LocalKvs) -> None:
    # kvsnb.connect(URL) fetches the local CA itself and verifies every connection with it
    with connect(strict_tls_kvs.url) as target:
        assert target.ca_bundle is not None
        assert (
            Path(target.ca_bundle).read_bytes() == (strict_tls_kvs.ca_file or Path()).read_bytes()
        )
        _, stream_arn = target.create_storage_channel("strict-tls")
        result = await ingest(target, "strict-tls", seconds=3.0, policy=FAST)
        assert len(result.frames_sent)
        await assert_stored_and_playable(target, stream_arn)
        # a presigned WSS URL with the wrong secret is refused over TLS as over http
        endpoints = await asyncio.to_thread(
            target.endpoints, target.channel_arn("strict-tls"), "MASTER"
        )
        creds = botocore.credentials.Credentials(LOCAL_ACCESS_KEY, "wrong-secret")
        bad = SignalingClient(endpoints.wss, endpoints.channel_arn, creds, target.region)
        with pytest.raises(SignalingError) as refused:
            await bad.open()
        assert refused.value.status == 403
        fetched = target.ca_bundle
    assert not Path(fetched).exists()  # the fetched CA file goes with the target


# ---------------------------------------------------------------------- CORS


async def test_cors_on_every_plane(tmp_path: Path) -> None:
    kvs = tls_kvs(tmp_path / "data", strict_keys=STRICT)
    ca = str(kvs.ca_file)
    try:
        with connect(kvs.url) as target:
            _, stream_arn = target.create_storage_channel("cors")
            await ingest(target, "cors", seconds=2.0, policy=FAST)
            fragments = await asyncio.to_thread(list_fragments, target, stream_arn)
            hls = await asyncio.to_thread(hls_session_url, target, stream_arn)
            channel_arn = target.channel_arn("cors")
        ssl_ctx = ssl.create_default_context(cafile=ca)
        async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
            # preflights: answered on every plane, no signature needed
            for path in (
                "/describeSignalingChannel",
                "/signaling/v1/get-ice-server-config",
                "/webrtc/joinStorageSession",
                "/archived-media/listFragments",
                "/archived-media/getHLSStreamingSessionURL",
                "/signaling/master",
                "/no/such/path",
            ):
                async with http.options(
                    kvs.url + path,
                    ssl=ssl_ctx,
                    headers={
                        "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization,x-amz-date,"
                        "x-amz-user-agent,amz-sdk-request,content-type",
                    },
                ) as resp:
                    assert resp.status == 200, path
                    assert resp.headers["Access-Control-Allow-Origin"] == "*"
                    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
                    assert resp.headers["Access-Control-Allow-Headers"] == (
                        "authorization,x-amz-date,x-amz-user-agent,amz-sdk-request,content-type"
                    )
                    assert int(resp.headers["Access-Control-Max-Age"]) > 0

            def assert_cors(resp: aiohttp.ClientResponse, what: str) -> None:
                assert resp.headers.get("Access-Control-Allow-Origin") == "*", what
                exposed = resp.headers.get("Access-Control-Expose-Headers", "")
                for name in ("x-amzn-RequestId", "x-amzn-ErrorType", "Date"):
                    assert name in exposed, (what, name)

            # errors, unsigned (strict mode): the AWS error and the headers to read it
            async with http.post(
                kvs.url + "/describeSignalingChannel", ssl=ssl_ctx, json={"ChannelName": "x"}
            ) as resp:
                assert resp.status == 403
                assert resp.headers["x-amzn-ErrorType"].startswith(
                    "MissingAuthenticationTokenException"
                )
                assert_cors(resp, "unsigned request")
            async with http.post(kvs.url + "/nope", ssl=ssl_ctx) as resp:
                assert resp.status == 404
                assert_cors(resp, "unknown operation")
            # an HLS resource (a GET with its session token, no SigV4), and its errors
            async with http.get(hls, ssl=ssl_ctx) as resp:
                assert resp.status == 200
                assert_cors(resp, "HLS master playlist")
            async with http.get(
                re.sub(r"SessionToken=[^&]*", "SessionToken=x", hls), ssl=ssl_ctx
            ) as resp:
                assert resp.status >= 400
                assert_cors(resp, "HLS with a bad token")
            # a refused WebSocket upgrade (no signature) is readable too
            async with http.get(
                f"{kvs.url}/signaling/master?X-Amz-ChannelARN={channel_arn}",
                ssl=ssl_ctx,
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            ) as resp:
                assert resp.status == 403
                assert_cors(resp, "refused upgrade")
        # signed requests through boto3: JSON results, AWS errors and raw media
        seen: list[dict[str, str]] = []

        def keep(http_response: Any, **_: Any) -> None:
            seen.append(dict(http_response.headers))

        kv = make_client(
            "kinesisvideo",
            kvs.url,
            verify=ca,
            aws_access_key_id=STRICT.access_key,
            aws_secret_access_key=STRICT.secret_key,
        )
        media = make_client(
            "kinesis-video-archived-media",
            f"{kvs.url}/archived-media",
            verify=ca,
            aws_access_key_id=STRICT.access_key,
            aws_secret_access_key=STRICT.secret_key,
        )
        for client in (kv, media):
            client.meta.events.register("after-call", keep)  # errors too, before the raise
        kv.describe_signaling_channel(ChannelARN=channel_arn)
        with pytest.raises(kv.exceptions.ResourceNotFoundException):
            kv.describe_signaling_channel(ChannelName="missing")
        with pytest.raises(botocore.exceptions.ClientError) as bad:
            kv.create_signaling_channel(ChannelName="bad name!")
        assert bad.value.response["Error"]["Code"] in (
            "InvalidArgumentException",
            "ValidationException",
        )
        media.get_media_for_fragment_list(
            StreamARN=stream_arn, Fragments=list(fragments["fragment_number"][:1])
        )["Payload"].read()
        assert len(seen) >= 4
        for headers in seen:
            lower = {k.lower(): v for k, v in headers.items()}
            assert lower.get("access-control-allow-origin") == "*", headers
            assert "x-amzn-ErrorType" in lower.get("access-control-expose-headers", "")
    finally:
        kvs.stop_in_thread()


def test_cors_headers_are_one_mechanism() -> None:
    """Nothing in Local KVS but front/cors.py names a CORS header."""
    root = Path(cors.__file__).resolve().parents[1]
    others = [
        p for p in root.rglob("*.py") if p.name != "cors.py" and "Access-Control-" in p.read_text()
    ]
    assert others == []


# ---------------------------------------------------------------------- kvsnb local --tls


def test_kvsnb_local_cert_needs_its_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvsnb.cli", "local", "--cert", str(tmp_path / "c.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--cert and --key go together" in done.stderr


def test_kvsnb_local_tls_and_the_aws_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsnb.cli", "local", "--tls", "--port", "0", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("  Chromium:") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        url = re.search(r"Local KVS at (https://127\.0\.0\.1:\d+)", text)
        assert url, text
        ca = data / "tls" / "ca.pem"
        assert f"--ca-bundle {ca}" in text and f"AWS_CA_BUNDLE={ca}" in text
        assert "--ignore-certificate-errors-spki-list=" in text
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "AKIDLOCALTEST",
            "AWS_SECRET_ACCESS_KEY": "local-secret",
            "AWS_DEFAULT_REGION": "us-west-2",
        }
        env.pop("AWS_CA_BUNDLE", None)
        venv_aws = Path(sys.executable).parent / "aws"  # the dev extra's awscli
        aws = str(venv_aws) if venv_aws.is_file() else shutil.which("aws")
        if aws is None:
            pytest.skip("the AWS CLI is not installed (boto3 with verify= is tested above)")
        base = [aws, "--endpoint-url", url.group(1), "--ca-bundle", str(ca), "kinesisvideo"]
        made = subprocess.run(
            [*base, "create-signaling-channel", "--channel-name", "cli-tls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        assert "arn:aws:kinesisvideo:us-west-2:" in made.stdout
        listed = subprocess.run(
            [*base, "list-signaling-channels"], env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0 and "cli-tls" in listed.stdout, listed.stderr
        unverified = subprocess.run(
            [aws, "--endpoint-url", url.group(1), "kinesisvideo", "list-streams"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unverified.returncode != 0 and "SSL" in unverified.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
