"""The message connection under the RPC layer: delimiting in the socket's callback, limits, backpressure.

Property tests drive :class:`MessageConnection` through its asyncio protocol methods (``get_buffer`` /
``buffer_updated`` / ``eof_received``: what the event loop calls) with the bytes split and coalesced anyhow; the
backpressure test runs a real server on a real socket against a client that never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import tracemalloc
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from enclavekit.errors import Error
from enclavekit.rpc import (
    FrameTooLarge,
    FrameTruncated,
    ReadTimeout,
    Route,
    Router,
    RpcServer,
    ServerLimits,
)
from enclavekit.rpc.connection import FramedStream, MessageConnection
from enclavekit.rpc.frame import FRAME_HEADER_SIZE, ErrorFrame, Request, Response, decode_frame, frame_length

MAX = 4096


@dataclass
class Collect:
    """A sink that keeps what it is handed."""

    messages: list[bytes] = field(default_factory=list)
    ended: list[Error | None] = field(default_factory=list)

    def message_received(self, message: bytes) -> None:
        self.messages.append(message)

    def connection_ended(self, error: Error | None) -> None:
        self.ended.append(error)


def _connection(read_timeout: float | None = None) -> MessageConnection:
    connection = MessageConnection(read_timeout=read_timeout)
    connection.delimit(FRAME_HEADER_SIZE, lambda h: frame_length(h, max_frame_size=MAX), FrameTruncated)
    return connection


def _feed(connection: MessageConnection, data: bytes, cuts: list[int]) -> None:
    """What the event loop does with ``data`` arriving in pieces cut at ``cuts``."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        piece = data[start:end]
        while piece:
            buffer = connection.get_buffer(len(piece))
            n = min(len(buffer), len(piece))
            buffer[:n] = piece[:n]
            connection.buffer_updated(n)
            piece = piece[n:]


frames = st.lists(st.binary(max_size=300), max_size=12).map(
    lambda bodies: [Response(i + 1, body).to_bytes() for i, body in enumerate(bodies)]
)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


@settings(max_examples=200, deadline=None)
@given(frames, cuts)
def test_messages_split_and_coalesced_anyhow_arrive_whole_and_in_order(messages: list[bytes], at: list[int]) -> None:
    async def run() -> Collect:
        connection = _connection()
        sink = Collect()
        connection.deliver(sink)
        _feed(connection, b"".join(messages), at)
        connection.eof_received()
        return sink

    sink = asyncio.run(run())
    assert sink.messages == messages
    assert sink.ended == [None]  # a clean end between two messages


@settings(max_examples=200, deadline=None)
@given(frames, cuts, st.data(), st.booleans())
def test_messages_that_arrived_before_the_sink_are_delivered_first(
    messages: list[bytes], at: list[int], data: st.DataObject, ended_before: bool
) -> None:
    """What arrives during the handshake's last await (the client's first requests, even its end of stream)."""
    stream = b"".join(messages)
    before = data.draw(st.integers(min_value=0, max_value=len(stream)))

    async def run() -> Collect:
        connection = _connection()
        sink = Collect()
        _feed(connection, stream[:before], at)
        if ended_before:
            _feed(connection, stream[before:], at)
            connection.eof_received()
            connection.deliver(sink)
        else:
            connection.deliver(sink)
            _feed(connection, stream[before:], at)
            connection.eof_received()
        return sink

    sink = asyncio.run(run())
    assert sink.messages == messages
    assert sink.ended == [None]


@settings(max_examples=100, deadline=None)
@given(frames, cuts)
def test_messages_taken_one_at_a_time_are_the_same(messages: list[bytes], at: list[int]) -> None:
    async def run() -> list[bytes]:
        connection = _connection()
        _feed(connection, b"".join(messages), at)
        connection.eof_received()
        taken = []
        while (message := await connection.receive()) is not None:
            taken.append(message)
        return taken

    assert asyncio.run(run()) == messages


