"""A client identity proven in the handshake cannot be forged, moved to another session, or swapped in transit.

The hostile party is whoever relays the handshake (the host) or connects itself: it sees every handshake
message in clear, so it holds every public input of the transcript, but never the client's identity key nor the
HPKE shared secret. Real crypto throughout (pyhpke, Ed25519, the unsafe test attester checked by a verifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.channel import (
    ChannelError,
    ClientIdentityKey,
    HandshakeConfirmationFailed,
    HandshakeIdentityKeyUnsupported,
    HandshakeIdentityMalformed,
    HandshakeIdentitySignatureInvalid,
    HandshakeMalformed,
    HandshakeVersionUnsupported,
    Initiator,
    Responder,
    SessionKeys,
)
from enclavekit.channel.handshake import CLIENT_IDENTITY_CONTEXT, identity_proof_message, transcript_hash
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import (
    HEADER_SIZE,
    IDENTITY_VERSION,
    MAX_IDENTITY_SIZE,
    ClientFinish,
    ClientIdentityProof,
    MessageType,
    encode_header,
)
from enclavekit.errors import ConfigurationError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MEASUREMENT = b"\x01" * 32


class Enclave:
    def __init__(self, **options: object) -> None:
        self.attester = UnsafeTestAttester.generate(measurement=MEASUREMENT, clock=lambda: NOW)
        self.responder = Responder(SessionKeys.generate(), self.attester, **options)  # type: ignore[arg-type]

    def initiator(self, **options: object) -> Initiator:
        verifier = UnsafeTestVerifier(self.attester.root, measurements=(MEASUREMENT,))
        return Initiator(verifier, **options)  # type: ignore[arg-type]


@dataclass
class Handshake:
    client_hello: bytes
    server_hello: bytes
    client_finish: bytes


def handshake(enclave: Enclave, initiator: Initiator):  # type: ignore[no-untyped-def]
    """Run one handshake up to the client finish; return the messages and the responder's pending state."""
    client, hello = initiator.start(now=NOW)
    server, server_hello = enclave.responder.accept(hello, now=NOW)
    finish, client_session = client.finish(server_hello, now=NOW)
    return Handshake(hello, server_hello, finish), server, client_session


def with_identity(finish: bytes, identity: bytes) -> bytes:
    """``finish`` with its identity field replaced by ``identity`` (raw field content, any length)."""
    parsed = ClientFinish.from_bytes(finish)
    body = parsed.enc + parsed.confirm + bytes([len(parsed.signature)]) + parsed.signature
    body += len(identity).to_bytes(2, "big") + identity
    return encode_header(parsed.version, MessageType.CLIENT_FINISH, len(body)) + body


@dataclass
class ReplayingSigner:
    """A host that claims the victim's public key and answers with a proof it recorded earlier."""

    public_key: bytes
    recorded_proof: bytes

    def sign(self, message: bytes) -> bytes:
        return self.recorded_proof


@dataclass
class WrongTranscriptSigner:
    """Signs with the real key, but over another transcript than the one it is asked to."""

    key: ClientIdentityKey

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    def sign(self, message: bytes) -> bytes:
        assert message.startswith(CLIENT_IDENTITY_CONTEXT)
        return self.key.sign(CLIENT_IDENTITY_CONTEXT + bytes(32))


def test_proven_client_key_reaches_both_sessions() -> None:
    enclave, user = Enclave(), ClientIdentityKey.generate()
    messages, server, client_session = handshake(enclave, enclave.initiator(identity=user))
    session = server.finish(messages.client_finish, now=NOW)
    assert session.client_key == user.public_key == client_session.client_key
    assert session.version == IDENTITY_VERSION
    assert session.open(client_session.seal(b"hi", now=NOW), now=NOW) == b"hi"


def test_anonymous_client_has_no_key_in_version_2() -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator())
    session = server.finish(messages.client_finish, now=NOW)
    assert session.version == 2 and session.client_key is None


def test_version_1_client_still_gets_an_anonymous_session() -> None:
    enclave = Enclave()
    messages, server, client_session = handshake(enclave, enclave.initiator(versions=(1,)))
    session = server.finish(messages.client_finish, now=NOW)
    assert session.version == client_session.version == 1 and session.client_key is None


def test_identity_client_never_falls_back_to_an_anonymous_version_1_session() -> None:
    enclave = Enclave(versions=(1,))  # a responder that cannot carry an identity
    _, hello = enclave.initiator(identity=ClientIdentityKey.generate()).start(now=NOW)
    with pytest.raises(HandshakeVersionUnsupported):
        enclave.responder.accept(hello, now=NOW)


def test_identity_with_only_version_1_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Enclave().initiator(identity=ClientIdentityKey.generate(), versions=(1,))


def test_proof_replayed_from_another_session_is_rejected() -> None:
    """The host records a user's session A, then opens session B claiming the user's key with A's proof."""
    enclave, user = Enclave(), ClientIdentityKey.generate()
    recorded, server_a, _ = handshake(enclave, enclave.initiator(identity=user))
    server_a.finish(recorded.client_finish, now=NOW)
    stolen = ClientFinish.from_bytes(recorded.client_finish).identity
    assert stolen is not None
    host = enclave.initiator(identity=ReplayingSigner(stolen.public_key, stolen.proof))
    messages, server_b, _ = handshake(enclave, host)
    with pytest.raises(HandshakeIdentitySignatureInvalid) as caught:
        server_b.finish(messages.client_finish, now=NOW)
    assert caught.value.code == "handshake_identity_signature_invalid"


