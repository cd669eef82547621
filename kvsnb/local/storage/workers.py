"""Storage workers: Local KVS's storage sessions spread over worker processes
(``LocalKvsConfig.storage_workers``, ``kvsnb local --workers N``: N workers and a join worker).

The rule: a channel's whole storage session lives in one worker, chosen at its first join;
the server process keeps HTTP, signaling and the archive and talks to each worker in
length-prefixed pickled frames over the child's stdin/stdout. A dead worker takes its sessions
with it (calls waiting on it get a 500 ``InternalFailure``) and is replaced; a worker whose
server goes away stores its partial fragments and exits. See docs/design.md, "Local KVS".

Placement is by load, so that a join's offer, ICE and DTLS queue behind as little media as
possible on the chosen worker's event loop (a worker carrying many masters delays a new
session's set-up by as much as it has to do first). Each worker reports how many live storage
sessions (masters and viewers) it runs and how many of them are still setting up (not
connected yet); the pool adds the joins it sent a worker that are not answered yet. Besides
the ``count`` workers there is one more, the join worker, kept light for lone joins: a new
channel goes to it when no session is setting up in any worker and it runs at most half as
many live sessions as the least loaded of the others (``JOIN_WORKER_SHARE``). Otherwise (a
burst of joins, or the join worker at its share) it goes to one of the others: one with
nothing setting up if there is, then the fewest live sessions, then the lowest index.
Sessions cannot move between processes (an aiortc peer lives in its process), so the join
worker keeps the sessions it set up; bursts going to the others and the share keep it the
lightest loop, and being one process more than ``count``, the others carry no more than they
would without it. The join worker also gets the CPU first: the ``count`` workers run at a
lower priority (``MEDIA_NICE``), so when the machine is full, an offer, ICE and DTLS wait
for no worker's media (only for the processes at the server's priority).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvsnb.local.control.plane import Channel
from kvsnb.local.core import frames, memory
from kvsnb.local.core.errors import AwsError
from kvsnb.local.signaling.relay import ClientMessage, SignalingRelay, SocketConnection
from kvsnb.local.storage.peer import StorageOptions, StorageSessionManager
from kvsnb.local.store.fragments import Fragment, FragmentStore
from kvsnb.wire.webrtc import Role

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0  # a join or message the worker has not answered by then fails
STOP_TIMEOUT_S = 30.0  # a worker has this long to store its partial fragments on stop
LOAD_PERIOD_S = 0.2  # a worker checks its sessions this often (they connect and end by
# themselves: ICE and DTLS, idle timeouts, a closed peer connection); reported when changed
JOIN_OPS = frozenset({"join_master", "join_viewer"})
JOIN_WORKER_SHARE = 0.5  # the join worker's live sessions, at most this × the least of others'
MEDIA_NICE = 10  # the workers carrying media run this much nicer than the server (the join
# worker as the server): on a full machine a join's set-up gets the CPU before others' media
MAX_NICE = 19


def _lower_priority(pid: int) -> None:
    """Run process ``pid`` ``MEDIA_NICE`` nicer than this one (raising a nice value needs no
    privilege)."""
    try:
        nice = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + MEDIA_NICE)
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as exc:  # gone already, or a sandbox that forbids it
        logger.debug("storage worker %d keeps its priority: %s", pid, exc)


def _frame(message: tuple[Any, ...]) -> bytes:
    return frames.pack(message)


async def _read(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    message = await frames.read_async(reader)
    assert isinstance(message, tuple)
    return message


class WorkerFailure(AwsError):
    """A storage worker process ended or stopped answering (500 ``InternalFailure``)."""

    default_status = 500


@dataclass(eq=False)
class WorkerConnection:
    """A client connection as a worker knows it: the server's id for it, and what the
    storage sessions read of it (channel, role, ClientId). In a worker, one object per id
    stands for the connection, so identity tells a reconnected socket from the old one."""

    id: int
    channel_arn: str
    role: Role
    client_id: str | None


# ---------------------------------------------------------------------- server side


@dataclass(eq=False)
class _Worker:
    """One worker process and its pipes, as the server sees it."""

    index: int
    proc: asyncio.subprocess.Process
    ready: asyncio.Future[None]
    channels: set[str] = field(default_factory=set)
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    alive: bool = True
    sessions: int = 0  # live storage sessions, as the worker last reported
    connecting: int = 0  # of those, sessions not connected yet (ICE, DTLS), as reported
    joining: int = 0  # joins sent to the worker and not answered yet (offers being made)

    @property
    def setting_up(self) -> int:
        """Sessions being set up here: joins not answered yet, sessions not connected yet."""
        return self.joining + self.connecting

    @property
    def load(self) -> tuple[bool, int, int]:
        """The placement key among the regular workers (smallest first): a session setting
        up here, live sessions with the joins not answered yet, index."""
        return (self.setting_up > 0, self.sessions + self.joining, self.index)

    def post(self, *message: Any) -> None:
        """Send a message that needs no answer."""
        if not self.alive or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(_frame(message))
        except (ConnectionError, RuntimeError):
            self.alive = False

    async def call(self, call_id: int, op: str, *args: Any) -> Any:
        """Send ``op`` and wait for its answer; the worker's AWS error is raised here."""
        await asyncio.shield(self.ready)
        if not self.alive:
            raise WorkerFailure("The storage session's worker process has ended.")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        join = op in JOIN_OPS
        self.joining += join
        try:
            self.post("call", call_id, op, *args)
            if not self.alive:  # its pipe broke just now
                raise WorkerFailure("The storage session's worker process has ended.")
            return await asyncio.wait_for(future, CALL_TIMEOUT_S)
        except TimeoutError:
            raise WorkerFailure(
                f"The storage session's worker process did not answer {op} in time."
            ) from None
        finally:
            self.pending.pop(call_id, None)
            self.joining -= join


