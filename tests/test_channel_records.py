"""The record layer names every attack on an established session: tamper, replay, reorder, drop, truncation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from enclavekit.channel import (
    Initiator,
    MessageReader,
    MessageTooLarge,
    RecordAfterClose,
    RecordMalformed,
    RecordOutOfOrder,
    RecordReplayed,
    RecordTampered,
    RecordTooLarge,
    RecordTruncated,
    Responder,
    Session,
    SessionClosed,
    SessionExpired,
    SessionKeys,
    SessionLimits,
    SessionTruncated,
)
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import HEADER_SIZE, MessageType

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MEASUREMENT = b"\x01" * 32


def sessions(limits: SessionLimits | None = None) -> tuple[Session, Session]:
    attester = UnsafeTestAttester.generate(measurement=MEASUREMENT, clock=lambda: NOW)
    verifier = UnsafeTestVerifier(attester.root, measurements=(MEASUREMENT,))
    initiator = Initiator(verifier, limits=limits)
    responder = Responder(SessionKeys.generate(), attester, limits=limits)
    client, hello = initiator.start(now=NOW)
    server, server_hello = responder.accept(hello, now=NOW)
    finish, client_session = client.finish(server_hello, now=NOW)
    return client_session, server.finish(finish, now=NOW)


def records(blob: bytes) -> list[bytes]:
    reader = MessageReader(handshake=False)
    reader.feed(blob)
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    reader.eof()
    return out


def test_records_flow_both_ways_in_order() -> None:
    client, server = sessions()
    for i in range(5):
        assert server.open(client.seal(b"c%d" % i, now=NOW), now=NOW) == b"c%d" % i
        assert client.open(server.seal(b"s%d" % i, now=NOW), now=NOW) == b"s%d" % i
    assert (client.sent, client.received, server.sent, server.received) == (5, 5, 5, 5)


def test_record_layout_and_aad_binding() -> None:
    client, _ = sessions()
    record = client.seal(b"hello", now=NOW)
    assert record[0] == client.version
    assert record[1] == MessageType.DATA
    assert int.from_bytes(record[2:6], "big") == len(record) - HEADER_SIZE
    assert int.from_bytes(record[6:14], "big") == 0
    assert len(record) == HEADER_SIZE + 8 + len(b"hello") + 16


@pytest.mark.parametrize("position", range(HEADER_SIZE + 8 + 5 + 16))
def test_flipped_bit_anywhere_in_a_record_is_refused(position: int) -> None:
    client, server = sessions()
    record = bytearray(client.seal(b"hello", now=NOW))
    record[position] ^= 0x01
    with pytest.raises((RecordTampered, RecordMalformed, RecordReplayed, RecordOutOfOrder)) as caught:
        server.open(bytes(record), now=NOW)
    # Only header fields can yield something other than "tampered", and only by failing a structural check.
    if position >= HEADER_SIZE + 8 or position == 0 or 6 <= position < 14:
        assert caught.type is RecordTampered
    else:
        assert caught.type in (RecordMalformed, RecordTampered)


def test_replayed_record_is_rejected() -> None:
    client, server = sessions()
    first = client.seal(b"transfer 100", now=NOW)
    assert server.open(first, now=NOW) == b"transfer 100"
    with pytest.raises(RecordReplayed):
        server.open(first, now=NOW)


def test_reordered_records_are_rejected() -> None:
    client, server = sessions()
    first, second = client.seal(b"1", now=NOW), client.seal(b"2", now=NOW)
    with pytest.raises(RecordOutOfOrder):
        server.open(second, now=NOW)
    del first


def test_dropped_record_is_detected_at_the_next_one() -> None:
    client, server = sessions()
    client.seal(b"dropped by the relay", now=NOW)
    with pytest.raises(RecordOutOfOrder):
        server.open(client.seal(b"next", now=NOW), now=NOW)


def test_record_reflected_back_to_its_sender_is_refused() -> None:
    """Directions have separate keys: a relay cannot bounce the client's record back to the client."""
    client, _ = sessions()
    with pytest.raises(RecordTampered):
        client.open(client.seal(b"echo", now=NOW), now=NOW)


def test_record_from_another_session_is_refused() -> None:
    client, _ = sessions()
    _, other_server = sessions()
    with pytest.raises(RecordTampered):
        other_server.open(client.seal(b"spliced", now=NOW), now=NOW)


def test_record_type_change_is_refused() -> None:
    """The type is in the AAD: turning data into a close (or a key update) does not authenticate."""
    client, server = sessions()
    record = bytearray(client.seal(b"", now=NOW))
    record[1] = MessageType.CLOSE
    with pytest.raises(RecordTampered):
        server.open(bytes(record), now=NOW)


def test_version_byte_change_is_refused() -> None:
    client, server = sessions()
    record = bytearray(client.seal(b"x", now=NOW))
    record[0] = 1 if record[0] == 2 else 2  # another version this side speaks
    with pytest.raises(RecordTampered):
        server.open(bytes(record), now=NOW)


def test_stream_cut_inside_a_record_is_truncation() -> None:
    client, _ = sessions()
    record = client.seal(b"cut short", now=NOW)
    reader = MessageReader(handshake=False)
    reader.feed(record[:-3])
    assert reader.next_message() is None
    with pytest.raises(RecordTruncated):
        reader.eof()


