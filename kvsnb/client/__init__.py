"""kvsnb's client services: where KVS is (``target``), the signaling WebSocket client
(``signaling``), storage sessions as master or viewer (``session``) with their step
``timeline``, the ``ingest`` runner, and the trust of Local KVS's CA (``trust``).

They speak to AWS and Local KVS alike over the wire; none of them imports ``kvsnb.local``.
"""
