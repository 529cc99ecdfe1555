"""A client identity proven in the handshake cannot be forged, moved to another session, swapped in transit,
or even seen by the relay.

The hostile party is whoever relays the handshake (the host) or connects itself: it sees every handshake
message, so it holds every public input of the transcript, but never the client's identity key nor the HPKE
shared secret. Real crypto throughout (pyhpke, Ed25519, the unsafe test attester checked by a verifier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
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
    ServerHandshake,
    SessionKeys,
)
from enclavekit.channel.handshake import (
    CLIENT_IDENTITY_CONTEXT,
    identity_proof_message,
    seal_identity,
    transcript_hash,
)
from enclavekit.channel.schedule import SessionSecrets, hpke_info, initiator_secrets, sha256
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import (
    HEADER_SIZE,
    IDENTITY_VERSION,
    MAX_IDENTITY_SIZE,
    ClientFinish,
    ClientIdentityProof,
    MessageType,
    ServerHello,
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


SEED = bytes(range(0x20, 0x40))


def known_secrets(enclave: Enclave, messages: Handshake) -> SessionSecrets:
    """The session secrets of a handshake whose initiator drew ``SEED`` as its randomness (tests only)."""
    document = ServerHello.from_bytes(messages.server_hello).document
    info = hpke_info(IDENTITY_VERSION, messages.client_hello, messages.server_hello, document)
    _, secrets = initiator_secrets(enclave.responder.keys.bound.kem_public_key, info, SEED)
    return secrets


def with_identity(finish: bytes, identity: bytes) -> bytes:
    """``finish`` with its identity field replaced by ``identity`` (raw sealed field, any length)."""
    parsed = ClientFinish.from_bytes(finish)
    body = parsed.enc + parsed.confirm + bytes([len(parsed.signature)]) + parsed.signature
    body += len(identity).to_bytes(2, "big") + identity
    return encode_header(parsed.version, MessageType.CLIENT_FINISH, len(body)) + body


@dataclass
class RecordingSigner:
    """The user's real key, keeping every proof it made (a proof that leaks: a log, a debugger, a past enclave)."""

    key: ClientIdentityKey
    proofs: list[bytes] = field(default_factory=list)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    def sign(self, message: bytes) -> bytes:
        self.proofs.append(self.key.sign(message))
        return self.proofs[-1]


@dataclass
class ReplayingSigner:
    """A host that claims the victim's public key and answers with a proof recorded earlier."""

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
    """The host holds a proof the user made in session A and opens session B claiming the user's key with it."""
    enclave, user = Enclave(), RecordingSigner(ClientIdentityKey.generate())
    recorded, server_a, _ = handshake(enclave, enclave.initiator(identity=user))
    server_a.finish(recorded.client_finish, now=NOW)
    host = enclave.initiator(identity=ReplayingSigner(user.public_key, user.proofs[0]))
    messages, server_b, _ = handshake(enclave, host)
    with pytest.raises(HandshakeIdentitySignatureInvalid) as caught:
        server_b.finish(messages.client_finish, now=NOW)
    assert caught.value.code == "handshake_identity_signature_invalid"


def test_identity_field_replayed_verbatim_into_another_session_is_rejected() -> None:
    """The host splices session A's sealed identity field into its own client finish of session B."""
    enclave, user = Enclave(), ClientIdentityKey.generate()
    recorded, _, _ = handshake(enclave, enclave.initiator(identity=user))
    stolen = ClientFinish.from_bytes(recorded.client_finish).sealed_identity
    messages, server_b, _ = handshake(enclave, enclave.initiator())
    with pytest.raises(HandshakeConfirmationFailed):  # sealed under session A's key: it does not open in B
        server_b.finish(with_identity(messages.client_finish, stolen), now=NOW)


def test_relay_never_sees_the_client_key_nor_its_proof() -> None:
    enclave, user = Enclave(), RecordingSigner(ClientIdentityKey.generate())
    messages, server, _ = handshake(enclave, enclave.initiator(identity=user))
    wire = messages.client_hello + messages.server_hello + messages.client_finish
    assert user.public_key not in wire and user.proofs[0] not in wire
    assert server.finish(messages.client_finish, now=NOW).client_key == user.public_key


def test_proof_over_another_transcript_is_rejected() -> None:
    enclave, user = Enclave(), ClientIdentityKey.generate()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=WrongTranscriptSigner(user)))
    with pytest.raises(HandshakeIdentitySignatureInvalid):
        server.finish(messages.client_finish, now=NOW)


