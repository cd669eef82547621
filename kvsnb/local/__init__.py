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

from kvsnb.local.core.errors import AwsError
from kvsnb.local.front.server import LocalKvs, LocalKvsConfig
from kvsnb.local.front.sigv4 import StrictKeys
from kvsnb.local.signaling.relay import SignalingLimits

__all__ = ["AwsError", "LocalKvs", "LocalKvsConfig", "SignalingLimits", "StrictKeys"]
