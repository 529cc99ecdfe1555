"""Typed routes: a name plus pydantic request and response models, shared by the client and the server.

Define a route once, import it on both sides::

    class Echo(BaseModel):
        text: str

    ECHO = Route("echo", request=Echo, response=Echo)

    router = Router()

    @router.handler(ECHO)
    async def echo(request: Echo, call: CallContext) -> Echo:
        return Echo(text=request.text)

    reply = await client.call(ECHO, Echo(text="hi"))      # typed: reply is an Echo

Requests are validated by the server against ``request`` (``rpc_invalid_request``), responses by the client
against ``response`` (``rpc_invalid_response``); a handler must return an instance of ``response``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from enclavekit.channel.protocols import AttestedPeer
from enclavekit.errors import ConfigurationError
from enclavekit.rpc.frame import ROUTE_NAME

__all__ = ["CallContext", "Handler", "Route", "Router"]

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Route(Generic[Req, Resp]):
    """A named call with its request and response models."""

    name: str
    request: type[Req]
    response: type[Resp]

    def __post_init__(self) -> None:
        if not ROUTE_NAME.fullmatch(self.name):
            raise ConfigurationError(f"route name {self.name!r}: 1..128 characters of [A-Za-z0-9_.-/]")


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its call besides the request.

    ``peer`` is the caller's verified attestation when the caller attested itself (enclave to enclave);
    ``session_id`` identifies the attested session (None on a plaintext connection); ``deadline`` is in the
    event loop's clock (``asyncio.get_running_loop().time()``). ``client_key`` is the raw 32-byte Ed25519
    public key the caller proved it holds in the handshake (None for an anonymous caller).
    """

    route: str
    request_id: int
    deadline: float
    peer: AttestedPeer | None = None
    session_id: bytes | None = None
    client_key: bytes | None = None


Handler = Callable[[Req, CallContext], Awaitable[Resp]]


@dataclass(frozen=True, slots=True)
class _Entry:
    route: Route[Any, Any]
    handler: Handler[Any, Any]


class Router:
    """The routes a server answers. Adding the same name twice is a configuration error."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def add(self, route: Route[Req, Resp], handler: Handler[Req, Resp]) -> None:
        if route.name in self._entries:
            raise ConfigurationError(f"route {route.name!r} is already registered")
        self._entries[route.name] = _Entry(route, handler)

    def handler(self, route: Route[Req, Resp]) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
        """Decorator form of :meth:`add`."""

        def register(function: Handler[Req, Resp]) -> Handler[Req, Resp]:
            self.add(route, function)
            return function

        return register

    def get(self, name: str) -> _Entry | None:
        return self._entries.get(name)

    def __iter__(self) -> Iterator[Route[Any, Any]]:
        return (entry.route for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
