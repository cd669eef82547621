"""Wires the data planes of a Local KVS onto its control plane and signaling relay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .archive import ArchivePlane
from .hls import HlsPlane
from .images import ImagesPlane
from .peer import StorageOptions, StorageSessionManager
from .signaling_rest import SignalingRestPlane
from .storage import StoragePlane
from .store import FragmentStore
from .workers import StorageWorkerPool

if TYPE_CHECKING:
    from .server import LocalKvs


class CompositePlane:
    """One plane served by several objects: an operation (or ``handle_get``) is looked up on
    each part in turn."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def __getattr__(self, name: str) -> Any:
        for part in self.parts:
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)


async def build_planes(kvs: LocalKvs) -> None:
    """Create the signaling REST, webrtc-storage and archived-media planes of ``kvs``.

    ``kvs.config.extra["storage"]`` may hold a ``StorageOptions``; with
    ``kvs.config.storage_workers`` > 0 the storage sessions run in that many worker
    processes (``workers``).
    """
    control, relay = kvs.control, kvs.relay
    assert control is not None and relay is not None
    store = await asyncio.to_thread(FragmentStore, kvs.data_dir)
    options = kvs.config.extra.get("storage") or StorageOptions()
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
    kvs.planes["signaling"] = SignalingRestPlane(control)
    kvs.planes["webrtc"] = StoragePlane(control, sessions)
    kvs.planes["media"] = CompositePlane(
        ArchivePlane(control, store),
        HlsPlane(control, store, control.endpoints),
        ImagesPlane(control, store),
    )

    async def close() -> None:
        await sessions.close()
        store.close()

    kvs.on_stop(close)
