"""kvsnb's sessions through Local KVS's TURN server, as on AWS: masters and viewers take the
TURN servers from GetIceServerConfig and connect over a relay pair (recorded in the
timeline), ``force_turn`` keeps them relay-only, a master without TURN fails with the
explained ``SessionError`` after JoinStorageSession's 200, credentials are refreshed on a
re-join once near their Ttl, and the preflight says the same before a session starts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsnb.client.connectivity import TURN_REQUIRED, check_connectivity
from kvsnb.client.session import JoinPolicy, MasterSession, SessionError, ViewerSession
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.local.turn.server import coturn_binary
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import ingest_frames, stored_stamps, wait_until

pytestmark = pytest.mark.skipif(coturn_binary() is None, reason="coturn is not installed")

FAST = JoinPolicy.local()


def start(data: Path, **config: object) -> LocalKvs:
    options = StorageOptions(fragment_duration_s=1.0)
    return LocalKvs(LocalKvsConfig(data_dir=data, extra={"storage": options}, **config))  # type: ignore[arg-type]


@pytest.fixture
def turn_target(tmp_path: Path) -> Iterator[Target]:
    """A target on a Local KVS with TURN (the default) and 1 s fragments."""
    kvs = start(tmp_path / "data").start_in_thread()
    assert kvs.turn_endpoint is not None
    with connect(endpoint_url=kvs.url) as tg:
        yield tg
    kvs.stop_in_thread()


def step(session: MasterSession | ViewerSession, name: str) -> dict[str, object]:
    event = session.timeline.first(name)
    assert event is not None, f"no {name} in {[e.step for e in session.timeline.events]}"
    return event.detail


async def test_master_and_viewer_connect_over_a_relay_pair(turn_target: Target) -> None:
    channel, _ = turn_target.create_storage_channel("turn-relay")
    master = MasterSession(
        turn_target, channel, video=TestPatternTrack(320, 240), audio=ToneTrack(), policy=FAST
    )
    viewer = ViewerSession(turn_target, channel, policy=FAST)
    try:
        await master.start(timeout=60)
        await viewer.start(timeout=60)
        for session in (master, viewer):
            gathered = step(session, "ice_candidates")
            assert "relay/udp" in str(gathered["local"]), gathered
            assert gathered["remote"] in ("relay/udp", "none yet"), gathered
            pair = step(session, "ice_selected_pair")
            assert (pair["local"], pair["remote"]) == ("relay/udp", "relay/udp"), pair
            assert str(pair["turn"]).startswith("turn:127.0.0.1:"), pair
        await wait_until(
            lambda: viewer.received.latest_frame() is not None, "the viewer gets the master's video"
        )
    finally:
        await viewer.stop()
        await master.stop()


async def test_force_turn_gathers_relay_candidates_only(turn_target: Target) -> None:
    channel, stream = turn_target.create_storage_channel("turn-forced")
    result = await ingest_frames(turn_target, channel, 30, policy=FAST)  # default: all kinds
    assert "host/udp" in str(result.timeline.first("ice_candidates").detail["local"])
    master = MasterSession(
        turn_target,
        channel,
        video=TestPatternTrack(320, 240),
        audio=ToneTrack(),
        policy=FAST,
        force_turn=True,
    )
    try:
        await master.start(timeout=60)
        assert step(master, "ice_candidates")["local"] == "relay/udp"
        assert step(master, "ice_selected_pair")["local"] == "relay/udp"
    finally:
        await master.stop()
    _, (stamps, _) = stored_stamps(turn_target, stream)
    assert len(stamps) >= 30


async def test_a_master_without_turn_fails_and_says_why(turn_target: Target) -> None:
    channel, _ = turn_target.create_storage_channel("turn-missing")
    master = MasterSession(
        turn_target,
        channel,
        video=TestPatternTrack(320, 240),
        audio=ToneTrack(),
        policy=JoinPolicy.local(connect_timeout_s=3.0),
        ice_servers=[],  # what a script that forgets TURN does
    )
    states: list[str] = []
    master.on_state(states.append)
    with pytest.raises(SessionError) as info:
        await master.start(timeout=60)
    assert str(info.value).startswith(TURN_REQUIRED), info.value
    assert info.value.code == "TurnRequired"
    assert "no TURN server" in str(info.value)
    assert master.timeline.first("join_response") is not None  # JoinStorageSession said 200
    failed = step(master, "ice_failed")
    assert failed["reason"] == "no relay candidate"
    assert failed["local"] == "host/udp" and failed["remote"] == "relay/udp", failed
    assert master.timeline.first("dtls_connected") is None
    assert "failed" in states and "connected" not in states, states


async def test_force_turn_without_a_turn_server_is_refused_at_once(tmp_path: Path) -> None:
    kvs = start(tmp_path / "data", ice="host").start_in_thread()
    try:
        with connect(endpoint_url=kvs.url) as tg:
            channel, _ = tg.create_storage_channel("no-turn")
            master = MasterSession(
                tg, channel, video=TestPatternTrack(), policy=FAST, force_turn=True
            )
            with pytest.raises(SessionError, match="force_turn needs a TURN server"):
                await master.start(timeout=30)
            assert master.timeline.first("join_call") is None  # refused before joining
    finally:
        kvs.stop_in_thread()


async def test_turn_credentials_are_refreshed_on_rejoin(tmp_path: Path) -> None:
    kvs = start(tmp_path / "data", turn_ttl_s=2).start_in_thread()
    try:
        with connect(endpoint_url=kvs.url) as tg:
            channel, _ = tg.create_storage_channel("turn-refresh")
            master = MasterSession(
                tg, channel, video=TestPatternTrack(320, 240), audio=ToneTrack(), policy=FAST
            )
            try:
                await master.start(timeout=60)
                fetched = master.timeline.first("get_ice_config")
                assert fetched is not None
                # past the credentials' expiry: a new allocation with them would be refused
                await wait_until(lambda: time.time() > fetched.wall + 3, "the credentials expire")
                assert kvs.relay is not None
                kvs.call(kvs.relay.go_away(grace_s=0.2))  # the SDKs re-join on GO_AWAY
                await wait_until(
                    lambda: (
                        master.state == "connected"
                        and master.timeline.first("ice_config_refreshed") is not None
                        and sum(e.step == "ice_selected_pair" for e in master.timeline.events) >= 2
                    ),
                    "the master connects again after the re-join, with fresh credentials",
                )
                refreshed = master.timeline.first("ice_config_refreshed")
                assert refreshed is not None and refreshed.wall > fetched.wall + 3
            finally:
                await master.stop()
    finally:
        kvs.stop_in_thread()


async def test_preflight_checks_the_relay_path(turn_target: Target, tmp_path: Path) -> None:
    channel, _ = turn_target.create_storage_channel("preflight")
    rules = {r.rule: r for r in await check_connectivity(turn_target, channel)}
    assert rules["turn_servers"].passed and rules["turn_relay"].passed, rules
    assert rules["turn_relay"].value.startswith("127.0.0.2:")
    kvs = start(tmp_path / "host", ice="host").start_in_thread()
    try:
        with connect(endpoint_url=kvs.url) as tg:
            channel, _ = tg.create_storage_channel("preflight-host")
            (rule,) = await check_connectivity(tg, channel)
            assert rule.rule == "turn_servers" and not rule.passed
            assert rule.reason.startswith(TURN_REQUIRED)
    finally:
        kvs.stop_in_thread()
