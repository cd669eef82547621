"""Local KVS's own controls (GO_AWAY, RECONNECT_ICE_SERVER over signed HTTP), the ``kvsnb``
commands against a running Local KVS, and a master coping with an H.264 profile aiortc
would refuse."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvsnb.client.signaling import SignalingClient
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.sources import make_test_file
from tests.conftest import FAST, start_kvs
from tests.integration.conftest import Http


async def test_go_away_and_reconnect_ice_server_over_http(
    local_kvs: LocalKvs, kv: Any, http: Http
) -> None:
    arn = kv.create_signaling_channel(ChannelName="admin")["ChannelARN"]
    with connect(endpoint_url=local_kvs.url) as tg:
        ep = tg.endpoints(arn, "MASTER", ("WSS", "HTTPS"))
        client = SignalingClient(ep.wss, arn, tg.credentials(), tg.region)
        await client.open()
        assert (await client.next_event(5)).kind == "open"
        url = f"{local_kvs.url}/_localkvs/reconnect-ice-server?ChannelARN={arn}"
        resp = await asyncio.to_thread(http.signed_post, url, b"")
        assert resp.status == 200 and resp.json == {"connections": 1}
        ev = await client.next_event(5)
        assert ev.message is not None and ev.message.type == "RECONNECT_ICE_SERVER"
        resp = await asyncio.to_thread(
            http.signed_post, f"{local_kvs.url}/_localkvs/go-away?GraceSeconds=0.2", b""
        )
        assert resp.status == 200 and resp.json == {"connections": 1}
        ev = await client.next_event(5)
        assert ev.message is not None and ev.message.type == "GO_AWAY"
        assert (await client.next_event(5)).kind == "reconnected"  # the client comes back
        await client.close()
    unsigned = await asyncio.to_thread(http.request, "POST", f"{local_kvs.url}/_localkvs/go-away")
    assert unsigned.status == 403 and unsigned.error_code == "MissingAuthenticationTokenException"
    bad = await asyncio.to_thread(
        http.signed_post, f"{local_kvs.url}/_localkvs/go-away?GraceSeconds=soon", b""
    )
    assert bad.status == 400 and bad.error_code == "InvalidArgumentException"
    unknown = await asyncio.to_thread(
        http.signed_post, f"{local_kvs.url}/_localkvs/go-away?ChannelARN={arn}x", b""
    )
    assert unknown.status == 404 and unknown.error_code == "ResourceNotFoundException"


def test_ingest_and_check_commands(local_kvs: LocalKvs, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvsnb.cli",
            "ingest",
            "--channel",
            "cli",
            "--create",
            "--seconds",
            "1.5",
            "--endpoint-url",
            local_kvs.url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "first_frame_sent" in done.stdout and "join_call" in done.stdout
    sent = next(ln for ln in done.stdout.splitlines() if ln.startswith("frames sent:"))
    assert int(sent.split(":")[1].split()[0]) > 0  # how many depends on the machine's load
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvsnb.cli",
            "ingest",
            "--channel",
            "nope",
            "--seconds",
            "1",
            "--endpoint-url",
            local_kvs.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "ResourceNotFoundException" in refused.stderr

    good = make_test_file(tmp_path / "good.mp4", seconds=1.0, audio_codec="opus")
    high = make_test_file(tmp_path / "high.mp4", seconds=1.0, profile="high")
    ok = subprocess.run(
        [sys.executable, "-m", "kvsnb.cli", "check", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kvsnb.cli", "check", str(high)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "High" in bad.stdout


async def test_master_refuses_an_offer_with_only_a_high_profile(tmp_path: Path) -> None:
    """kvsnb's encoder sends Constrained Baseline: an offer with only High H.264 gets a clear
    error naming what was offered, never an answer declaring High (issue 15, point 1)."""
    server = start_kvs(tmp_path / "d", h264_profile_level_id="640c1f")
    try:
        with connect(endpoint_url=server.url) as tg:
            tg.create_storage_channel("high")
            from kvsnb.client.ingest import ingest
            from kvsnb.client.session import SessionError

            with pytest.raises(SessionError, match="profile-level-id=640c1f") as info:
                await ingest(tg, "high", seconds=1.0, policy=FAST, connect_timeout=30)
            assert "H264/90000 (PT 126" in str(info.value)
            assert info.value.code == "InvalidArgumentException"
    finally:
        server.stop_in_thread()
