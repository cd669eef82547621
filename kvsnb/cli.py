"""The ``kvsnb`` command: ``local``, ``demo``, ``ingest``, ``view``, ``check``, ``import``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from kvsnb import __version__
from kvsnb.wire.defaults import DEFAULT_REGION

DEFAULT_PORT = 4566


def _cmd_local(args: argparse.Namespace) -> int:
    from kvsnb.local.runner import serve

    strict = None
    if args.strict:
        key, _, secret = args.strict.partition(":")
        if not key or not secret:
            print("--strict takes ACCESS_KEY:SECRET", file=sys.stderr)
            return 2
        strict = (key, secret)
    if (args.cert is None) != (args.key is None):
        print("--cert and --key go together", file=sys.stderr)
        return 2
    asyncio.run(
        serve(
            host=args.host,
            port=args.port,
            data_dir=args.data,
            region=args.region,
            strict_keys=strict,
            storage_workers=args.workers,
            fragment_duration_s=args.fragment_seconds,
            require_audio=not args.allow_video_only,
            tls=args.tls,
            tls_cert=args.cert,
            tls_key=args.key,
            public_url=args.public_url,
            ice=args.ice,
            parent_pid=args.parent_pid,
        )
    )
    return 0


def _target(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kvsnb.launch import connect

    return connect(endpoint_url=args.endpoint_url, region=args.region)


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvsnb.demo import run_demo

    out = Path(args.out)
    asyncio.run(run_demo(out, seconds=args.seconds))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from kvsnb.client.ingest import ingest
    from kvsnb.client.session import SessionError
    from kvsnb.client.timeline import TimelineEvent

    target = _target(args)
    try:
        if args.create:
            target.create_storage_channel(args.channel)

        def show(e: TimelineEvent) -> None:
            detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
            print(f"{e.step:<22} {detail}", flush=True)

        try:
            result = asyncio.run(
                ingest(
                    target,
                    args.channel,
                    seconds=args.seconds,
                    source=args.source,
                    on_event=show,
                    force_turn=args.force_turn,
                )
            )
        except SessionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(result.timeline.to_frame().drop(columns=["time"]).to_string(index=False))
        print(f"frames sent: {len(result.frames_sent)} in {result.seconds:.1f} s")
        return 0
    finally:
        target.close()


def _cmd_view(args: argparse.Namespace) -> int:
    from kvsnb.client.session import SessionError, ViewerSession
    from kvsnb.client.timeline import TimelineEvent
    from kvsnb.sources.tracks import ToneTrack

    target = _target(args)

    def show(e: TimelineEvent) -> None:
        detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
        print(f"{e.step:<22} {detail}", flush=True)

    async def run() -> int:
        audio = ToneTrack(args.tone) if args.tone else None
        viewer = ViewerSession(
            target, args.channel, client_id=args.client_id, audio=audio, force_turn=args.force_turn
        )
        viewer.timeline.on_event(show)
        try:
            await viewer.start(timeout=args.connect_timeout)
        except SessionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            await asyncio.sleep(args.seconds)
        finally:
            await viewer.stop()
        frames = viewer.received.frames_df()
        print(viewer.timeline.to_frame().drop(columns=["time"]).to_string(index=False))
        print(f"frames received: {len(frames)}")
        print(f"audio frames received: {viewer.received.audio_frames}")
        lat = frames["latency_ms"].dropna()
        if len(lat):
            print(
                f"master → viewer latency: p50 {lat.quantile(0.5):.1f} ms, "
                f"p95 {lat.quantile(0.95):.1f} ms (stamped frames: {len(lat)})"
            )
        else:
            print("master → viewer latency: no stamped frames received")
        return 0

    try:
        return asyncio.run(run())
    finally:
        target.close()


def _cmd_check(args: argparse.Namespace) -> int:
    from kvsnb.sources.check import check_tracks

    report = check_tracks(args.source, require_audio=not args.video_only)
    if args.channel:
        from kvsnb.client.connectivity import check_connectivity

        target = _target(args)
        try:
            report.rules.extend(asyncio.run(check_connectivity(target, args.channel)))
        finally:
            target.close()
    print(report)
    return 0 if report.ok else 1


def _cmd_import(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from kvsnb.putmedia import PutMediaError, import_file
    from kvsnb.wire.times import parse_time

    try:
        start = parse_time(args.start) if args.start else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    target = _target(args)
    try:
        if args.create:
            kv = target.kinesisvideo
            key = {"StreamARN": args.stream} if args.stream.startswith("arn:") else None
            try:
                kv.describe_stream(**(key or {"StreamName": args.stream}))
            except kv.exceptions.ResourceNotFoundException:
                kv.create_stream(StreamName=args.stream, DataRetentionInHours=args.retention)
        result = import_file(target, args.file, args.stream, start=start, progress=True)
    except (PutMediaError, FileNotFoundError, ClientError, BotoCoreError) as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    finally:
        target.close()
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"{len(result.fragments)} fragments, {result.media_seconds:.1f} media s in "
        f"{result.wall_seconds:.2f} s ({result.speed:.0f}x real time, "
        f"{result.bytes_sent / 1e6 / max(result.wall_seconds, 1e-9):.1f} MB/s) into "
        f"{args.stream} from {result.producer_start.isoformat()}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kvsnb`` command."""
    p = argparse.ArgumentParser(prog="kvsnb", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    lp = sub.add_parser("local", help="run Local KVS until interrupted")
    lp.add_argument("--host", default="127.0.0.1")
    lp.add_argument("--port", type=int, default=DEFAULT_PORT)
    lp.add_argument("--data", help="data directory (default: a temporary one)")
    lp.add_argument("--region", default=DEFAULT_REGION)
    lp.add_argument("--strict", metavar="ACCESS_KEY:SECRET", help="verify SigV4 signatures")
    lp.add_argument("--fragment-seconds", type=float, default=2.0)
    lp.add_argument(
        "--tls",
        action="store_true",
        help="serve https/wss with a local CA for 127.0.0.1, ::1 and localhost, kept in the "
        "data directory (DATA/tls/ca.pem) and reused on restart",
    )
    lp.add_argument("--cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    lp.add_argument("--key", metavar="PEM", help="the private key of --cert")
    lp.add_argument(
        "--allow-video-only",
        action="store_true",
        help="accept masters that send no audio (current SDKs; the API reference needs both)",
    )
    lp.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run storage sessions in N worker processes, plus one that takes new joins while "
        "the others carry media (0: all in the server process); use about one per core "
        "beyond ~16 concurrent masters with audio",
    )
    lp.add_argument(
        "--public-url",
        metavar="URL",
        help="the base URL browsers reach Local KVS at behind a proxy, e.g. "
        "https://hub.example/user/me/proxy/4566 or /proxy/{port} with jupyter-server-proxy; "
        "every endpoint and HLS/DASH URL returned starts with it",
    )
    lp.add_argument(
        "--ice",
        choices=("turn", "host"),
        default="turn",
        help="turn (default, as AWS): peers reach storage sessions only through Local KVS's "
        "TURN server (coturn), whose credentials GetIceServerConfig hands out; host: directly "
        "on loopback host candidates, with an empty IceServerList",
    )
    lp.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop (as on SIGTERM) when process PID, this one's parent, ends, even by SIGKILL "
        "(LocalKvsProcess passes its own)",
    )
    lp.set_defaults(func=_cmd_local)

    dp = sub.add_parser("demo", help="the main job on Local KVS, with a report")
    dp.add_argument("--out", default="demo-output")
    dp.add_argument("--seconds", type=float, default=20.0)
    dp.set_defaults(func=_cmd_demo)

    ip = sub.add_parser("ingest", help="join a channel's storage session as master and stream")
    ip.add_argument("--channel", required=True)
    ip.add_argument("--seconds", type=float, default=10.0)
    ip.add_argument("--source", default="testpattern", help="testpattern or a media file")
    ip.add_argument("--endpoint-url", help="a Local KVS URL (default: KVSNB_TARGET/embedded)")
    ip.add_argument("--region")
    ip.add_argument(
        "--create", action="store_true", help="create the channel and a stream and map them first"
    )
    ip.add_argument(
        "--force-turn",
        action="store_true",
        help="relay candidates only (the SDK samples' force TURN): media through the TURN servers",
    )
    ip.set_defaults(func=_cmd_ingest)

    vp = sub.add_parser("view", help="join a channel's storage session as a viewer")
    vp.add_argument("--channel", required=True)
    vp.add_argument("--client-id", required=True)
    vp.add_argument("--seconds", type=float, default=10.0)
    vp.add_argument("--tone", type=float, help="send a tone of this frequency (Hz) up")
    vp.add_argument("--endpoint-url", help="a Local KVS URL (default: KVSNB_TARGET/embedded)")
    vp.add_argument("--region")
    vp.add_argument("--connect-timeout", type=float, default=60.0)
    vp.add_argument(
        "--force-turn",
        action="store_true",
        help="relay candidates only (the SDK samples' force TURN): media through the TURN servers",
    )
    vp.set_defaults(func=_cmd_view)

    cp = sub.add_parser("check", help="preflight a source against the ingestion rules")
    cp.add_argument("source", help="testpattern or a media file")
    cp.add_argument("--video-only", action="store_true", help="audio not required")
    cp.add_argument(
        "--channel",
        help="also check that this channel's TURN servers (GetIceServerConfig) give this "
        "machine a relay candidate: WebRTC ingestion requires TURN",
    )
    cp.add_argument("--endpoint-url", help="a Local KVS URL (default: KVSNB_TARGET/embedded)")
    cp.add_argument("--region")
    cp.set_defaults(func=_cmd_check)

    mp = sub.add_parser("import", help="load a media file into a stream through PutMedia")
    mp.add_argument("file", help="a media file (H.264/AAC pass through; others are transcoded)")
    mp.add_argument("--stream", required=True, help="stream name or ARN")
    mp.add_argument(
        "--start",
        help="producer time of the first frame: ISO 8601 or '2 h ago' (default: ends now)",
    )
    mp.add_argument("--endpoint-url", help="a Local KVS URL (default: KVSNB_TARGET/embedded)")
    mp.add_argument("--region")
    mp.add_argument("--create", action="store_true", help="create the stream if it is missing")
    mp.add_argument("--retention", type=int, default=24, help="hours, with --create")
    mp.set_defaults(func=_cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kvsnb`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.func(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