@settings(max_examples=100, deadline=None)
@given(frames.filter(bool), st.data())
def test_a_stream_cut_inside_a_message_is_named_truncated(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(messages)
    cut = data.draw(st.integers(min_value=1, max_value=len(stream) - 1))
    boundaries = {sum(len(m) for m in messages[:i]) for i in range(len(messages) + 1)}
    if cut in boundaries:
        return

    async def run() -> Collect:
        connection = _connection()
        sink = Collect()
        connection.deliver(sink)
        _feed(connection, stream[:cut], [])
        connection.eof_received()
        return sink

    sink = asyncio.run(run())
    assert len(sink.ended) == 1
    assert isinstance(sink.ended[0], FrameTruncated)
    assert b"".join(sink.messages) == stream[: len(b"".join(sink.messages))]


async def test_an_oversized_length_is_refused_from_the_header_before_its_body() -> None:
    connection = _connection()
    sink = Collect()
    connection.deliver(sink)
    tracemalloc.start()
    try:
        _feed(connection, b"\x01\x01\xff\xff\xff\xf0", [])  # a header announcing 4 GiB, and nothing more
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.messages == []
    assert len(sink.ended) == 1 and isinstance(sink.ended[0], FrameTooLarge)
    assert peak < 1 << 20
    _feed(connection, Response(1, b"late").to_bytes(), [])  # nothing is delivered after the end
    assert sink.messages == [] and len(sink.ended) == 1


async def test_a_message_trickled_byte_by_byte_is_cut_by_the_read_timeout() -> None:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: _connection(read_timeout=0.3), sock=ours)
    sink = Collect()
    connection.deliver(sink)
    frame = Response(1, b"x" * 50).to_bytes()
    started = loop.time()
    try:
        for byte in frame[:-1]:  # a byte every 20 ms: each arrives long before the timeout, the message never does
            theirs.send(bytes([byte]))
            await asyncio.sleep(0.02)
            if sink.ended:
                break
        assert len(sink.ended) == 1 and isinstance(sink.ended[0], ReadTimeout)
        assert loop.time() - started < 0.3 + 0.5
        assert sink.messages == []
    finally:
        theirs.close()
        await connection.close()


class Blob(BaseModel):
    data: str


BLOB = Route("blob", Blob, Blob)


async def test_a_client_that_never_reads_its_answers_cannot_grow_the_servers_buffers() -> None:
    """The server stops reading a peer whose answers pile up unread; nothing it accepted is lost once it reads."""
    router = Router()

    @router.handler(BLOB)
    async def blob(request: Blob, _call: object) -> Blob:
        return request

    server = RpcServer(router, unsafe_plaintext=True, limits=ServerLimits(max_in_flight=8))
    address = await server.start("tcp://127.0.0.1:0")
    sock = socket.create_connection((address.host, address.port))  # type: ignore[union-attr]
    sock.setblocking(False)
    body = Blob(data="z" * 30_000).model_dump_json().encode()
    sent = 0
    blocked_since: float | None = None
    loop = asyncio.get_running_loop()
    try:
        pending = b""
        while True:  # send requests, never read, until the server has stopped taking them for 0.5 s
            if not pending:
                sent += 1
                pending = Request(sent, "blob", 30_000, body).to_bytes()
            try:
                pending = pending[sock.send(pending) :]
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or loop.time()
                if loop.time() - blocked_since > 0.5:
                    break
                await asyncio.sleep(0.01)
            if sent > 3000:
                pytest.fail("the server kept reading from a client that reads nothing (~90 MB)")
        buffered = [
            c.stream.connection.transport.get_write_buffer_size()  # type: ignore[union-attr]
            for c in server._connections.values()
            if c is not None
        ]
        assert buffered and max(buffered) < 1 << 20, buffered
        # Now read everything: every request gets exactly one answer (the last one's rest is sent meanwhile).
        answered: dict[int, int] = {}

        async def read_answers() -> None:
            received = b""
            while len(answered) < sent:
                chunk = await loop.sock_recv(sock, 1 << 20)
                if not chunk:
                    return
                received += chunk
                while len(received) >= FRAME_HEADER_SIZE:
                    size = FRAME_HEADER_SIZE + frame_length(received[:FRAME_HEADER_SIZE], max_frame_size=1 << 20)
                    if len(received) < size:
                        break
                    frame = decode_frame(received[:size], max_frame_size=1 << 20)
                    received = received[size:]
                    assert isinstance(frame, Response | ErrorFrame)
                    answered[frame.id] = answered.get(frame.id, 0) + 1

        reader = asyncio.ensure_future(read_answers())
        await loop.sock_sendall(sock, pending)
        await asyncio.wait_for(reader, 20)
        assert sorted(answered) == list(range(1, sent + 1))
        assert set(answered.values()) == {1}
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        await server.close()


async def test_a_framed_stream_refuses_a_send_on_a_closed_connection() -> None:
    ours, theirs = socket.socketpair()
    _, connection = await asyncio.get_running_loop().create_connection(MessageConnection, sock=ours)
    stream = FramedStream(connection, max_frame_size=MAX)
    theirs.close()
    await stream.close()
    with pytest.raises(Error) as caught:
        await stream.send(Response(1, b"after the end").to_bytes())
    assert caught.value.code == "connection_closed"
