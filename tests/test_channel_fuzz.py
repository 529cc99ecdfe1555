"""Fuzz: whatever bytes reach the handshake or record parsers, only enclavekit errors come out.

Random bytes, and valid messages with random mutations (bit flips, truncations, insertions), are fed to every
entry point that sees untrusted bytes: header parsing, each handshake message, both handshake state machines,
the stream splitter and the record layer.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.channel import Initiator, MessageReader, Responder, SessionKeys
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import HEADER_SIZE, Alert, ClientFinish, ClientHello, ServerHello, parse_header
from enclavekit.errors import Error

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MEASUREMENT = b"\x01" * 32
ATTESTER = UnsafeTestAttester.generate(measurement=MEASUREMENT, clock=lambda: NOW)
VERIFIER = UnsafeTestVerifier(ATTESTER.root, measurements=(MEASUREMENT,))
RESPONDER = Responder(SessionKeys.generate(), ATTESTER)
INITIATOR = Initiator(VERIFIER)

_client, CLIENT_HELLO = INITIATOR.start(now=NOW)
_server, SERVER_HELLO = RESPONDER.accept(CLIENT_HELLO, now=NOW)
CLIENT_FINISH, _session = _client.finish(SERVER_HELLO, now=NOW)
SAMPLES = [CLIENT_HELLO, SERVER_HELLO, CLIENT_FINISH, Alert("handshake_failed").to_bytes()]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid handshake message with a few random edits, or plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def _only_enclavekit_errors(function, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(Error):
        function(data)


@FUZZ
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), st.booleans())
def test_fuzzed_header_parsing_raises_only_enclavekit_errors(data: bytes, handshake: bool) -> None:
    _only_enclavekit_errors(lambda d: parse_header(d, max_record_size=1024, handshake=handshake), data)


@FUZZ
@given(mutated())
def test_fuzzed_handshake_messages_raise_only_enclavekit_errors(data: bytes) -> None:
    for parser in (ClientHello.from_bytes, ServerHello.from_bytes, ClientFinish.from_bytes, Alert.from_bytes):
        _only_enclavekit_errors(parser, data)


@FUZZ
@given(mutated())
def test_fuzzed_client_hello_never_crashes_the_responder(data: bytes) -> None:
    _only_enclavekit_errors(lambda d: RESPONDER.accept(d, now=NOW), data)


@FUZZ
@given(mutated())
def test_fuzzed_server_hello_never_crashes_the_initiator(data: bytes) -> None:
    client, _ = INITIATOR.start(now=NOW)
    _only_enclavekit_errors(lambda d: client.finish(d, now=NOW), data)


@FUZZ
@given(mutated())
def test_fuzzed_client_finish_never_crashes_the_responder(data: bytes) -> None:
    server, _ = RESPONDER.accept(CLIENT_HELLO, now=NOW)
    _only_enclavekit_errors(lambda d: server.finish(d, now=NOW), data)


@FUZZ
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_fuzzed_stream_never_crashes_the_message_reader(data: bytes, chunk: int) -> None:
    def split(blob: bytes) -> None:
        reader = MessageReader(max_record_size=512, handshake=False)
        for start in range(0, len(blob), chunk):
            reader.feed(blob[start : start + chunk])
            while reader.next_message() is not None:
                pass
        reader.eof()

    _only_enclavekit_errors(split, data)


@FUZZ
@given(st.data())
def test_fuzzed_records_never_crash_the_session(data: st.DataObject) -> None:
    client, hello = INITIATOR.start(now=NOW)
    server, server_hello = RESPONDER.accept(hello, now=NOW)
    finish, client_session = client.finish(server_hello, now=NOW)
    server_session = server.finish(finish, now=NOW)
    record = bytearray(client_session.seal(data.draw(st.binary(max_size=64)), now=NOW))
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(record) - 1))
        record[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        record = bytearray(data.draw(st.binary(max_size=128)))
    _only_enclavekit_errors(lambda d: server_session.open(d, now=NOW), bytes(record))
