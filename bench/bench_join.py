"""JoinStorageSession call → first video frame at the storage peer, and → first fragment
stored, over repeated joins, with the storage peer reached through Local KVS's TURN server
(``ice="turn"``, as AWS: relay candidates only) and directly (``--ice host``), side by side.
docs/design.md budgets: through TURN ≤ 150 ms p95 to the first frame idle, ≤ 100 ms p95 with
32 masters ingesting; host ≤ 100 ms p95 idle. Prints figures; never asserts on time. Each
run's timeline says which candidate pair ICE selected: the turn runs must be on a relay pair
(``relay/udp``) and the host runs not, which is checked and printed.

Idle: an embedded Local KVS, so both ends are read on one monotonic clock: the master's
timeline (``join_call``) and the storage peer's stats (``first_frame_at``) live in the same
process (Local KVS runs on its own event-loop thread). A second run puts the storage
sessions in 2 worker processes (the offer only).

Under load: Local KVS in its own process with 2 storage workers, N masters (32 by default,
as the budget says; ``--masters N``) with audio already ingesting from sender processes
(``bench_concurrency``'s pre-encoded senders: kvsnb sessions, so through TURN in turn mode),
and the joins made one after another from this process. The storage peer is then in another
process, so the first frame is read from what was stored: the first fragment's
ServerTimestamp is the arrival of its first frame (a keyframe, the encoder's first frame) at
the storage peer, on the same machine's wall clock as the join call. It is read from 1.5 s
after the join (``LIST_AFTER_S``), so that the joining master's process does nothing else
while it connects and sends its first frames.

Each loaded join prints its own line: first frame and the master's steps (ms after the call).
``--senders-nice N`` is a diagnostic: the senders, which stand for devices elsewhere, run N
nicer, to see how much of a loaded join is the client's share of the machine (loaded runs
only; nothing joins the history).

``python -m bench.bench_join [JOINS] [--masters N] [--ice turn,host] [--senders-nice N]
[--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from bench.bench_concurrency import make_clip, start_senders
from bench.common import pct, report
from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.client.timeline import STEPS
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack

Ice = Literal["turn", "host"]
MODES: tuple[Ice, ...] = ("turn", "host")
RELAY = "relay/udp"  # the local side of a selected pair through TURN
JOINS = 20
QUICK_JOINS = 4
STEPS_AFTER_JOIN = STEPS[STEPS.index("join_call") + 1 :]  # the master's steps after the join
LOAD_MASTERS = 32  # the performance budget's load
QUICK_MASTERS = 4
LOAD_WORKERS = 2
FRAGMENT_WAIT_S = 15.0
LIST_AFTER_S = 1.5  # a loaded join's fragments are listed this long after the join (1 s ones)
BUDGET_IDLE_MS = {"turn": 150, "host": 100}  # join → first frame p95 (docs/design.md)
BUDGET_LOADED_MS = 100  # … with 32 masters ingesting


async def join_once(tg: Any, name: str, timeout: float) -> tuple[MasterSession, str, Any, float]:
    """A new storage channel ``name`` and a master that joins it with live test media: (the
    started session, the stream's ARN, its join_call event, join call → offer received, ms)."""
    _, stream_arn = tg.create_storage_channel(name)
    session = MasterSession(
        tg,
        name,
        video=TestPatternTrack(640, 480, 30),
        audio=ToneTrack(),
        policy=JoinPolicy.local(offer_wait_s=2.0, connect_timeout_s=30.0),
    )
    await session.start(timeout=timeout)
    join = session.timeline.last("join_call")
    offer = session.timeline.last("offer_received")
    assert join is not None and offer is not None
    return session, stream_arn, join, (offer.mono - join.mono) * 1000


def steps_after_join(session: MasterSession, join: Any) -> dict[str, float]:
    """ms from the join call to each later step of the master's timeline (where the time of
    a join goes)."""
    out: dict[str, float] = {}
    for step in STEPS_AFTER_JOIN:
        event = session.timeline.last(step)
        if event is not None and event.mono >= join.mono:
            out[step] = (event.mono - join.mono) * 1000
    return out


def _steps_line(steps: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in steps.items())


def step_medians(per_join: list[dict[str, float]]) -> dict[str, float]:
    """The median of each step over the joins, in timeline order."""
    return {
        step: round(pct([j[step] for j in per_join if step in j], 50), 1)
        for step in STEPS_AFTER_JOIN
        if any(step in j for j in per_join)
    }


async def run(joins: int = JOINS, workers: int = 0, ice: Ice = "turn") -> dict[str, Any]:
    """Measure ``joins`` joins into an embedded Local KVS whose storage peers are reached as
    ``ice`` says; returns the figures. With storage ``workers`` the storage peer's first
    frame is in another process: only the offer and the stored fragment are timed."""
    kvs = LocalKvs(
        LocalKvsConfig(
            storage_workers=workers,
            ice=ice,
            extra={"storage": StorageOptions(fragment_duration_s=1.0)},
        )
    )
    kvs.start_in_thread()
    if ice == "turn" and kvs.turn_endpoint is None:
        kvs.stop_in_thread()
        raise RuntimeError("Local KVS runs without TURN (is coturn installed?)")
    tg = connect(endpoint_url=kvs.url)
    to_frame: list[float] = []
    to_offer: list[float] = []
    to_fragment: list[float] = []
    steps: list[dict[str, float]] = []
    pairs: Counter[str] = Counter()
    try:
        for i in range(joins):
            session, stream_arn, join, offer_ms = await join_once(tg, f"join-{i}", timeout=20)
            to_offer.append(offer_ms)
            pairs[selected_pair(session)] += 1
            if not workers:
                peer = kvs.sessions.channels[session.channel_arn].master
                deadline = time.monotonic() + 5
                while peer.stats.first_frame_at is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                assert peer.stats.first_frame_at is not None
                to_frame.append((peer.stats.first_frame_at - join.mono) * 1000)
            await kvs.store.wait_for_fragment(stream_arn, timeout=10)
            to_fragment.append((time.monotonic() - join.mono) * 1000)
            steps.append(steps_after_join(session, join))
            await session.stop()
    finally:
        tg.close()
        kvs.stop_in_thread()
    return {
        "ice": ice,
        "joins": joins,
        "storage_workers": workers,
        "selected_pairs": dict(pairs),
        "join_to_offer_ms_p50": round(pct(to_offer, 50), 1),
        "join_to_first_frame_ms_p50": round(pct(to_frame, 50), 1) if to_frame else None,
        "join_to_first_frame_ms_p95": round(pct(to_frame, 95), 1) if to_frame else None,
        "join_to_first_fragment_stored_ms_p50": round(pct(to_fragment, 50), 1),
        "master_steps_after_join_ms_p50": step_medians(steps),
        "fragment_duration_s": 1.0,
        "budget_join_to_first_frame_ms_p95": BUDGET_IDLE_MS[ice],
    }


async def run_under_load(
    masters: int = LOAD_MASTERS,
    joins: int = JOINS,
    workers: int = LOAD_WORKERS,
    ice: Ice = "turn",
    senders_nice: int = 0,
) -> dict[str, Any]:
    """Measure ``joins`` joins while ``masters`` masters with audio ingest into a Local KVS
    process with ``workers`` storage workers, its storage peers reached as ``ice`` says
    (the senders ``senders_nice`` nicer than this process); returns the figures."""
    from kvsnb.playback import list_fragments

    clip = Path(tempfile.mkdtemp(prefix="kvsnb-join-")) / "clip.pkl"
    make_clip(clip)
    to_frame: list[float] = []
    to_offer: list[float] = []
    steps: list[dict[str, float]] = []
    pairs: Counter[str] = Counter()
    sender_pairs: Counter[str] = Counter()
    args = ("--workers", str(workers), "--fragment-seconds", "1", "--ice", ice)
    with LocalKvsProcess(*args) as kvs:
        tg = connect(endpoint_url=kvs.url)
        names = [f"load-{i}" for i in range(masters)]
        for name in names:
            tg.create_storage_channel(name)
        senders = start_senders(
            kvs.url,
            names,
            clip,
            60.0 + joins * 5.0,
            video_only=False,
            pairs=sender_pairs,
            nice=senders_nice,
        )
        try:
            await asyncio.sleep(3.0)  # every sender is past its join and ingesting
            for i in range(joins):
                name = f"join-{i}"
                session, _, join, offer_ms = await join_once(tg, name, timeout=30)
                to_offer.append(offer_ms)
                pairs[selected_pair(session)] += 1
                # The joining master's process stays quiet while it connects and sends its
                # first frames (the first fragment's server time, read later, does not
                # depend on when it is read): ListFragments, in a thread, only once the
                # first fragment can be there. Polling it at once, on this event loop or
                # beside it, held the master's first frame for 100-200 ms.
                await asyncio.sleep(LIST_AFTER_S)
                deadline = time.monotonic() + FRAGMENT_WAIT_S
                fragments = await asyncio.to_thread(list_fragments, tg, name)
                while fragments.empty and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    fragments = await asyncio.to_thread(list_fragments, tg, name)
                steps.append(steps_after_join(session, join))
                await session.stop()
                if fragments.empty:
                    print(f"join {i}: no fragment stored within {FRAGMENT_WAIT_S:.0f} s")
                    continue
                first = fragments["server_time"].min().timestamp()
                to_frame.append((first - join.wall) * 1000)
                print(f"join {i}: first frame {to_frame[-1]:.0f} ms; {_steps_line(steps[-1])}")
        finally:
            for p in senders:
                p.terminate()
            for p in senders:
                p.wait(30)
            tg.close()
    return {
        "ice": ice,
        "masters_ingesting": masters,
        "storage_workers": workers,
        "joins": joins,
        "senders_nice": senders_nice,
        "joins_measured": len(to_frame),
        "selected_pairs": dict(pairs),
        "sender_selected_pairs": dict(sender_pairs),
        "join_to_offer_ms_p50": round(pct(to_offer, 50), 1),
        "join_to_offer_ms_p95": round(pct(to_offer, 95), 1),
        "join_to_first_frame_ms_p50": round(pct(to_frame, 50), 1),
        "join_to_first_frame_ms_p95": round(pct(to_frame, 95), 1),
        "join_to_first_frame_ms_max": round(max(to_frame, default=float("nan")), 1),
        "master_steps_after_join_ms_p50": step_medians(steps),
        "budget_join_to_first_frame_ms_p95": BUDGET_LOADED_MS,
    }


def selected_pair(session: MasterSession) -> str:
    """The local side of the candidate pair a session's ICE selected (``relay/udp`` through
    TURN, ``host/udp`` directly), from its timeline; ``none`` if it recorded none."""
    event = session.timeline.last("ice_selected_pair")
    return str(event.detail.get("local")) if event is not None else "none"


def relay_check(ice: Ice, pairs: dict[str, int]) -> str:
    """Whether the joins went as ``ice`` says: every one through a relay pair (turn), none
    (host); a line to print."""
    total = sum(pairs.values())
    relayed = pairs.get(RELAY, 0)
    expected = total if ice == "turn" else 0
    verdict = "as expected" if relayed == expected else "NOT AS EXPECTED"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(pairs.items()))
    return f"{relayed}/{total} through a relay pair ({kinds}): {verdict}"


