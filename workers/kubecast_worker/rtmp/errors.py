"""Errors of the RTMP ingest front."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent something that is not RTMP as we speak it; the connection is dropped.

    The message is logged, so it must describe the bytes, never quote them: a stream key
    may be inside whatever the peer sent.
    """


class SilentPeer(Exception):
    """The peer closed the connection without sending a single byte.

    That is what TCP health checks (a Kubernetes ``tcpSocket`` probe, a load balancer)
    do, so it is neither logged loudly nor counted as a protocol error.
    """
