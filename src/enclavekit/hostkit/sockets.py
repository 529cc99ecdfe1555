"""Listening sockets for the host's servers, without loading any web framework."""

from __future__ import annotations

import socket

__all__ = ["free_port", "listen"]


def listen(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port), closed again if it cannot bind.

    Its protocol is ``IPPROTO_TCP`` explicitly, not 0: asyncio turns Nagle off (``TCP_NODELAY``) only on sockets
    that say they are TCP, and without it every keep-alive answer waits ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the usual small race applies: prefer port 0 where one can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
