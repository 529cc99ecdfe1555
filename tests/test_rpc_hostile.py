"""A hostile relay and hostile peers: every attack is detected with a specific error; the server survives all.

The relay is a real TCP proxy between a real client and a real server. It splits the byte stream into channel
messages (6-byte headers) and can flip bits, replay, reorder, drop, truncate or substitute them, exactly what
an untrusted host could do to the traffic it forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from pydantic import BaseModel

from enclavekit.attestation.errors import MeasurementMismatch, SignatureInvalid
from enclavekit.channel import (
    HandshakeAborted,
    HandshakeDowngrade,
    HandshakeTimeout,
    Initiator,
    Mode,
    RecordOutOfOrder,
    RecordReplayed,
    RecordTampered,
    RecordTruncated,
    Responder,
    SessionKeys,
    SessionTruncated,
)
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import HEADER_SIZE, ClientFinish, ClientHello, ServerHello
from enclavekit.errors import Error
from enclavekit.rpc import (
    CallContext,
    ClientOptions,
    ConnectionClosed,
    Route,
    Router,
    RpcClient,
    RpcServer,
    ServerLimits,
)
from enclavekit.rpc.attested import ChannelStream, utc_now
from enclavekit.rpc.connection import connect as connect_messages
from enclavekit.rpc.transport import open_connection
from tests.polling import wait_for_async

GOOD = b"\x01" * 32
MARKER = "PLAINTEXT-MARKER-7f3a"


class Echo(BaseModel):
    text: str


ECHO = Route("echo", Echo, Echo)
router = Router()


@router.handler(ECHO)
async def _echo(request: Echo, call: CallContext) -> Echo:
    return Echo(text=f"{request.text} / reply {MARKER}-response")


# --- the relay ------------------------------------------------------------------------------------------------

Action = tuple[list[bytes], bool]
"""What the relay forwards for one message (possibly nothing, or several), and whether it then hangs up."""
Tamper = Callable[[int, bytes], Action]


def forward(index: int, message: bytes) -> Action:
    return [message], False


@dataclass
class Relay:
    """A TCP man-in-the-middle. ``c2s``/``s2c`` see each whole message with its index in that direction."""

    target: str
    c2s: Tamper = forward
    s2c: Tamper = forward
    seen: bytearray = field(default_factory=bytearray)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp://{host}:{port}"

    async def close(self) -> None:
        self._server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await open_connection(self.target)
        pumps = [
            asyncio.ensure_future(self._pump(client_reader, server_writer, self.c2s)),
            asyncio.ensure_future(self._pump(server_reader, client_writer, self.s2c)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tamper: Tamper) -> None:
        index = 0
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                message = header + await reader.readexactly(int.from_bytes(header[2:6], "big"))
                self.seen += message
                chunks, hang_up = tamper(index, message)
                index += 1
                for chunk in chunks:
                    writer.write(chunk)
                await writer.drain()
                if hang_up:
                    return


def flip(message: bytes, at: int = -1) -> bytes:
    data = bytearray(message)
    data[at] ^= 0x01
    return bytes(data)


def on(index: int, action: Callable[[bytes], Action]) -> Tamper:
    def tamper(i: int, message: bytes) -> Action:
        return action(message) if i == index else ([message], False)

    return tamper


@dataclass
class Setup:
    server: RpcServer
    address: str
    verifier: UnsafeTestVerifier
    attester: UnsafeTestAttester
    responder: Responder


@contextlib.asynccontextmanager
async def enclave(limits: ServerLimits | None = None, measurement: bytes = GOOD) -> AsyncIterator[Setup]:
    attester = UnsafeTestAttester.generate(measurement=measurement)
    responder = Responder(SessionKeys.generate(), attester)
    server = RpcServer(router, responder=responder, limits=limits)
    address = await server.start("tcp://127.0.0.1:0")
    try:
        yield Setup(server, str(address), UnsafeTestVerifier(attester.root, measurements=(GOOD,)), attester, responder)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def relayed(setup: Setup, **tampers: Tamper) -> AsyncIterator[Relay]:
    relay = Relay(setup.address, **tampers)
    relay.address = await relay.start()  # type: ignore[attr-defined]
    try:
        yield relay
    finally:
        await relay.close()


async def connect(address: str, setup: Setup, **initiator_options: object) -> RpcClient:
    initiator = Initiator(setup.verifier, **initiator_options)  # type: ignore[arg-type]
    return await RpcClient.connect(address, initiator=initiator, options=ClientOptions(default_timeout=5))


async def wait_for_code(server: RpcServer, code: str) -> None:
    await wait_for_async(lambda: server.connection_errors[code], 2, what=f"the server records {code}")


# --- the host sees no plaintext -------------------------------------------------------------------------------


async def test_relay_sees_no_plaintext() -> None:
    async with (
        enclave() as setup,
        relayed(setup) as relay,
        await connect(relay.address, setup) as client,  # type: ignore[attr-defined]
    ):
        reply = await client.call(ECHO, Echo(text=f"{MARKER}-request"))
    assert MARKER in reply.text
    assert MARKER.encode() not in relay.seen
    assert b"echo" not in relay.seen  # not even the route name
    assert len(relay.seen) > 0


async def test_relay_would_see_plaintext_without_the_channel() -> None:
    """The control: the same call over an unsafe plaintext connection puts the marker on the wire."""
    server = RpcServer(router, unsafe_plaintext=True)
    address = await server.start("tcp://127.0.0.1:0")
    relay = Relay(str(address))  # RPC frames have the same 6-byte header layout, so the relay splits them too
    relay_address = await relay.start()
    try:
        async with await RpcClient.connect(relay_address, unsafe_plaintext=True) as client:
            await client.call(ECHO, Echo(text=f"{MARKER}-request"))
        assert MARKER.encode() in relay.seen
    finally:
        await relay.close()
        await server.close()


# --- records: each attack, its error --------------------------------------------------------------------------


async def test_bit_flip_in_a_response_is_record_tampered() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([flip(m)], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(RecordTampered):
            await client.call(ECHO, Echo(text="x"))
        await client.close()


async def test_bit_flip_in_a_request_is_record_tampered_at_the_enclave() -> None:
    async with enclave() as setup, relayed(setup, c2s=on(2, lambda m: ([flip(m, 20)], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(SessionTruncated):  # the enclave hangs up without a close record
            await client.call(ECHO, Echo(text="x"))
        await wait_for_code(setup.server, "record_tampered")
        await client.close()


async def test_replayed_response_is_record_replayed() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([m, m], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        await client.call(ECHO, Echo(text="first"))
        with pytest.raises((RecordReplayed, ConnectionClosed)):
            await client.call(ECHO, Echo(text="second"))
        assert isinstance(client.error, RecordReplayed)
        await client.close()


async def test_replayed_request_is_record_replayed_at_the_enclave() -> None:
    async with enclave() as setup, relayed(setup, c2s=on(2, lambda m: ([m, m], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with contextlib.suppress(Error):
            await client.call(ECHO, Echo(text="pay once"))
        await wait_for_code(setup.server, "record_replayed")
        await client.close()


def _reorder() -> Tamper:
    held: list[bytes] = []

    def tamper(index: int, message: bytes) -> Action:
        if index == 1:
            held.append(message)
            return [], False
        if index == 2:
            return [message, *held], False
        return [message], False

    return tamper


async def test_reordered_responses_are_record_out_of_order() -> None:
    async with enclave() as setup, relayed(setup, s2c=_reorder()) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        results = await asyncio.gather(
            client.call(ECHO, Echo(text="a")), client.call(ECHO, Echo(text="b")), return_exceptions=True
        )
        assert all(isinstance(r, RecordOutOfOrder) for r in results)
        await client.close()


async def test_dropped_response_is_record_out_of_order() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        results = await asyncio.gather(
            client.call(ECHO, Echo(text="a")), client.call(ECHO, Echo(text="b")), return_exceptions=True
        )
        assert all(isinstance(r, RecordOutOfOrder) for r in results)
        await client.close()


async def test_response_cut_short_is_record_truncated() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([m[: len(m) // 2]], True))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(RecordTruncated):
            await client.call(ECHO, Echo(text="x"))
        await client.close()


async def test_connection_cut_between_records_is_session_truncated() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([], True))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(SessionTruncated):
            await client.call(ECHO, Echo(text="x"))
        await client.close()


async def test_rewritten_record_version_is_record_tampered() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(1, lambda m: ([bytes([m[0] ^ 3]) + m[1:]], False))) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(Error) as caught:
            await client.call(ECHO, Echo(text="x"))
        assert caught.value.code in ("record_tampered", "record_malformed")
        await client.close()


# --- handshake: substitution, downgrade, wrong enclave --------------------------------------------------------


def _substitute_key_share(message: bytes) -> Action:
    finish = ClientFinish.from_bytes(message)
    relay_share = SessionKeys.generate().bound.kem_public_key
    return [ClientFinish(finish.version, relay_share, finish.confirm).to_bytes()], False


async def test_relay_substituting_its_key_share_is_refused() -> None:
    async with enclave() as setup, relayed(setup, c2s=on(1, _substitute_key_share)) as relay:
        client = await connect(relay.address, setup)  # type: ignore[attr-defined]
        with pytest.raises(HandshakeAborted) as caught:
            await client.call(ECHO, Echo(text="x"))
        assert caught.value.peer_code == "handshake_confirmation_failed"
        await wait_for_code(setup.server, "handshake_confirmation_failed")
        await client.close()


def _substitute_document_key(message: bytes) -> Action:
    hello = ServerHello.from_bytes(message)
    start = hello.document.index(b"\x01", hello.document.index(b"public_key"))
    forged = bytearray(hello.document)
    forged[start + 1 : start + 33] = SessionKeys.generate().bound.kem_public_key
    return [ServerHello(hello.binding, bytes(forged), hello.signature).to_bytes()], False


async def test_relay_substituting_the_enclave_key_is_refused() -> None:
    async with enclave() as setup, relayed(setup, s2c=on(0, _substitute_document_key)) as relay:
        with pytest.raises(SignatureInvalid):
            await connect(relay.address, setup)  # type: ignore[attr-defined]


async def test_relay_substituting_its_own_enclave_is_refused() -> None:
    """The relay answers with its own enclave (right code, but its document chains to an untrusted root)."""
    async with enclave() as setup, enclave() as impostor, relayed(impostor) as relay:
        with pytest.raises(SignatureInvalid):
            await connect(relay.address, setup)  # type: ignore[attr-defined]


def _strip_fresh(message: bytes) -> Action:
    hello = ClientHello.from_bytes(message)
    return [ClientHello(hello.versions, frozenset({Mode.CACHED}), hello.nonce).to_bytes()], False


async def test_relay_downgrading_the_attestation_mode_is_refused() -> None:
    async with enclave() as setup, relayed(setup, c2s=on(0, _strip_fresh)) as relay:
        setup.responder.refresh_document()
        with pytest.raises(HandshakeDowngrade):
            await connect(
                relay.address,  # type: ignore[attr-defined]
                setup,
                modes=(Mode.FRESH, Mode.CACHED),
                max_document_age=timedelta(minutes=5),
            )


async def test_relay_downgrading_the_version_is_refused() -> None:
    def lower_version(message: bytes) -> Action:
        return [b"\x00" + message[1:]], False

    async with enclave() as setup, relayed(setup, c2s=on(0, lower_version)) as relay:
        with pytest.raises(HandshakeAborted) as caught:
            await connect(relay.address, setup)  # type: ignore[attr-defined]
        assert caught.value.peer_code == "handshake_version_unsupported"


async def test_client_pinning_another_measurement_refuses_the_enclave() -> None:
    async with enclave(measurement=b"\x09" * 32) as setup:
        with pytest.raises(MeasurementMismatch):
            await connect(setup.address, setup)


# --- garbage on the wire never crashes the server -------------------------------------------------------------


GARBAGE = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: enclave\r\n\r\n", id="http"),
    pytest.param(bytes(64), id="zeros"),
    pytest.param(os.urandom(4096), id="random"),
    pytest.param(b"\x01\x01\xff\xff\xff\xff", id="oversized-length"),
    pytest.param(b"\x01\x10\x00\x00\x00\x20" + bytes(32), id="record-before-handshake"),
    pytest.param(b"\x01\x01\x00\x00\x00\x05hello", id="short-hello"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_closes_only_that_connection(garbage: bytes) -> None:
    async with enclave(ServerLimits(handshake_timeout=2, read_timeout=1)) as setup:
        reader, writer = await open_connection(setup.address)
        writer.write(garbage)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3)  # the server hangs up (after an alert)
        writer.close()
        assert answer == b"" or answer[1] == 0x0F  # nothing, or an alert
        assert sum(setup.server.connection_errors.values()) == 1
        assert setup.server.connection_errors["unexpected"] == 0
        async with await connect(setup.address, setup) as client:  # and the server carries on
            assert (await client.call(ECHO, Echo(text="ok"))).text.startswith("ok")


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_closes_only_that_plaintext_connection(garbage: bytes) -> None:
    server = RpcServer(router, unsafe_plaintext=True, limits=ServerLimits(read_timeout=1))
    address = await server.start("tcp://127.0.0.1:0")
    try:
        reader, writer = await open_connection(address)
        writer.write(garbage)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 3)
        writer.close()
        assert server.connection_errors["unexpected"] == 0
        async with await RpcClient.connect(address, unsafe_plaintext=True) as client:
            assert (await client.call(ECHO, Echo(text="ok"))).text.startswith("ok")
    finally:
        await server.close()


async def test_oversized_record_length_is_refused_at_once_after_the_handshake() -> None:
    async with enclave(ServerLimits(read_timeout=30)) as setup:
        connection = await connect_messages(setup.address)
        stream = await ChannelStream.initiate(connection, Initiator(setup.verifier))
        started = asyncio.get_running_loop().time()
        connection.write(b"\x01\x10\xff\xff\xff\xff")  # a record announcing 4 GiB
        await wait_for_code(setup.server, "message_too_large")
        assert asyncio.get_running_loop().time() - started < 1  # refused from the header, not by a timeout
        await stream.close()


async def test_slowloris_cannot_exhaust_the_server() -> None:
    """Connections that trickle bytes hold a slot for at most the handshake timeout; then legit clients get in."""
    limits = ServerLimits(max_connections=4, handshake_timeout=0.6, read_timeout=0.4)
    async with enclave(limits) as setup:
        hello = ClientHello((1,), frozenset({Mode.FRESH}), bytes(32)).to_bytes()

        async def trickle() -> None:
            _, writer = await open_connection(setup.address)
            with contextlib.suppress(ConnectionError):
                for byte in hello:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            writer.close()

        attackers = [asyncio.ensure_future(trickle()) for _ in range(4)]
        await wait_for_async(lambda: setup.server.connection_count == 4, 5, what="the 4 trickling connections are in")
        with pytest.raises(HandshakeAborted) as caught:  # full: refused at once, not queued
            await connect(setup.address, setup)
        assert caught.value.peer_code == "rpc_overloaded"
        # the trickling connections hit the handshake timeout (0.6 s) and are cut
        await wait_for_async(lambda: setup.server.connection_count == 0, 5, what="the trickling connections are cut")
        async with await connect(setup.address, setup) as client:
            assert (await client.call(ECHO, Echo(text="served"))).text.startswith("served")
        for attacker in attackers:
            attacker.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
        assert setup.server.connection_errors["handshake_timeout"] + setup.server.connection_errors["read_timeout"] == 4


async def test_slowloris_inside_a_session_is_cut_by_the_read_timeout() -> None:
    async with enclave(ServerLimits(read_timeout=0.3)) as setup:
        connection = await connect_messages(setup.address)
        stream = await ChannelStream.initiate(connection, Initiator(setup.verifier))
        record = stream.session.seal(b"\x01" * 100, now=utc_now())
        with contextlib.suppress(ConnectionClosed):  # the server hangs up on us mid-trickle
            for byte in record[:40]:  # a header, then a trickle
                connection.write(bytes([byte]))
                await asyncio.sleep(0.05)
        await wait_for_code(setup.server, "read_timeout")


async def test_idle_connection_is_closed_after_the_idle_timeout() -> None:
    async with enclave(ServerLimits(idle_timeout=0.3)) as setup:
        client = await connect(setup.address, setup)
        await client.call(ECHO, Echo(text="then silence"))
        await wait_for_code(setup.server, "idle_timeout")
        await wait_for_async(lambda: client.closed, 5, what="the client sees the connection closed")
        await client.close()


async def test_handshake_that_never_finishes_times_out() -> None:
    async with enclave(ServerLimits(handshake_timeout=0.3)) as setup:
        _reader, writer = await open_connection(setup.address)
        _, hello = Initiator(setup.verifier).start(now=setup.server.clock())
        writer.write(hello)  # and never send the client finish
        await writer.drain()
        await wait_for_code(setup.server, "handshake_timeout")
        writer.close()
    assert HandshakeTimeout.code == "handshake_timeout"