def side_by_side(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A text table: one row per figure, one column per ICE mode."""
    modes = sorted({m for _, by_mode in rows for m in by_mode}, key=MODES.index)
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'':{width}}" + "".join(f"{m:>14}" for m in modes)]
    for label, by_mode in rows:
        cells = "".join(f"{_cell(by_mode.get(m)):>14}" for m in modes)
        lines.append(f"{label:{width}}{cells}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement in each ICE mode, print them side by side and report the
    headline figures (named after the mode: ``join_to_first_frame_ms_p95_turn_idle``)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_join")
    ap.add_argument("joins", nargs="?", type=int, default=None, help=f"default {JOINS}")
    ap.add_argument(
        "--masters",
        type=int,
        default=None,
        help=f"masters ingesting during the loaded joins (default {LOAD_MASTERS}, the "
        "performance budget's load)",
    )
    ap.add_argument("--ice", default=",".join(MODES), help="ICE modes, comma-separated")
    ap.add_argument(
        "--senders-nice",
        type=int,
        default=0,
        help="a diagnostic: run the loaded joins' senders (they stand for devices elsewhere) "
        "this much nicer, to see what of a join's time is their share of the CPU; only the "
        "loaded runs, and their figures do not join the history",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_JOINS} joins, {QUICK_MASTERS} masters, no worker run",
    )
    args = ap.parse_args(argv)
    joins = args.joins or (QUICK_JOINS if args.quick else JOINS)
    masters = args.masters or (QUICK_MASTERS if args.quick else LOAD_MASTERS)
    modes: list[Ice] = [m for m in MODES if m in args.ice.split(",")]
    idle: dict[str, dict[str, Any]] = {}
    in_workers: dict[str, dict[str, Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}
    for ice in modes:
        if args.senders_nice:  # the diagnostic: loaded runs only, nothing reported
            loaded[ice] = asyncio.run(
                run_under_load(masters, joins, ice=ice, senders_nice=args.senders_nice)
            )
            print(json.dumps(loaded[ice], indent=2), flush=True)
            continue
        idle[ice] = asyncio.run(run(joins, ice=ice))
        print(json.dumps(idle[ice], indent=2), flush=True)
        print(f"idle, {ice}: {relay_check(ice, idle[ice]['selected_pairs'])}", flush=True)
        report(
            **{
                f"join_to_offer_ms_p50_{ice}_idle": idle[ice]["join_to_offer_ms_p50"],
                f"join_to_first_frame_ms_p50_{ice}_idle": idle[ice]["join_to_first_frame_ms_p50"],
                f"join_to_first_frame_ms_p95_{ice}_idle": idle[ice]["join_to_first_frame_ms_p95"],
            }
        )
        if not args.quick:
            in_workers[ice] = asyncio.run(run(joins, workers=2, ice=ice))
            print(json.dumps(in_workers[ice], indent=2), flush=True)
            report(
                **{f"workers_join_to_offer_ms_p50_{ice}": in_workers[ice]["join_to_offer_ms_p50"]}
            )
        loaded[ice] = asyncio.run(run_under_load(masters, joins, ice=ice))
        print(json.dumps(loaded[ice], indent=2), flush=True)
        print(f"{masters} masters, {ice}: joins {relay_check(ice, loaded[ice]['selected_pairs'])}")
        print(
            f"{masters} masters, {ice}: senders "
            f"{relay_check(ice, loaded[ice]['sender_selected_pairs'])}",
            flush=True,
        )
        tag = f"{ice}_{masters}_masters"
        report(
            **{
                f"join_to_offer_ms_p50_{tag}": loaded[ice]["join_to_offer_ms_p50"],
                f"join_to_first_frame_ms_p50_{tag}": loaded[ice]["join_to_first_frame_ms_p50"],
                f"join_to_first_frame_ms_p95_{tag}": loaded[ice]["join_to_first_frame_ms_p95"],
            }
        )

    def row(label: str, runs: dict[str, dict[str, Any]], key: str) -> tuple[str, dict[str, Any]]:
        return label, {m: r.get(key) for m, r in runs.items()}

    def relayed(runs: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
        return {m: f"{r[key].get(RELAY, 0)}/{sum(r[key].values())}" for m, r in runs.items()}

    rows = [
        row("idle: join → offer p50 (ms)", idle, "join_to_offer_ms_p50"),
        row("idle: join → first frame p50 (ms)", idle, "join_to_first_frame_ms_p50"),
        row("idle: join → first frame p95 (ms)", idle, "join_to_first_frame_ms_p95"),
        ("idle: joins through a relay pair", relayed(idle, "selected_pairs")),
    ]
    if in_workers:
        rows.append(row("2 workers: join → offer p50 (ms)", in_workers, "join_to_offer_ms_p50"))
    rows += [
        row(f"{masters} masters: join → offer p50 (ms)", loaded, "join_to_offer_ms_p50"),
        row(
            f"{masters} masters: join → first frame p50 (ms)", loaded, "join_to_first_frame_ms_p50"
        ),
        row(
            f"{masters} masters: join → first frame p95 (ms)", loaded, "join_to_first_frame_ms_p95"
        ),
        row(
            f"{masters} masters: join → first frame max (ms)", loaded, "join_to_first_frame_ms_max"
        ),
        (f"{masters} masters: joins through a relay pair", relayed(loaded, "selected_pairs")),
        (
            f"{masters} masters: senders through a relay pair",
            relayed(loaded, "sender_selected_pairs"),
        ),
    ]
    print(side_by_side(rows), flush=True)
    return {"idle": idle, "workers": in_workers, "loaded": loaded}


if __name__ == "__main__":
    main()