class StorageWorkerPool:
    """The storage sessions of one Local KVS, run by ``count`` worker processes and the
    join worker (see the module docstring).

    It stands where ``StorageSessionManager`` stands in a single-process Local KVS: the
    storage plane's ``StorageSessions`` and the relay's ``StorageSink``.
    """

    def __init__(
        self,
        relay: SignalingRelay,
        store: FragmentStore,
        options: StorageOptions,
        count: int,
    ) -> None:
        if count < 1:
            raise ValueError("a storage worker pool needs at least one worker")
        self.relay = relay
        self.store = store
        self.options = options
        self.count = count
        self.workers: list[_Worker] = []
        self._assigned: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self._conn_ids: dict[SocketConnection, int] = {}
        self._conns: dict[int, SocketConnection] = {}
        self._send_tails: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ------------------------------------------------------------------ processes

    async def start(self) -> None:
        """Start the workers (the join worker last, index ``count``) and wait until each is
        ready."""
        self.workers = [await self._spawn(i) for i in range(self.count + 1)]
        await asyncio.gather(*(w.ready for w in self.workers))

    async def _spawn(self, index: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *frames.worker_command(__name__, "worker_main"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            process_group=0,  # a terminal's Ctrl-C reaches the server, which stops it in turn
        )
        worker = _Worker(index, proc, asyncio.get_running_loop().create_future())
        if index < self.count:
            _lower_priority(proc.pid)
        worker.post(
            "init",
            str(self.store.data_dir),
            self.options,
            logging.getLogger().getEffectiveLevel(),
        )
        worker.reader_task = asyncio.get_running_loop().create_task(self._read_from(worker))
        return worker

    async def _read_from(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        try:
            while True:
                message = await _read(worker.proc.stdout)
                self._on_worker_message(worker, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            logger.debug("storage worker %d closed its pipe", worker.index)
        except Exception:
            logger.exception("storage worker %d sent something unreadable", worker.index)
        self._on_worker_exit(worker)

    def _on_worker_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            if not worker.ready.done():
                worker.ready.set_result(None)
        elif kind == "reply":
            _, call_id, error = message
            future = worker.pending.get(call_id)
            if future is not None and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        elif kind == "send":
            _, conn_id, message_type, payload = message
            self._send(conn_id, message_type, payload)
        elif kind == "stored":
            self.store.announce(message[1])
        elif kind == "load":
            _, worker.sessions, worker.connecting = message
        else:
            logger.error("storage worker %d sent an unknown message %r", worker.index, kind)

    def _on_worker_exit(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.proc.returncode is None and not self._closing:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()  # its pipe is unusable: the process must not linger
        failure = WorkerFailure("The storage session's worker process has ended.")
        if not worker.ready.done():
            worker.ready.set_exception(failure)
            worker.ready.exception()  # retrieved: start() or a call reports it
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(failure)
        for arn in worker.channels:
            if self._assigned.get(arn) is worker:
                del self._assigned[arn]
        if self._closing:
            return
        logger.error(
            "storage worker %d (pid %d) ended; its %d channel(s) lost their sessions",
            worker.index,
            worker.proc.pid,
            len(worker.channels),
        )
        self._spawn_task(self._replace(worker))

    async def _replace(self, worker: _Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            await worker.proc.wait()
        if self._closing:
            return
        fresh = await self._spawn(worker.index)
        self.workers[worker.index] = fresh
        with contextlib.suppress(WorkerFailure):
            await fresh.ready

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def placement(self) -> dict[str, int]:
        """Which worker process (pid) serves each channel ARN that has joined."""
        return {arn: w.proc.pid for arn, w in self._assigned.items()}

    def pids(self) -> list[int]:
        """The process ids of the workers, in order (the join worker last)."""
        return [w.proc.pid for w in self.workers]

    @property
    def join_worker(self) -> int:
        """The process id of the join worker, the one kept light for new sessions."""
        return self.workers[self.count].proc.pid

    def loads(self) -> dict[int, tuple[int, int]]:
        """Per worker process (pid): (live storage sessions it last reported, sessions
        being set up there: joins not answered yet and sessions not connected yet)."""
        return {w.proc.pid: (w.sessions, w.setting_up) for w in self.workers}

    def next_worker(self) -> int:
        """The pid of the worker a channel joining now for the first time would go to (see
        the module docstring for the rule)."""
        return self._least_loaded().proc.pid

    def _least_loaded(self) -> _Worker:
        live = [w for w in self.workers if w.alive] or self.workers
        regular = [w for w in live if w.index < self.count]
        joiner = next((w for w in live if w.index == self.count), None)
        if joiner is not None and (not regular or self._join_worker_free(joiner, live)):
            return joiner
        return min(regular, key=lambda w: w.load)

    @staticmethod
    def _join_worker_free(joiner: _Worker, live: list[_Worker]) -> bool:
        """Whether the join worker takes a new channel: a lone join (nothing setting up in
        any worker), and the join worker at most at ``JOIN_WORKER_SHARE`` × the live
        sessions of the least loaded other worker."""
        least = min(w.sessions + w.joining for w in live if w is not joiner)
        lone = not any(w.setting_up for w in live)
        return lone and joiner.sessions <= JOIN_WORKER_SHARE * least

    def _worker_for(self, channel_arn: str) -> _Worker:
        worker = self._assigned.get(channel_arn)
        if worker is not None and worker.alive:
            return worker
        worker = self._least_loaded()
        worker.channels.add(channel_arn)
        self._assigned[channel_arn] = worker
        return worker

    # ------------------------------------------------------------------ connections

    def _ref(self, conn: SocketConnection | None) -> WorkerConnection | None:
        if conn is None:
            return None
        conn_id = self._conn_ids.get(conn)
        if conn_id is None:
            conn_id = self._conn_ids[conn] = next(self._ids)
            self._conns[conn_id] = conn
        return WorkerConnection(conn_id, conn.channel_arn, conn.role, conn.client_id)

    def _send(self, conn_id: int, message_type: str, payload: dict[str, Any]) -> None:
        """Deliver a worker's message to a client, after that client's earlier ones."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return  # the socket has closed, as a send to it would find
        before = self._send_tails.get(conn_id)

        async def deliver() -> None:
            if before is not None:
                await asyncio.wait([before])
            await self.relay.send_from_storage(conn, message_type, payload)

        task = asyncio.get_running_loop().create_task(deliver())
        self._send_tails[conn_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._send_tails.get(conn_id) is t:
                del self._send_tails[conn_id]

        task.add_done_callback(done)

    async def _sent(self, ref: WorkerConnection | None) -> None:
        """Wait until the messages a worker sent so far to this client have gone out."""
        tail = None if ref is None else self._send_tails.get(ref.id)
        if tail is not None:
            await asyncio.wait([tail])

    # ------------------------------------------------------------------ StorageSessions

    async def join_master(self, channel: Channel) -> None:
        """JoinStorageSession: the channel's worker offers the connected master a session."""
        ref = self._ref(self.relay.master(channel.arn))
        await self._worker_for(channel.arn).call(next(self._ids), "join_master", channel, ref)
        await self._sent(ref)

    async def join_viewer(self, channel: Channel, client_id: str) -> None:
        """JoinStorageSessionAsViewer: the channel's worker offers the viewer a session (or
        raises ``ClientLimitExceededException``)."""
        ref = self._ref(self.relay.viewer(channel.arn, client_id))
        worker = self._worker_for(channel.arn)
        await worker.call(next(self._ids), "join_viewer", channel, client_id, ref)
        await self._sent(ref)

    # ------------------------------------------------------------------ StorageSink

    async def on_client_message(self, conn: SocketConnection, msg: ClientMessage) -> None:
        """A client's answer or candidate, for its session's worker."""
        ref = self._ref(conn)
        assert ref is not None
        await self._worker_for(conn.channel_arn).call(next(self._ids), "message", ref, msg)
        await self._sent(ref)

    async def on_client_connected(self, conn: SocketConnection) -> None:
        """Nothing to do: a session starts on JoinStorageSession[AsViewer]."""

    async def on_client_disconnected(self, conn: SocketConnection) -> None:
        """Forget the socket (here and in its channel's worker); messages the worker still
        sends to it are dropped, as sends to a closed socket are."""
        conn_id = self._conn_ids.pop(conn, None)
        if conn_id is not None:
            self._conns.pop(conn_id, None)
            worker = self._assigned.get(conn.channel_arn)
            if worker is not None:
                worker.post("disconnected", conn_id)

    def on_storage_changed(self, channel: Channel) -> None:
        """Storage disabled or remapped: the channel's worker ends its sessions."""
        worker = self._assigned.get(channel.arn)
        if worker is not None:
            worker.post("storage_changed", channel)

    async def close(self) -> None:
        """End every session (partial fragments are stored), then stop the workers."""
        self._closing = True

        async def stop(worker: _Worker) -> None:
            if worker.alive and worker.ready.done():
                with contextlib.suppress(WorkerFailure, TimeoutError):
                    await asyncio.wait_for(worker.call(next(self._ids), "close"), STOP_TIMEOUT_S)
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.error("storage worker %d did not stop; killing it", worker.index)
                worker.proc.kill()
                await worker.proc.wait()
            if worker.reader_task is not None:
                await worker.reader_task

        await asyncio.gather(*(stop(w) for w in self.workers))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------------- worker side


class _WorkerRelay:
    """The relay as a worker sees it: the connections the server named, and a pipe back."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._conns: dict[int, WorkerConnection] = {}
        self._current: dict[tuple[str, str | None], WorkerConnection] = {}

    def endpoint(self, ref: WorkerConnection) -> WorkerConnection:
        """The worker's one object for a server connection (identity tells reconnects)."""
        return self._conns.setdefault(ref.id, ref)

    def name(self, channel_arn: str, client_id: str | None, ref: WorkerConnection | None) -> None:
        """Record which connection is the channel's master (``client_id`` None) or viewer."""
        if ref is None:
            self._current.pop((channel_arn, client_id), None)
        else:
            self._current[(channel_arn, client_id)] = self.endpoint(ref)

    def forget(self, conn_id: int) -> None:
        """A connection closed: drop the worker's record of it (sessions keep their own)."""
        conn = self._conns.pop(conn_id, None)
        for key, current in list(self._current.items()):
            if current is conn:
                del self._current[key]

    def master(self, channel_arn: str) -> WorkerConnection | None:
        """The channel's connected master, as the server last named it."""
        return self._current.get((channel_arn, None))

    def viewer(self, channel_arn: str, client_id: str) -> WorkerConnection | None:
        """The channel's connected viewer with this ClientId, as the server last named it."""
        return self._current.get((channel_arn, client_id))

    async def send_from_storage(
        self, conn: WorkerConnection, message_type: str, payload: dict[str, Any]
    ) -> bool:
        """Hand a message for a client to the server, which delivers it in order."""
        self._send(("send", conn.id, message_type, payload))
        return True


class _WorkerServer:
    """A worker's event loop: the storage sessions, fed by the server's messages."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport, data_dir: Path
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.relay = _WorkerRelay(self.send)
        self.store = FragmentStore(data_dir, recover=False)
        self.store.add_listener(self._stored)
        self.manager: StorageSessionManager | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.reported = (0, 0)  # (live sessions, not connected yet) last reported

    def send(self, message: tuple[Any, ...]) -> None:
        """Write a message to the server (on the worker's loop)."""
        if not self.writer.is_closing():
            self.writer.write(_frame(message))

    def _stored(self, fragment: Fragment) -> None:
        # Called in the recorder's storing thread.
        self.loop.call_soon_threadsafe(self.send, ("stored", fragment))

    def live_sessions(self) -> tuple[int, int]:
        """How many storage sessions (masters and viewers) in this worker have not ended,
        and how many of those have not connected yet."""
        live = connecting = 0
        for st in self.manager.channels.values() if self.manager is not None else ():
            peers = [st.master, *st.viewers.values()] if st.master else st.viewers.values()
            for peer in peers:
                if not peer.closed:
                    live += 1
                    connecting += peer.stats.connected_at is None
        return live, connecting

    def report_load(self) -> None:
        """Tell the server this worker's live sessions and those setting up, if changed."""
        load = self.live_sessions()
        if load != self.reported:
            self.reported = load
            self.send(("load", *load))

    async def _report_load_periodically(self) -> None:
        while True:
            await asyncio.sleep(LOAD_PERIOD_S)
            self.report_load()

    async def serve(self, options: StorageOptions) -> None:
        """Answer the server until its pipe closes, then end every session (the server is
        gone, and its coturn with it)."""
        self.manager = StorageSessionManager(self.relay, self.store, options)
        self.send(("ready",))
        reporter = self.loop.create_task(self._report_load_periodically())
        try:
            while True:
                try:
                    message = await _read(self.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                self._dispatch(message)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, *self.tasks, return_exceptions=True)
            await self.manager.close(turn_gone=True)
            self.store.close()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        assert self.manager is not None
        kind = message[0]
        if kind == "call":
            task = self.loop.create_task(self._call(message[1], message[2], *message[3:]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "storage_changed":
            self.manager.on_storage_changed(message[1])
        elif kind == "disconnected":
            self.relay.forget(message[1])
        else:
            logger.error("unknown message from the server: %r", kind)

    async def _call(self, call_id: int, op: str, *args: Any) -> None:
        assert self.manager is not None
        error: AwsError | None = None
        try:
            if op == "join_master":
                channel, ref = args
                self.relay.name(channel.arn, None, ref)
                await self.manager.join_master(channel)
            elif op == "join_viewer":
                channel, client_id, ref = args
                self.relay.name(channel.arn, client_id, ref)
                await self.manager.join_viewer(channel, client_id)
            elif op == "message":
                ref, msg = args
                await self.manager.on_client_message(self.relay.endpoint(ref), msg)
            elif op == "close":
                await self.manager.close()
            else:
                raise ValueError(f"unknown call {op!r}")
        except AwsError as exc:
            error = exc
        except Exception as exc:
            logger.exception("storage worker call %s failed", op)
            error = WorkerFailure(f"The storage session failed: {exc}")
        self.report_load()  # before the reply: the server counts the session once set up
        self.send(("reply", call_id, error))


async def _worker_async(server_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = os.fdopen(server_fd, "wb", buffering=0)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, out)
    kind, data_dir, options, level = await _read(reader)
    if kind != "init":
        raise RuntimeError(f"a storage worker starts with init, not {kind!r}")
    logging.getLogger().setLevel(level)
    server = _WorkerServer(reader, writer, Path(data_dir))
    memory.freeze_startup_objects()  # as the server
    await server.serve(options)
    writer.close()


def worker_main() -> None:
    """Entry point of a worker process (started by ``StorageWorkerPool``)."""
    memory.fix_mmap_threshold()  # as the server (kvsnb.local.core.memory)
    server_fd = os.dup(1)  # the pipe to the server; the worker's own output goes to stderr
    os.dup2(2, 1)
    logging.basicConfig(
        stream=sys.stderr,
        format=f"storage worker {os.getpid()}: %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_worker_async(server_fd))
