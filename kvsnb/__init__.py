"""kvsnb: a Jupyter-first toolkit for Amazon Kinesis Video Streams WebRTC ingestion and
storage, with Local KVS, an emulator of the KVS APIs that runs on one machine.

The public surface: ``connect`` (where KVS is), ``MasterSession`` / ``ViewerSession`` (join a
channel's storage session), the media sources and ``check_tracks``, ``ingest``, and the
``playback`` and ``analysis`` subpackages."""

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import analysis, playback
    from .errors import KvsnbError
    from .ingest import IngestResult, Source, ingest, make_source
    from .media import (
        DroppingTrack,
        FileSource,
        Stamp,
        TestPatternTrack,
        ToneTrack,
        TrackReport,
        check_tracks,
        read_stamp,
    )
    from .session import (
        JoinPolicy,
        MasterSession,
        SessionError,
        StorageSession,
        StorageSessionBase,
        ViewerSession,
    )
    from .target import Target, TargetError, connect
    from .timeline import SessionTimeline

# The public names, imported on first use (PEP 562): ``import kvsnb.h264`` in a worker process
# loads what it asks for, not the whole toolkit.
_LAZY = {
    "analysis": None,
    "playback": None,
    "KvsnbError": "errors",
    "IngestResult": "ingest",
    "Source": "ingest",
    "ingest": "ingest",
    "make_source": "ingest",
    "DroppingTrack": "media",
    "FileSource": "media",
    "Stamp": "media",
    "TestPatternTrack": "media",
    "ToneTrack": "media",
    "TrackReport": "media",
    "check_tracks": "media",
    "read_stamp": "media",
    "JoinPolicy": "session",
    "MasterSession": "session",
    "SessionError": "session",
    "StorageSession": "session",
    "StorageSessionBase": "session",
    "ViewerSession": "session",
    "Target": "target",
    "TargetError": "target",
    "connect": "target",
    "SessionTimeline": "timeline",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for; any other
    submodule (``kvsnb.timeline``, ...) is imported as an attribute access asks for it."""
    module = _LAZY.get(name)
    if name in _LAZY and module is not None:
        value = getattr(import_module(f"{__name__}.{module}"), name)
    elif not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "DroppingTrack",
    "FileSource",
    "IngestResult",
    "JoinPolicy",
    "KvsnbError",
    "MasterSession",
    "SessionError",
    "SessionTimeline",
    "Source",
    "Stamp",
    "StorageSession",
    "StorageSessionBase",
    "Target",
    "TargetError",
    "TestPatternTrack",
    "ToneTrack",
    "TrackReport",
    "ViewerSession",
    "analysis",
    "check_tracks",
    "connect",
    "ingest",
    "make_source",
    "playback",
    "read_stamp",
]
