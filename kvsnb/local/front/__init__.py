"""The front of Local KVS: one aiohttp server on one port (``server``) that routes each
request to its service's plane, checks SigV4 (``sigv4``) and turns AWS errors into their wire
shape, and wires the services together at start.

The top layer: it may import every service; no service imports it.
"""
