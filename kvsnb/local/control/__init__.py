"""The ``kinesisvideo`` control plane: signaling channels, streams, media storage
configuration, endpoints and tags, persisted in SQLite (``plane``).

Uses ``core`` only.
"""
