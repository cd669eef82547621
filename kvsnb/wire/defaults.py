"""Defaults both halves share: the region when none is given, and the loopback address every
server binds to and every local peer gathers on unless told otherwise."""

DEFAULT_REGION = "us-west-2"
LOOPBACK = "127.0.0.1"
