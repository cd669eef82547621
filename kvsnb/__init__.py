"""kvsnb: a Jupyter-first toolkit for Amazon Kinesis Video Streams WebRTC ingestion and
storage, with Local KVS, an emulator of the KVS APIs that runs on one machine.

The public surface: ``connect`` (where KVS is), ``MasterSession`` / ``ViewerSession`` (join a
channel's storage session), the media sources and ``check_tracks``, ``ingest``, and the
``playback`` and ``analysis`` subpackages."""

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
