"""The wire layer that kvsnb's client half and Local KVS share: the bytes and rules both
sides speak, and nothing else.

- ``h264``: NAL units, Annex-B/avcC framing, SPS fields, keyframes;
- ``ebml``: Matroska (EBML) reading and writing;
- ``sdp``: the SDP rules of WebRTC ingestion (codecs, directions, profiles);
- ``webrtc``: roles, codec constants, ICE candidate payloads, the profile rewrite;
- ``ice``: which host addresses aioice gathers, scoped per peer;
- ``times``: epoch milliseconds and the time forms of the APIs.

Importing this package loads nothing: each module is imported where it is used, so a Local
KVS worker process that needs ``h264`` does not load aiortc.
"""
