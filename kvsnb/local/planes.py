"""Wires the data planes of a Local KVS onto its control plane and signaling relay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .archive import ArchivePlane
from .peer import StorageOptions, StorageSessionManager
from .signaling_rest import SignalingRestPlane
from .storage import StoragePlane
from .store import FragmentStore

if TYPE_CHECKING:
    from .server import LocalKvs


async def build_planes(kvs: LocalKvs) -> None:
    """Create the signaling REST, webrtc-storage and archived-media planes of ``kvs``.

    ``kvs.config.extra["storage"]`` may hold a ``StorageOptions``.
    """
    control, relay = kvs.control, kvs.relay
    assert control is not None and relay is not None
    store = await asyncio.to_thread(FragmentStore, kvs.data_dir)
    options = kvs.config.extra.get("storage") or StorageOptions()
    sessions = StorageSessionManager(control, relay, store, options)
    relay.storage = sessions
    control.events.storage_changed.append(sessions.on_storage_changed)
    control.events.stream_deleted.append(lambda st: store.delete_stream(st.arn))
    kvs.store = store
    kvs.sessions = sessions
    kvs.planes["signaling"] = SignalingRestPlane(control)
    kvs.planes["webrtc"] = StoragePlane(control, sessions)
    kvs.planes["media"] = ArchivePlane(control, store)

    async def close() -> None:
        await sessions.close()
        store.close()

    kvs.on_stop(close)
