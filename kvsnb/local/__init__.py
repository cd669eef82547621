"""Local KVS: an emulator of the Amazon Kinesis Video Streams control plane, signaling,
WebRTC storage, media (PutMedia, GetMedia) and archived-media APIs, on one machine, with no
AWS account.

Laid out per AWS service, as moto lays out its services (docs/design.md, "Local KVS"):

- ``front``: the aiohttp server on one port, routing, SigV4 and the wiring of the planes;
- ``control``: ``kinesisvideo``, channels, streams, storage configuration, endpoints;
- ``signaling``: the signaling WebSocket relay and ``kinesis-video-signaling`` REST;
- ``storage``: ``kinesis-video-webrtc-storage``, the storage peers that record sessions;
- ``archive``: ``kinesis-video-archived-media``, the readers of stored fragments;
- ``media``: ``kinesis-video-media``, PutMedia (MKV in, acknowledgements out) and GetMedia;
- ``store``: the fragment store (files and SQLite index) and its Matroska format;
- ``core``: what every service shares: AWS error classes, the botocore-model protocol,
  raw responses, NextToken codec.

Imports go one way, down that list (front → storage, archive, media → signaling → control, store →
core); ``pyproject.toml`` states it as import-linter contracts.
"""

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvsnb.local.core.errors import AwsError
    from kvsnb.local.front.server import LocalKvs, LocalKvsConfig
    from kvsnb.local.front.sigv4 import StrictKeys
    from kvsnb.local.signaling.relay import SignalingLimits

__all__ = ["AwsError", "LocalKvs", "LocalKvsConfig", "SignalingLimits", "StrictKeys"]

# Imported on first use (PEP 562), so that a worker process importing one service module does
# not load the server.
_LAZY = {
    "AwsError": "kvsnb.local.core.errors",
    "LocalKvs": "kvsnb.local.front.server",
    "LocalKvsConfig": "kvsnb.local.front.server",
    "StrictKeys": "kvsnb.local.front.sigv4",
    "SignalingLimits": "kvsnb.local.signaling.relay",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for; a service
    subpackage (``kvsnb.local.store``, ...) as an attribute access asks for it."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
