"""Local KVS: an emulator of the Amazon Kinesis Video Streams control plane, signaling,
WebRTC storage and archived-media APIs, on one machine, with no AWS account."""

from .errors import AwsError
from .relay import SignalingLimits
from .server import LocalKvs, LocalKvsConfig
from .sigv4 import StrictKeys

__all__ = ["AwsError", "LocalKvs", "LocalKvsConfig", "SignalingLimits", "StrictKeys"]