def test_stream_cut_between_records_without_close_is_session_truncation() -> None:
    client, server = sessions()
    server.open(client.seal(b"last words?", now=NOW), now=NOW)
    with pytest.raises(SessionTruncated):
        server.end_of_stream()


def test_close_record_ends_the_stream_cleanly() -> None:
    client, server = sessions()
    assert server.open(client.close(), now=NOW) is None
    assert server.peer_closed
    server.end_of_stream()  # no error
    assert client.close() == b""  # idempotent
    with pytest.raises(SessionClosed):
        client.seal(b"after close", now=NOW)


def test_record_after_close_is_refused() -> None:
    client, server = sessions()
    server.open(client.close(), now=NOW)
    with pytest.raises(RecordAfterClose):
        server.open(b"\x01\x10" + bytes(30), now=NOW)


def test_refused_record_breaks_the_session_for_good() -> None:
    client, server = sessions()
    good = client.seal(b"good", now=NOW)
    with pytest.raises(RecordTampered):
        server.open(good[:-1] + bytes([good[-1] ^ 1]), now=NOW)
    with pytest.raises(SessionClosed):
        server.open(good, now=NOW)
    with pytest.raises(SessionClosed):
        server.seal(b"reply", now=NOW)


def test_key_update_rotates_keys_and_the_peer_follows() -> None:
    client, server = sessions()
    update = client.update_keys(now=NOW)
    after = client.seal(b"new epoch", now=NOW)
    assert server.open(update, now=NOW) is None
    assert server.open(after, now=NOW) == b"new epoch"


def test_record_replayed_across_a_key_update_is_refused() -> None:
    client, server = sessions()
    old = client.seal(b"old epoch", now=NOW)
    server.open(old, now=NOW)
    server.open(client.update_keys(now=NOW), now=NOW)
    with pytest.raises(RecordTampered):  # the old key is gone: the replay cannot even authenticate
        server.open(old, now=NOW)


def test_dropped_key_update_is_detected() -> None:
    client, server = sessions()
    client.update_keys(now=NOW)  # dropped by the relay
    with pytest.raises(RecordTampered):
        server.open(client.seal(b"under the new key", now=NOW), now=NOW)


def test_sender_rekeys_after_its_record_budget() -> None:
    client, server = sessions(SessionLimits(rekey_after_records=3))
    kinds = []
    for i in range(7):
        for record in records(client.seal(b"%d" % i, now=NOW)):
            kinds.append(MessageType(record[1]))
            server.open(record, now=NOW)
    assert kinds.count(MessageType.KEY_UPDATE) == 2


def test_sender_rekeys_after_its_interval() -> None:
    client, server = sessions(SessionLimits(rekey_interval=timedelta(minutes=10)))
    later = NOW + timedelta(minutes=11)
    blob = client.seal(b"after ten minutes", now=later)
    parts = records(blob)
    assert [MessageType(p[1]) for p in parts] == [MessageType.KEY_UPDATE, MessageType.DATA]
    assert server.open(parts[0], now=later) is None
    assert server.open(parts[1], now=later) == b"after ten minutes"


def test_session_past_its_lifetime_is_refused_both_ways() -> None:
    client, server = sessions(SessionLimits(lifetime=timedelta(hours=1)))
    record = client.seal(b"x", now=NOW)
    later = NOW + timedelta(hours=1)
    with pytest.raises(SessionExpired):
        client.seal(b"y", now=later)
    with pytest.raises(SessionExpired):
        server.open(record, now=later)


def test_oversized_record_is_refused_by_sender_receiver_and_reader() -> None:
    limits = SessionLimits(max_record_size=1024)
    client, server = sessions(limits)
    with pytest.raises(RecordTooLarge):
        client.seal(bytes(1025), now=NOW)
    big_client, _ = sessions(SessionLimits(max_record_size=4096))
    big = big_client.seal(bytes(2048), now=NOW)
    with pytest.raises(RecordTooLarge):
        server.open(big, now=NOW)
    reader = MessageReader(max_record_size=1024, handshake=False)
    reader.feed(big[:HEADER_SIZE])
    with pytest.raises(MessageTooLarge):
        reader.next_message()


def test_oversized_length_prefix_is_refused_from_the_header_alone() -> None:
    reader = MessageReader(handshake=False)
    reader.feed(b"\x01\x10\xff\xff\xff\xff")  # announces 4 GiB
    with pytest.raises(MessageTooLarge):
        reader.next_message()


def test_short_and_inconsistent_records_are_malformed() -> None:
    client, server = sessions()
    record = client.seal(b"abc", now=NOW)
    with pytest.raises(RecordMalformed):
        server.open(record[:20], now=NOW)
    _, server = sessions()
    with pytest.raises(RecordMalformed):
        server.open(record[:2] + (1000).to_bytes(4, "big") + record[6:], now=NOW)
    _, server = sessions()
    with pytest.raises(RecordMalformed):
        server.open(b"\x01\x01" + record[2:], now=NOW)  # a client hello type where a record belongs


def test_message_reader_splits_a_stream_byte_by_byte() -> None:
    client, server = sessions()
    blob = b"".join(client.seal(b"m%d" % i, now=NOW) for i in range(3))
    reader = MessageReader(handshake=False)
    out = []
    for byte in blob:
        reader.feed(bytes([byte]))
        while (message := reader.next_message()) is not None:
            out.append(server.open(message, now=NOW))
    assert out == [b"m0", b"m1", b"m2"]
    reader.eof()
