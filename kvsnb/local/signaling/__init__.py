"""Signaling: the WebSocket relay that routes SDP and ICE between masters, viewers and storage
sessions (``relay``), and the ``kinesis-video-signaling`` REST API (``rest``).

Uses ``control`` (channels) and ``core``.
"""
