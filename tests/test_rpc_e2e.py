"""RPC end to end over real loopback TCP and Unix sockets, attested and plaintext.

Real sockets, a real asyncio server and client, the real channel (HPKE, ChaCha20-Poly1305, Ed25519) with the
unsafe test attester standing in for the NSM.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from enclavekit.attestation.errors import MeasurementMismatch
from enclavekit.channel import Initiator, Mode, Responder, SessionKeys
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.errors import ConfigurationError
from enclavekit.rpc import (
    CallContext,
    ClientOptions,
    ConnectionClosed,
    ConnectionFailed,
    DeadlineExceeded,
    HandlerFailed,
    InvalidRequest,
    InvalidResponse,
    Overloaded,
    Route,
    Router,
    RpcClient,
    RpcServer,
    ServerLimits,
    UnknownRoute,
)
from enclavekit.rpc.transport import listen, open_connection
from tests.polling import wait_for_async

GOOD = b"\x01" * 32
PEER = b"\x02" * 32


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class Sleep(BaseModel):
    seconds: float


class Number(BaseModel):
    value: int


class Whoami(BaseModel):
    measurement: str | None
    session_id: str | None


ECHO = Route("echo", Echo, Echo)
SLEEP = Route("sleep", Sleep, Echo)
FAIL = Route("fail", Echo, Echo)
BOOM = Route("boom", Echo, Echo)
WRONG_TYPE = Route("wrong-type", Echo, Echo)
WHOAMI = Route("whoami", Echo, Whoami)


@dataclass
class App:
    """The enclave app under test; records what its handlers saw."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    router: Router = field(default_factory=Router)

    def __post_init__(self) -> None:
        r = self.router

        @r.handler(ECHO)
        async def echo(request: Echo, call: CallContext) -> Echo:
            return Echo(text=request.text.upper())

        @r.handler(SLEEP)
        async def sleep(request: Sleep, call: CallContext) -> Echo:
            self.started += 1
            try:
                await asyncio.sleep(request.seconds)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return Echo(text=f"slept {request.seconds}")

        @r.handler(FAIL)
        async def fail(request: Echo, call: CallContext) -> Echo:
            raise MeasurementMismatch(f"refusing {request.text}")

        @r.handler(BOOM)
        async def boom(request: Echo, call: CallContext) -> Echo:
            raise RuntimeError("secret internal detail: hunter2")

        @r.handler(WRONG_TYPE)
        async def wrong_type(request: Echo, call: CallContext) -> Echo:
            return Whoami(measurement=None, session_id=None)  # type: ignore[return-value]

        @r.handler(WHOAMI)
        async def whoami(request: Echo, call: CallContext) -> Whoami:
            peer = call.peer
            return Whoami(
                measurement=None if peer is None else peer.measurements["measurement"].hex(),
                session_id=None if call.session_id is None else call.session_id.hex(),
            )


@dataclass
class Enclave:
    attester: UnsafeTestAttester = field(default_factory=lambda: UnsafeTestAttester.generate(measurement=GOOD))

    def __post_init__(self) -> None:
        self.keys = SessionKeys.generate()
        self.responder = Responder(self.keys, self.attester)
        self.verifier = UnsafeTestVerifier(self.attester.root, measurements=(GOOD,))


def address_for(kind: str, tmp_path: Path) -> str:
    return "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{tmp_path / 'rpc.sock'}"


@contextlib.asynccontextmanager
async def serving(
    kind: str, tmp_path: Path, *, attested: bool = True, limits: ServerLimits | None = None, app: App | None = None
) -> AsyncIterator[tuple[RpcServer, str, Enclave, App]]:
    app = app or App()
    enclave = Enclave()
    server = (
        RpcServer(app.router, responder=enclave.responder, limits=limits)
        if attested
        else RpcServer(app.router, unsafe_plaintext=True, limits=limits)
    )
    bound = await server.start(address_for(kind, tmp_path))
    try:
        yield server, str(bound), enclave, app
    finally:
        await server.close()


