"""kvsnb: a Jupyter-first toolkit for Amazon Kinesis Video Streams WebRTC ingestion and
storage, with Local KVS, an emulator of the KVS APIs that runs on one machine.

The public surface: ``connect`` (where KVS is), ``MasterSession`` / ``ViewerSession`` (join a
channel's storage session), the media sources and ``check_tracks``, ``ingest``,
``import_file`` (PutMedia), and the ``playback``, ``analysis`` and ``widgets`` subpackages.

Every name is imported on first use (PEP 562): ``import kvsnb`` itself loads neither aiortc
nor pandas, so a process that needs one module (a Local KVS worker, a decoder) stays small.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kvsnb import analysis, playback, widgets
    from kvsnb.client.ingest import IngestResult, Source, ingest, make_source
    from kvsnb.client.session import JoinPolicy, MasterSession, SessionError, ViewerSession
    from kvsnb.client.target import Target, TargetError
    from kvsnb.client.timeline import SessionTimeline
    from kvsnb.errors import KvsnbError
    from kvsnb.launch import connect
    from kvsnb.putmedia import ImportResult, PutMediaError, import_file
    from kvsnb.sources import (
        DroppingTrack,
        FileSource,
        Stamp,
        TestPatternTrack,
        ToneTrack,
        TrackReport,
        check_tracks,
        read_stamp,
    )

# public name -> the module that defines it
_LAZY = {
    "DroppingTrack": "kvsnb.sources",
    "FileSource": "kvsnb.sources",
    "ImportResult": "kvsnb.putmedia",
    "IngestResult": "kvsnb.client.ingest",
    "JoinPolicy": "kvsnb.client.session",
    "KvsnbError": "kvsnb.errors",
    "MasterSession": "kvsnb.client.session",
    "PutMediaError": "kvsnb.putmedia",
    "SessionError": "kvsnb.client.session",
    "SessionTimeline": "kvsnb.client.timeline",
    "Source": "kvsnb.client.ingest",
    "Stamp": "kvsnb.sources",
    "Target": "kvsnb.client.target",
    "TargetError": "kvsnb.client.target",
    "TestPatternTrack": "kvsnb.sources",
    "ToneTrack": "kvsnb.sources",
    "TrackReport": "kvsnb.sources",
    "ViewerSession": "kvsnb.client.session",
    "check_tracks": "kvsnb.sources",
    "connect": "kvsnb.launch",
    "import_file": "kvsnb.putmedia",
    "ingest": "kvsnb.client.ingest",
    "make_source": "kvsnb.client.ingest",
    "read_stamp": "kvsnb.sources",
}
_SUBPACKAGES = ("analysis", "playback", "widgets")

__all__ = [
    "DroppingTrack",
    "FileSource",
    "ImportResult",
    "IngestResult",
    "JoinPolicy",
    "KvsnbError",
    "MasterSession",
    "PutMediaError",
    "SessionError",
    "SessionTimeline",
    "Source",
    "Stamp",
    "Target",
    "TargetError",
    "TestPatternTrack",
    "ToneTrack",
    "TrackReport",
    "ViewerSession",
    "analysis",
    "check_tracks",
    "connect",
    "import_file",
    "ingest",
    "make_source",
    "playback",
    "read_stamp",
    "widgets",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
