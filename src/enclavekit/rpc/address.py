"""Where an RPC endpoint listens or is reached: ``tcp://HOST:PORT``, ``unix:///PATH`` or ``vsock://CID:PORT``.

One parser, one frozen type per family. Everything above the socket is the same for the three families; only
:mod:`enclavekit.rpc.transport` looks at which one it has.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Final

from enclavekit.rpc.errors import AddressInvalid

__all__ = [
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_PORT_ANY",
    "Address",
    "TcpAddress",
    "UnixAddress",
    "VsockAddress",
    "parse_address",
]

VMADDR_CID_ANY: Final = 0xFFFFFFFF
"""Bind to any CID (inside an enclave, listen with ``vsock://any:PORT``)."""
VMADDR_CID_HOST: Final = 2
"""The host's CID as seen from a guest (on Nitro the parent instance is reached at CID 3)."""
VMADDR_PORT_ANY: Final = 0xFFFFFFFF
_U32: Final = 0xFFFFFFFF
_MAX_UNIX_PATH: Final = 107


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "/ \t\r\n"):
            raise AddressInvalid(f"invalid TCP host {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise AddressInvalid(f"TCP port {self.port} is not in 0..65535")

    @property
    def family(self) -> socket.AddressFamily:
        try:
            return socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        except ValueError:
            return socket.AF_INET  # a name: resolved when connecting

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __post_init__(self) -> None:
        if not self.path or "\x00" in self.path or len(self.path.encode()) > _MAX_UNIX_PATH:
            raise AddressInvalid(f"a Unix socket path is 1..{_MAX_UNIX_PATH} bytes without NUL")

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_UNIX

    def __str__(self) -> str:
        return f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class VsockAddress:
    cid: int
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.cid <= _U32 or not 0 <= self.port <= _U32:
            raise AddressInvalid("vsock CID and port are 32-bit unsigned integers")

    @property
    def family(self) -> socket.AddressFamily:
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:  # pragma: no cover - Linux always has it
            raise AddressInvalid("this platform has no AF_VSOCK")
        return family  # type: ignore[no-any-return]

    def __str__(self) -> str:
        cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
        return f"vsock://{cid}:{self.port}"


Address = TcpAddress | UnixAddress | VsockAddress


def _number(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 10:
        raise AddressInvalid(f"{what} {text!r} is not a decimal number")
    return int(text)


def parse_address(text: str | Address) -> Address:
    """Parse ``tcp://HOST:PORT`` (``[v6]`` in brackets), ``unix:///PATH`` or ``vsock://CID:PORT``.

    The vsock CID may be ``any`` (bind on every CID). Raises :class:`AddressInvalid`.
    """
    if isinstance(text, TcpAddress | UnixAddress | VsockAddress):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep and text.startswith("unix:"):
        scheme, rest = "unix", text[len("unix:") :]
    if scheme == "unix":
        return UnixAddress(rest)
    if scheme not in ("tcp", "vsock") or not sep:
        raise AddressInvalid(f"{text!r}: expected tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT")
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        raise AddressInvalid(f"{text!r}: missing :PORT")
    if scheme == "vsock":
        cid = VMADDR_CID_ANY if host == "any" else _number(host, "vsock CID")
        return VsockAddress(cid, _number(port_text, "vsock port"))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressInvalid(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise AddressInvalid(f"{text!r}: IPv6 hosts go in brackets, tcp://[::1]:PORT")
    return TcpAddress(host, _number(port_text, "TCP port"))