async def connect(address: str, enclave: Enclave, *, attested: bool = True, **options: object) -> RpcClient:
    if attested:
        return await RpcClient.connect(address, initiator=Initiator(enclave.verifier), options=ClientOptions(**options))  # type: ignore[arg-type]
    return await RpcClient.connect(address, unsafe_plaintext=True, options=ClientOptions(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("attested", [True, False], ids=["attested", "plaintext"])
async def test_call_round_trips(kind: str, attested: bool, tmp_path: Path) -> None:
    async with (
        serving(kind, tmp_path, attested=attested) as (_, address, enclave, _app),
        await connect(address, enclave, attested=attested) as client,
    ):
        assert await client.call(ECHO, Echo(text="hello")) == Echo(text="HELLO")
        if attested:
            assert client.peer is not None
            assert client.peer.measurements["measurement"] == GOOD
        else:
            assert client.peer is None


async def test_attested_session_id_is_the_same_on_both_sides(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        seen = await client.call(WHOAMI, Echo(text=""))
        session = client.stream.session  # type: ignore[attr-defined]
        assert seen.session_id == session.session_id.hex()
        assert seen.measurement is None  # the client did not attest itself


async def test_cached_mode_over_sockets(tmp_path: Path) -> None:
    from datetime import timedelta

    async with serving("tcp", tmp_path) as (_, address, enclave, _app):
        enclave.responder.refresh_document()
        initiator = Initiator(enclave.verifier, modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5))
        async with await RpcClient.connect(address, initiator=initiator) as client:
            assert await client.call(ECHO, Echo(text="cached")) == Echo(text="CACHED")


async def test_mutual_attestation_reaches_the_handler(tmp_path: Path) -> None:
    server_enclave, client_enclave = Enclave(), Enclave(UnsafeTestAttester.generate(measurement=PEER))
    client_enclave.responder.refresh_document()
    responder = Responder(
        server_enclave.keys,
        server_enclave.attester,
        peer_verifier=UnsafeTestVerifier(client_enclave.attester.root, measurements=(PEER,)),
        require_peer_attestation=True,
    )
    app = App()
    async with RpcServer(app.router, responder=responder) as server:
        address = await server.start("tcp://127.0.0.1:0")
        initiator = Initiator(server_enclave.verifier, attestation=client_enclave.responder.local_attestation)
        async with await RpcClient.connect(address, initiator=initiator) as client:
            seen = await client.call(WHOAMI, Echo(text=""))
    assert seen.measurement == PEER.hex()


async def test_many_requests_are_in_flight_at_once_on_one_connection(tmp_path: Path) -> None:
    async with (
        serving("tcp", tmp_path, limits=ServerLimits(max_in_flight=256)) as (_, address, enclave, _app),
        await connect(address, enclave, max_in_flight=200) as client,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(client.call(SLEEP, Sleep(seconds=0.3)) for _ in range(100)))
        elapsed = loop.time() - started
        echoes = await asyncio.gather(*(client.call(ECHO, Echo(text=f"m{i}")) for i in range(500)))
    assert all(r.text == "slept 0.3" for r in results)
    assert elapsed < 2.0  # concurrent: 100 x 0.3 s one at a time would take 30 s
    assert [e.text for e in echoes] == [f"M{i}" for i in range(500)]  # each reply matched to its request id


async def test_timeout_raises_deadline_exceeded_and_cancels_the_handler(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, app), await connect(address, enclave) as client:
        with pytest.raises(DeadlineExceeded):
            await client.call(SLEEP, Sleep(seconds=30), timeout=0.2)
        await asyncio.wait_for(app.cancelled.wait(), 2)
        assert await client.call(ECHO, Echo(text="still fine")) == Echo(text="STILL FINE")


async def test_cancelled_call_is_cancelled_on_the_server(tmp_path: Path) -> None:
    async with serving("unix", tmp_path) as (_, address, enclave, app), await connect(address, enclave) as client:
        call = asyncio.ensure_future(client.call(SLEEP, Sleep(seconds=30)))
        await wait_for_async(lambda: app.started, 5, what="the server started the call")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(app.cancelled.wait(), 2)


async def test_server_enforces_its_own_maximum_request_time(tmp_path: Path) -> None:
    limits = ServerLimits(max_request_timeout=0.2)
    async with (
        serving("tcp", tmp_path, limits=limits) as (_, address, enclave, app),
        await connect(address, enclave) as client,
    ):
        with pytest.raises(DeadlineExceeded):
            await client.call(SLEEP, Sleep(seconds=30), timeout=10)
        assert app.cancelled.is_set()


async def test_handler_errors_arrive_as_their_enclavekit_class(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(MeasurementMismatch, match="refusing pcr0"):
            await client.call(FAIL, Echo(text="pcr0"))


async def test_handler_crash_is_reported_without_its_details(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(HandlerFailed) as caught:
            await client.call(BOOM, Echo(text="x"))
        assert "hunter2" not in str(caught.value)
        assert await client.call(ECHO, Echo(text="after")) == Echo(text="AFTER")


async def test_handler_returning_the_wrong_type_is_a_handler_failure(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(HandlerFailed):
            await client.call(WRONG_TYPE, Echo(text="x"))


async def test_unknown_route_is_refused_by_name(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(UnknownRoute):
            await client.call(Route("nope", Echo, Echo), Echo(text="x"))


async def test_request_that_fails_validation_is_refused_without_echoing_it(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.call(Route("echo", Number, Echo), Number(value=424242))
        assert "424242" not in caught.value.message
        assert "text" in caught.value.message


async def test_response_that_fails_validation_is_refused_by_the_client(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(InvalidResponse):
            await client.call(Route("echo", Echo, Number), Echo(text="not a number"))


async def test_client_refuses_to_send_the_wrong_request_type(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        with pytest.raises(TypeError):
            await client.call(ECHO, Number(value=1))  # type: ignore[arg-type]


async def test_requests_over_the_in_flight_limit_are_refused_as_overloaded(tmp_path: Path) -> None:
    limits = ServerLimits(max_in_flight=2)
    async with (
        serving("tcp", tmp_path, limits=limits) as (_, address, enclave, _app),
        await connect(address, enclave) as client,
    ):
        results = await asyncio.gather(
            *(client.call(SLEEP, Sleep(seconds=0.3)) for _ in range(6)), return_exceptions=True
        )
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    assert len(overloaded) == 4
    assert sum(isinstance(r, Echo) for r in results) == 2


async def test_plaintext_must_be_asked_for_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        RpcServer(Router())
    with pytest.raises(ConfigurationError):
        await RpcClient.connect("tcp://127.0.0.1:1")


async def test_connection_refused_is_connection_failed(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed):
        await RpcClient.connect(f"unix://{tmp_path / 'nobody.sock'}", unsafe_plaintext=True)


async def test_vsock_connect_takes_the_same_path_and_fails_cleanly_here() -> None:
    """No vsock device on this machine: the AF_VSOCK socket is created and the connect fails as ConnectionFailed."""
    with pytest.raises(ConnectionFailed, match="vsock://16:5000"):
        await RpcClient.connect("vsock://16:5000", unsafe_plaintext=True, options=ClientOptions(connect_timeout=2))


async def test_server_close_ends_connections_and_fails_pending_calls(tmp_path: Path) -> None:
    app = App()
    enclave = Enclave()
    server = RpcServer(app.router, responder=enclave.responder, limits=ServerLimits(shutdown_grace=0.1))
    address = await server.start("tcp://127.0.0.1:0")
    client = await connect(str(address), enclave)
    call = asyncio.ensure_future(client.call(SLEEP, Sleep(seconds=30)))
    await wait_for_async(lambda: app.started, 5, what="the server started the call")
    await server.close()
    with pytest.raises(ConnectionClosed):
        await call
    assert app.cancelled.is_set()
    await client.close()


async def test_unix_socket_file_is_removed_on_close(tmp_path: Path) -> None:
    async with serving("unix", tmp_path) as (_server, address, _enclave, _app):
        assert Path(address.removeprefix("unix://")).exists()
    assert not Path(address.removeprefix("unix://")).exists()


async def test_tcp_connections_disable_nagle_on_both_ends() -> None:
    """Small frames must not wait for delayed ACKs (40 ms each with Nagle: 64 calls in flight crawled)."""
    accepted: asyncio.Queue[int] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server, bound = await listen("tcp://127.0.0.1:0", handler)
    _, writer = await open_connection(bound)
    assert writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert await asyncio.wait_for(accepted.get(), 2)
    writer.close()
    server.close()


async def test_concurrent_calls_over_tcp_are_not_held_back(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (_, address, enclave, _app), await connect(address, enclave) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(20):
            await asyncio.gather(*(client.call(ECHO, Echo(text="x")) for _ in range(8)))
        assert loop.time() - started < 0.5  # 20 rounds x 40 ms if small writes waited for ACKs


async def test_a_request_running_longer_than_the_idle_timeout_keeps_its_connection(tmp_path: Path) -> None:
    limits = ServerLimits(idle_timeout=0.3)
    async with (
        serving("tcp", tmp_path, limits=limits) as (server, address, enclave, _app),
        await connect(address, enclave) as client,
    ):
        assert await client.call(SLEEP, Sleep(seconds=1.0)) == Echo(text="slept 1.0")  # 3 idle timeouts long
        assert await client.call(ECHO, Echo(text="still here")) == Echo(text="STILL HERE")
        assert server.connection_errors["idle_timeout"] == 0


async def test_steady_calls_keep_a_connection_open_and_silence_then_closes_it(tmp_path: Path) -> None:
    limits = ServerLimits(idle_timeout=0.3)
    async with (
        serving("tcp", tmp_path, limits=limits) as (server, address, enclave, _app),
        await connect(address, enclave) as client,
    ):
        for i in range(10):  # one call every 0.15 s for 1.5 s: never 0.3 s of silence
            assert await client.call(ECHO, Echo(text=f"{i}")) == Echo(text=f"{i}")
            await asyncio.sleep(0.15)
        assert server.connection_errors["idle_timeout"] == 0 and not client.closed
        await wait_for_async(lambda: client.closed, 5, what="the silent connection is closed")
        assert server.connection_errors["idle_timeout"] == 1
        assert client.error is not None and client.error.code == "idle_timeout"  # the server said why
