"""TURN for Local KVS, as AWS requires it for WebRTC ingestion: coturn (Debian's ``coturn``,
the ``turnserver`` binary) as a child process of Local KVS, bound to loopback, handing out
AWS-shaped time-limited credentials (``credentials``) through GetIceServerConfig.

The storage peer is reachable only through it (``server.TurnServer``): coturn relays only
between its own relay addresses, so a peer connection with no TURN server cannot reach a
storage session, as on AWS (docs/wire.md, "TURN").
"""
