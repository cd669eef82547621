"""``SessionPanel``: join a channel's storage session from a notebook, as master or viewer,
and watch it happen.

The panel picks a channel (ListSignalingChannels, or a new one made with its stream and
storage mapping by ``Target.create_storage_channel``), a role (master, or viewer with a
ClientId) and, for a master, a source (``testpattern`` or a media file, ``make_source``).
**Join** runs ``MasterSession.start`` / ``ViewerSession.start`` as a task on the kernel's
event loop; **Stop** runs ``stop``. While joined it shows the session's state
(``on_state``), the setup timeline step by step with durations (``timeline.on_event``),
the frames sent (master: the timeline's per-frame log) or received (viewer:
``received``), and a preview a few times a second: the test pattern's latest frame
(re-rendered by ``TestPatternTrack.render`` from its ``sent`` log) or the viewer's latest
received frame. Errors (``SessionError``, AWS errors, bad input) appear in the panel in
plain words; the panel stays usable.

Not shown, because the session API does not expose it: the bitrate sent (no bytes-sent
counter) and a preview of a file source (``FileSource`` keeps no frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import ipywidgets as widgets
from traitlets import Unicode

from kvsnb.client.ingest import TEST_PATTERN, Source, make_source
from kvsnb.client.session import JoinPolicy, MasterSession, StorageSessionBase, ViewerSession
from kvsnb.client.target import Target, new_client_id
from kvsnb.client.timeline import TimelineEvent
from kvsnb.errors import reap
from kvsnb.launch import connect
from kvsnb.widgets._common import Tasks, describe_error, error_html, table_html, to_jpeg
from kvsnb.wire.webrtc import ROLES, Role

logger = logging.getLogger(__name__)

REFRESH_S = 0.25  # preview and counters: four times a second
RATE_WINDOW_S = 1.0  # frames/s counts the frames of the last second
TIMELINE_COLUMNS = ["step", "t_ms", "delta_ms", "detail"]


class SessionPanel(widgets.VBox):
    """Join / Stop a storage session as master or viewer, with its live state, setup
    timeline, frame counters and a preview (see the module docstring).

    ``target`` defaults to ``connect()`` (an embedded Local KVS, closed with the panel).
    ``policy`` and ``connect_timeout`` go to the session. Observe ``state`` and ``error``.
    """

    state = Unicode(
        "idle", help="The session's state: 'idle' before a join, then MasterSession.state."
    ).tag(sync=False)
    error = Unicode("", help="The last error in plain words; '' when there is none.").tag(
        sync=False
    )

    def __init__(
        self,
        target: Target | None = None,
        *,
        channel: str | None = None,
        role: Role = "MASTER",
        source: str = TEST_PATTERN,
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
        connect_timeout: float = 30.0,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self._own_target = target is None
        self.target = target if target is not None else connect()
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.refresh_s = refresh_s
        self.session: StorageSessionBase | None = None
        self.source: Source | None = None
        self.task: asyncio.Future[Any] | None = None  # the last action (join, stop, create)
        self._tasks = Tasks()
        self._refresher: asyncio.Future[None] | None = None
        self._join_task: asyncio.Future[Any] | None = None
        self._preview_key: object = None
        self._bytes_sample: tuple[float, int] | None = None  # (monotonic s, bytes so far)
        self._bitrate_bps: float | None = None

        self.channel_input = widgets.Dropdown(description="channel", options=[])
        self.refresh_button = widgets.Button(
            description="↻", tooltip="List the channels again", layout={"width": "3em"}
        )
        self.new_channel = widgets.Text(placeholder="new channel name", layout={"width": "14em"})
        self.create_button = widgets.Button(
            description="Create",
            tooltip="Create a channel and a stream of that name, mapped for media storage",
        )
        self.role_input = widgets.ToggleButtons(
            options=[(r.lower(), r) for r in ROLES], value=role, description="role"
        )
        self.client_id_input = widgets.Text(
            value=client_id or new_client_id("viewer"), description="clientId"
        )
        self.source_input = widgets.Text(
            value=str(source), description="source", placeholder="testpattern or a file path"
        )
        self.join_button = widgets.Button(description="Join", button_style="success")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", disabled=True)
        self.state_label = widgets.Label("state: idle")
        self.stats_label = widgets.Label("")
        self.timeline_html = widgets.HTML("")
        self.preview = widgets.Image(format="jpeg", layout={"width": "320px"})
        self.error_html = widgets.HTML("")

        self.refresh_button.on_click(lambda _: self._act(self._list_channels()))
        self.create_button.on_click(lambda _: self._act(self.create_channel()))
        self.join_button.on_click(self._on_join)
        self.stop_button.on_click(lambda _: self._act(self.stop()))
        self.role_input.observe(self._on_role, names="value")
        self._on_role({"new": role})

        self.children = [
            widgets.HBox([self.channel_input, self.refresh_button]),
            widgets.HBox([self.new_channel, self.create_button]),
            self.role_input,
            self.client_id_input,
            self.source_input,
            widgets.HBox([self.join_button, self.stop_button, self.state_label]),
            self.error_html,
            self.stats_label,
            widgets.HBox(
                [self.timeline_html, self.preview], layout=widgets.Layout(align_items="flex-start")
            ),
        ]
        self.refresh_channels()
        if channel is not None:
            self._select(channel)

    def __repr__(self) -> str:
        channel = self.channel_input.value
        return f"<SessionPanel {self.role_input.value.lower()} on {channel!r}: {self.state}>"

    # ------------------------------------------------------------------ channels

    def channel_names(self) -> list[str]:
        """The target's signaling channels, by name (every page of ListSignalingChannels)."""
        pages = self.target.kinesisvideo.get_paginator("list_signaling_channels").paginate()
        return sorted(c["ChannelName"] for page in pages for c in page["ChannelInfoList"])

    def refresh_channels(self) -> None:
        """List the channels again into the dropdown, keeping the selection if it is there."""
        self._set_channels(self.channel_names())

    def _set_channels(self, names: list[str]) -> None:
        current = self.channel_input.value
        self.channel_input.options = names
        if current in names:
            self.channel_input.value = current

    def _select(self, channel: str) -> None:
        names = list(self.channel_input.options)
        if channel not in names:
            self.channel_input.options = sorted([*names, channel])
        self.channel_input.value = channel

    async def _list_channels(self) -> None:
        self._set_channels(await asyncio.to_thread(self.channel_names))

    async def create_channel(self, name: str | None = None) -> None:
        """Create (or reuse) channel ``name`` (default: the text box) with a stream of the
        same name mapped for media storage, and select it."""
        name = (name if name is not None else self.new_channel.value).strip()
        if not name:
            self._show_error("type a name for the new channel first")
            return
        self._show_error("")
        await asyncio.to_thread(self.target.create_storage_channel, name)
        await self._list_channels()
        self._select(name)
        self.new_channel.value = ""

    # ------------------------------------------------------------------ join / stop

    def _act(self, coro: Any) -> asyncio.Future[Any]:
        """Run an action as a task; its errors are shown in the panel."""

        self.task = self._tasks.spawn_guarded(coro, self._show_error)
        return self.task

    def _on_join(self, _: Any) -> None:
        self._buttons(joined=True)  # at once: a second click must not join twice
        self._join_task = self._act(self.join())

    def _on_role(self, change: dict[str, Any]) -> None:
        master = change["new"] == "MASTER"
        self.source_input.disabled = not master
        self.client_id_input.disabled = master

    @property
    def joined(self) -> bool:
        """Whether a session is joining or joined (not yet stopped or failed)."""
        return self.session is not None and self.session.state not in ("closed", "failed")

    @property
    def refreshing(self) -> bool:
        """Whether the panel is refreshing its timeline and figures every ``refresh_s``
        (from a join until the session is stopped)."""
        return self._refresher is not None and not self._refresher.done()

    async def join(self) -> None:
        """Join the selected channel in the selected role and wait until connected.

        Errors are shown in the panel (and re-raised to whoever awaits this directly)."""
        if self.joined:
            self._show_error("already joined: press Stop first")
            return
        channel = self.channel_input.value
        if not channel:
            self._show_error("choose or create a channel first")
            self._buttons(joined=False)
            return
        self._show_error("")
        self.timeline_html.value = ""
        self.preview.value = b""
        self._preview_key = None
        self._bytes_sample = None
        self._bitrate_bps = None
        self._buttons(joined=True)
        try:
            if self.role_input.value == "MASTER":
                spec = self.source_input.value.strip() or TEST_PATTERN
                self.source = await asyncio.to_thread(make_source, spec)
                session: StorageSessionBase = MasterSession(
                    self.target,
                    channel,
                    video=self.source.video,
                    audio=self.source.audio,
                    policy=self.policy,
                )
            else:
                self.source = None
                session = ViewerSession(
                    self.target,
                    channel,
                    client_id=self.client_id_input.value.strip() or None,
                    policy=self.policy,
                )
            self.session = session
            session.on_state(functools.partial(self._on_state, session))
            session.timeline.on_event(functools.partial(self._on_event, session))
            self._start_refresh()
            await session.start(timeout=self.connect_timeout)
        except Exception as exc:
            self._show_error(describe_error(exc))
            await self._teardown()
            raise

    async def stop(self) -> None:
        """Stop the session (also one still joining) and its source."""
        join = self._join_task
        if join is not None and not join.done() and join is not asyncio.current_task():
            join.cancel()
            await reap(join, "the panel's join", logger)
        await self._teardown()

    async def _teardown(self) -> None:
        session = self.session
        if session is not None:
            await session.stop()
        if self.source is not None:
            self.source.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if session is not None:
            self.state = session.state
            self.state_label.value = f"state: {session.state}"
            self._render_timeline(session)
        self.refresh()
        self._buttons(joined=False)

    def _buttons(self, *, joined: bool) -> None:
        self.join_button.disabled = joined
        self.stop_button.disabled = not joined
        for w in (self.channel_input, self.role_input, self.create_button):
            w.disabled = joined
        self.source_input.disabled = joined or self.role_input.value != "MASTER"
        self.client_id_input.disabled = joined or self.role_input.value != "VIEWER"

    # ------------------------------------------------------------------ live display

    def _show_error(self, text: str) -> None:
        self.error = text
        self.error_html.value = error_html(text)

    def _on_state(self, session: StorageSessionBase, state: str) -> None:
        if session is self.session:
            self.state = state
            self.state_label.value = f"state: {state}"

    def _on_event(self, session: StorageSessionBase, event: TimelineEvent) -> None:
        if session is self.session:
            self._render_timeline(session)

    def _render_timeline(self, session: StorageSessionBase) -> None:
        df = session.timeline.to_frame()[TIMELINE_COLUMNS]
        self.timeline_html.value = table_html(df)

    def _start_refresh(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = self._tasks.spawn(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self._sample_bitrate()
                self.refresh()
            except Exception as exc:  # a display glitch must not end the updates
                logger.exception("SessionPanel refresh failed")
                self._show_error(describe_error(exc))
            await asyncio.sleep(self.refresh_s)

    async def _sample_bitrate(self) -> None:
        """Bits per second sent (master) or received (viewer) since the last sample, from
        the session's RTP statistics."""
        session = self.session
        if session is None:
            return
        stats = await session.stats()
        key = "bytes_received" if isinstance(session, ViewerSession) else "bytes_sent"
        total = sum(kind.get(key, 0) for kind in stats.values())
        now = time.monotonic()
        if self._bytes_sample is not None and now > self._bytes_sample[0]:
            t0, b0 = self._bytes_sample
            self._bitrate_bps = max(0.0, (total - b0) * 8 / (now - t0))
        self._bytes_sample = (now, total)

    def _bitrate_text(self) -> str:
        if self._bitrate_bps is None:
            return "bitrate: measuring"
        return f"bitrate: {self._bitrate_bps / 1000:.0f} kbps"

    def refresh(self) -> None:
        """Update the counters and the preview from the session now."""
        session = self.session
        if session is None:
            self.stats_label.value = ""
            return
        if isinstance(session, ViewerSession):
            self._refresh_viewer(session)
        else:
            self._refresh_master(session)

    def _refresh_master(self, session: StorageSessionBase) -> None:
        frames = session.timeline.frames
        now = time.monotonic()
        rate = sum(1 for f in frames[-240:] if now - f[2] <= RATE_WINDOW_S)
        text = f"frames sent: {len(frames)} · {rate} frames/s · {self._bitrate_text()}"
        pattern = self.source.pattern if self.source is not None else None
        if pattern is None:
            text += " · no preview for a file source"
        elif pattern.sent and pattern.sent[-1].frame_index != self._preview_key:
            self._preview_key = pattern.sent[-1].frame_index
            image = pattern.latest_frame()
            if image is not None:
                self.preview.value = to_jpeg(image)
        self.stats_label.value = text

    def _refresh_viewer(self, session: StorageSessionBase) -> None:
        received = session.received
        rows = received.rows
        rate = received.rate(RATE_WINDOW_S)
        text = f"frames received: {len(rows)} · {rate:.0f} frames/s · {self._bitrate_text()}"
        text += f" · audio frames: {received.audio_frames}"
        if rows and rows[-1][2] is not None:
            text += f" · latest master → viewer latency: {rows[-1][0] * 1000 - rows[-1][2]:.0f} ms"
        if received.frames:
            latest = received.frames[-1]
            if latest is not self._preview_key:
                self._preview_key = latest
                self.preview.value = to_jpeg(latest.frame)
        self.stats_label.value = text

    def close(self) -> None:
        """Stop the session (in the background, when an event loop runs), close the widget
        and an owned target. ipywidgets also calls this when the widget is collected."""
        running = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            running = False
        if self.joined and running:
            task = self._tasks.spawn(self.stop())
            if self._own_target:
                task.add_done_callback(lambda _: self.target.close())
        else:
            self._tasks.cancel()
            if self._own_target:
                self.target.close()
        super().close()