def test_identity_field_replayed_verbatim_into_another_session_is_rejected() -> None:
    """The host splices session A's whole identity field into its own client finish of session B."""
    enclave, user = Enclave(), ClientIdentityKey.generate()
    recorded, _, _ = handshake(enclave, enclave.initiator(identity=user))
    stolen = ClientFinish.from_bytes(recorded.client_finish).identity
    assert stolen is not None
    messages, server_b, _ = handshake(enclave, enclave.initiator())
    with pytest.raises(HandshakeConfirmationFailed):  # B's keys were derived without the user's key
        server_b.finish(with_identity(messages.client_finish, stolen.to_bytes()), now=NOW)


def test_proof_over_another_transcript_is_rejected() -> None:
    enclave, user = Enclave(), ClientIdentityKey.generate()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=WrongTranscriptSigner(user)))
    with pytest.raises(HandshakeIdentitySignatureInvalid):
        server.finish(messages.client_finish, now=NOW)


def test_client_key_swapped_in_transit_fails_the_handshake() -> None:
    """A relay replaces the user's key with its own and re-signs the transcript: the keys no longer agree."""
    enclave, user, host = Enclave(), ClientIdentityKey.generate(), ClientIdentityKey.generate()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=user))
    enc = ClientFinish.from_bytes(messages.client_finish).enc
    transcript = transcript_hash(2, messages.client_hello, messages.server_hello, enc, host.public_key)
    forged = ClientIdentityProof(host.public_key, host.sign(identity_proof_message(transcript)))
    with pytest.raises(HandshakeConfirmationFailed):
        server.finish(with_identity(messages.client_finish, forged.to_bytes()), now=NOW)


def test_identity_removed_in_transit_fails_the_handshake() -> None:
    """A relay strips the identity, hoping the session goes on as anonymous: the keys no longer agree."""
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    with pytest.raises(HandshakeConfirmationFailed):
        server.finish(with_identity(messages.client_finish, b""), now=NOW)


@pytest.mark.parametrize("cut", [1, 2, 40, 96])
def test_truncated_identity_field_is_rejected(cut: int) -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    finish = messages.client_finish
    truncated = finish[:-cut]
    header = encode_header(finish[0], MessageType.CLIENT_FINISH, len(truncated) - HEADER_SIZE)
    with pytest.raises(HandshakeIdentityMalformed) as caught:
        server.finish(header + truncated[HEADER_SIZE:], now=NOW)
    assert caught.value.code == "handshake_identity_malformed"


def test_identity_field_of_the_wrong_length_is_rejected() -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    identity = ClientFinish.from_bytes(messages.client_finish).identity
    assert identity is not None
    with pytest.raises(HandshakeIdentityMalformed):
        server.finish(with_identity(messages.client_finish, identity.to_bytes() + b"\x00"), now=NOW)


def test_oversized_identity_field_is_rejected_before_it_is_read() -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator())
    finish = with_identity(messages.client_finish, b"\x01" + bytes(MAX_IDENTITY_SIZE))
    with pytest.raises(HandshakeIdentityMalformed, match="over"):
        server.finish(finish, now=NOW)


def test_unknown_identity_key_type_is_rejected() -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    identity = ClientFinish.from_bytes(messages.client_finish).identity
    assert identity is not None
    with pytest.raises(HandshakeIdentityKeyUnsupported) as caught:
        server.finish(with_identity(messages.client_finish, b"\x02" + identity.to_bytes()[1:]), now=NOW)
    assert caught.value.code == "handshake_identity_key_unsupported"


def test_version_1_client_finish_cannot_smuggle_an_identity() -> None:
    """Version 1 has no identity field: bytes after the signature are trailing garbage, not an identity."""
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(versions=(1,)))
    body = messages.client_finish[HEADER_SIZE:] + b"\x00\x61" + bytes(97)
    with pytest.raises(HandshakeMalformed):
        server.finish(encode_header(1, MessageType.CLIENT_FINISH, len(body)) + body, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_IDENTITY_SIZE + 8), st.integers(min_value=0, max_value=0xFFFF))
def test_fuzzed_identity_field_raises_only_parse_errors(field: bytes, announced: int) -> None:
    body = bytes(64) + b"\x00" + announced.to_bytes(2, "big") + field
    message = encode_header(2, MessageType.CLIENT_FINISH, len(body)) + body
    try:
        parsed = ClientFinish.from_bytes(message)
    except HandshakeMalformed:
        return
    except HandshakeIdentityKeyUnsupported:
        return
    assert parsed.identity is None or len(parsed.identity.to_bytes()) == announced == len(field)


FUZZ_ENCLAVE = Enclave()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_fuzzed_identity_in_a_live_handshake_is_refused_with_a_channel_error(field: bytes) -> None:
    messages, server, _ = handshake(FUZZ_ENCLAVE, FUZZ_ENCLAVE.initiator(identity=ClientIdentityKey.generate()))
    with pytest.raises(ChannelError):
        server.finish(with_identity(messages.client_finish, field), now=NOW)
