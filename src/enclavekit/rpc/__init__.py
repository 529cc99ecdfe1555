"""Typed RPC over attested sessions: bounded frames, many calls in flight, asyncio client and server.

Transports: ``vsock://CID:PORT`` (Nitro), ``tcp://HOST:PORT`` and ``unix:///PATH`` (simulation, tests); the code
above the socket is the same. The frame format is in ``docs/wire-rpc.md``.

Enclave::

    router = Router()

    @router.handler(ECHO)
    async def echo(request: Echo, call: CallContext) -> Echo:
        return request

    responder = Responder(SessionKeys.generate(), attester=nsm)
    server = RpcServer(router, responder=responder)
    await server.start("vsock://any:5000")

Client::

    client = await RpcClient.connect("tcp://host:5000", initiator=Initiator(verifier))
    reply = await client.call(ECHO, Echo(text="hi"), timeout=5)
"""

from enclavekit.rpc.address import Address, TcpAddress, UnixAddress, VsockAddress, parse_address
from enclavekit.rpc.attested import ChannelStream
from enclavekit.rpc.client import ClientOptions, RpcClient
from enclavekit.rpc.connection import FramedStream, MessageStream
from enclavekit.rpc.errors import (
    AddressInvalid,
    ConnectionClosed,
    ConnectionFailed,
    DeadlineExceeded,
    DuplicateRequest,
    FrameMalformed,
    FrameTooLarge,
    FrameTruncated,
    FrameUnexpected,
    FrameVersionUnsupported,
    HandlerFailed,
    IdleTimeout,
    InvalidRequest,
    InvalidResponse,
    Overloaded,
    ReadTimeout,
    RemoteError,
    UnknownRoute,
    error_from_wire,
)
from enclavekit.rpc.frame import DEFAULT_MAX_FRAME_SIZE, decode_frame
from enclavekit.rpc.routes import CallContext, Handler, Route, Router
from enclavekit.rpc.server import RpcServer, ServerLimits
from enclavekit.rpc.transport import listen, open_connection

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "Address",
    "AddressInvalid",
    "CallContext",
    "ChannelStream",
    "ClientOptions",
    "ConnectionClosed",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DuplicateRequest",
    "FrameMalformed",
    "FrameTooLarge",
    "FrameTruncated",
    "FrameUnexpected",
    "FrameVersionUnsupported",
    "FramedStream",
    "Handler",
    "HandlerFailed",
    "IdleTimeout",
    "InvalidRequest",
    "InvalidResponse",
    "MessageStream",
    "Overloaded",
    "ReadTimeout",
    "RemoteError",
    "Route",
    "Router",
    "RpcClient",
    "RpcServer",
    "ServerLimits",
    "TcpAddress",
    "UnixAddress",
    "UnknownRoute",
    "VsockAddress",
    "decode_frame",
    "error_from_wire",
    "listen",
    "open_connection",
    "parse_address",
]