def test_client_key_swapped_in_transit_fails_the_handshake() -> None:
    """A relay replaces the user's sealed identity with its own key and a proof of the transcript it saw."""
    enclave, user, host = Enclave(), ClientIdentityKey.generate(), ClientIdentityKey.generate()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=user))
    enc = ClientFinish.from_bytes(messages.client_finish).enc
    transcript = transcript_hash(2, messages.client_hello, messages.server_hello, enc, host.public_key)
    forged = ClientIdentityProof(host.public_key, host.sign(identity_proof_message(transcript)))
    aad = sha256(messages.client_hello + messages.server_hello + enc)
    for guessed_key in (bytes(32), sha256(b"a relay's guess")):
        with pytest.raises(HandshakeConfirmationFailed):
            server.finish(with_identity(messages.client_finish, seal_identity(guessed_key, aad, forged)), now=NOW)
        messages, server, _ = handshake(enclave, enclave.initiator(identity=user))


def test_client_key_swapped_by_a_party_holding_the_session_keys_fails_the_confirmation() -> None:
    """Even with the session's identity key (it never leaves the two ends), a swapped key breaks the transcript."""
    enclave, user, host = Enclave(), ClientIdentityKey.generate(), ClientIdentityKey.generate()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=user, random=lambda n: SEED[:n]))
    secrets = known_secrets(enclave, messages)
    enc = ClientFinish.from_bytes(messages.client_finish).enc
    transcript = transcript_hash(2, messages.client_hello, messages.server_hello, enc, host.public_key)
    forged = ClientIdentityProof(host.public_key, host.sign(identity_proof_message(transcript)))
    sealed = seal_identity(secrets.identity, sha256(messages.client_hello + messages.server_hello + enc), forged)
    with pytest.raises(HandshakeConfirmationFailed):  # the confirmation covered the user's key
        server.finish(with_identity(messages.client_finish, sealed), now=NOW)


def test_identity_removed_in_transit_fails_the_handshake() -> None:
    """A relay strips the identity, hoping the session goes on as anonymous: the keys no longer agree."""
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    with pytest.raises(HandshakeConfirmationFailed):
        server.finish(with_identity(messages.client_finish, b""), now=NOW)


@pytest.mark.parametrize("cut", [1, 2, 40, 112, 113, 114])
def test_truncated_identity_field_is_rejected(cut: int) -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator(identity=ClientIdentityKey.generate()))
    finish = messages.client_finish
    truncated = finish[:-cut]
    header = encode_header(finish[0], MessageType.CLIENT_FINISH, len(truncated) - HEADER_SIZE)
    with pytest.raises(HandshakeIdentityMalformed) as caught:
        server.finish(header + truncated[HEADER_SIZE:], now=NOW)
    assert caught.value.code == "handshake_identity_malformed"


def _sealed(enclave: Enclave, plaintext: bytes) -> tuple[bytes, ServerHandshake]:
    """A client finish whose identity field opens to ``plaintext`` (as only a real client could make)."""
    messages, server, _ = handshake(
        enclave, enclave.initiator(identity=ClientIdentityKey.generate(), random=lambda n: SEED[:n])
    )
    secrets = known_secrets(enclave, messages)
    enc = ClientFinish.from_bytes(messages.client_finish).enc
    aad = sha256(messages.client_hello + messages.server_hello + enc)
    sealed = ChaCha20Poly1305(secrets.identity).encrypt(bytes(12), plaintext, aad)
    return with_identity(messages.client_finish, sealed), server


@pytest.mark.parametrize("size", [0, 1, 33, 96, 98])
def test_identity_of_the_wrong_length_for_its_type_is_rejected(size: int) -> None:
    finish, server = _sealed(Enclave(), b"\x01" + bytes(max(0, size - 1)) if size else b"")
    with pytest.raises(HandshakeIdentityMalformed):
        server.finish(finish, now=NOW)


def test_oversized_identity_field_is_rejected_before_it_is_read() -> None:
    enclave = Enclave()
    messages, server, _ = handshake(enclave, enclave.initiator())
    finish = with_identity(messages.client_finish, b"\x01" + bytes(MAX_IDENTITY_SIZE))
    with pytest.raises(HandshakeIdentityMalformed, match="over"):
        server.finish(finish, now=NOW)


@pytest.mark.parametrize("key_type", [0, 2, 255])
def test_unknown_identity_key_type_is_rejected(key_type: int) -> None:
    finish, server = _sealed(Enclave(), bytes([key_type]) + bytes(96))
    with pytest.raises(HandshakeIdentityKeyUnsupported) as caught:
        server.finish(finish, now=NOW)
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
    assert len(parsed.sealed_identity) == announced == len(field)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_opened_identity_raises_only_parse_errors(plaintext: bytes) -> None:
    try:
        parsed = ClientIdentityProof.from_bytes(plaintext)
    except (HandshakeMalformed, HandshakeIdentityKeyUnsupported):
        return
    assert parsed.to_bytes() == plaintext


FUZZ_ENCLAVE = Enclave()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_fuzzed_identity_in_a_live_handshake_is_refused_with_a_channel_error(field: bytes) -> None:
    messages, server, _ = handshake(FUZZ_ENCLAVE, FUZZ_ENCLAVE.initiator(identity=ClientIdentityKey.generate()))
    with pytest.raises(ChannelError):
        server.finish(with_identity(messages.client_finish, field), now=NOW)
