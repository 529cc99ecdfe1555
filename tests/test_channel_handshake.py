"""The attested handshake refuses every substitution, downgrade and replay a relay can attempt, by name.

Real crypto throughout: HPKE (pyhpke), Ed25519 and ChaCha20-Poly1305 (cryptography), and the unsafe test
attester, whose documents are Ed25519-signed CBOR checked by a real verifier with a pinned measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.attestation.errors import MeasurementMismatch, NonceMismatch, SignatureInvalid, Stale
from enclavekit.channel import (
    HandshakeAborted,
    HandshakeAttestationRequired,
    HandshakeConfirmationFailed,
    HandshakeDowngrade,
    HandshakeKeyInvalid,
    HandshakeMalformed,
    HandshakeModeUnavailable,
    HandshakeSignatureInvalid,
    HandshakeStateError,
    HandshakeTimeout,
    HandshakeTranscriptMismatch,
    HandshakeVersionUnsupported,
    Initiator,
    Mode,
    Responder,
    SessionKeys,
)
from enclavekit.channel.handshake import binding_user_data
from enclavekit.channel.keys import BoundKeys
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import HEADER_SIZE, Alert, ClientFinish, ClientHello, ServerHello
from enclavekit.errors import ConfigurationError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GOOD = b"\x01" * 32
OTHER = b"\x02" * 32


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """An enclave (attester + responder) and a client verifier that pins the enclave's measurement."""

    clock: Clock = field(default_factory=Clock)
    measurement: bytes = GOOD

    def __post_init__(self) -> None:
        self.attester = UnsafeTestAttester.generate(measurement=self.measurement, clock=self.clock)
        self.keys = SessionKeys.generate()
        self.responder = Responder(self.keys, self.attester)

    def verifier(self, *pinned: bytes) -> UnsafeTestVerifier:
        return UnsafeTestVerifier(self.attester.root, measurements=pinned or (GOOD,))

    def initiator(self, **options: object) -> Initiator:
        return Initiator(self.verifier(), **options)  # type: ignore[arg-type]


def run(initiator: Initiator, responder: Responder, now: datetime = NOW):  # type: ignore[no-untyped-def]
    client, hello = initiator.start(now=now)
    server, server_hello = responder.accept(hello, now=now)
    finish, client_session = client.finish(server_hello, now=now)
    server_session = server.finish(finish, now=now)
    return client_session, server_session


def test_fresh_handshake_establishes_matching_sessions() -> None:
    world = World()
    client, server = run(world.initiator(), world.responder)
    assert client.session_id == server.session_id
    assert client.peer is not None and client.peer.measurements["measurement"] == GOOD
    assert server.peer is None  # the initiator did not attest itself
    assert server.open(client.seal(b"ping", now=NOW), now=NOW) == b"ping"
    assert client.open(server.seal(b"pong", now=NOW), now=NOW) == b"pong"


def test_fresh_document_carries_the_client_nonce_and_the_binding() -> None:
    world = World()
    initiator = world.initiator()
    _client, hello = initiator.start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    attested = world.verifier().verify(parsed.document, nonce=ClientHello.from_bytes(hello).nonce, now=NOW)
    assert attested.user_data == binding_user_data(parsed.binding)
    assert BoundKeys.from_bytes(attested.public_key) == world.keys.bound
    assert parsed.signature == b""


def test_cached_handshake_signs_the_client_nonce_with_the_attested_key() -> None:
    world = World()
    world.responder.refresh_document()
    initiator = world.initiator(modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5))
    client, hello = initiator.start(now=NOW)
    server, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    assert parsed.binding.mode is Mode.CACHED
    assert parsed.document == world.responder.cached_document
    assert len(parsed.signature) == 64
    finish, client_session = client.finish(server_hello, now=NOW)
    assert server.finish(finish, now=NOW).session_id == client_session.session_id


def test_responder_without_cached_document_falls_back_to_fresh() -> None:
    world = World()
    initiator = world.initiator(modes=(Mode.FRESH, Mode.CACHED), max_document_age=timedelta(minutes=5))
    _, hello = initiator.start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    assert ServerHello.from_bytes(server_hello).binding.mode is Mode.FRESH


def test_mutual_handshake_gives_each_side_the_others_attestation() -> None:
    server_world, client_world = World(), World(measurement=OTHER)
    client_world.responder.refresh_document()
    responder = Responder(
        server_world.keys,
        server_world.attester,
        peer_verifier=UnsafeTestVerifier(client_world.attester.root, measurements=(OTHER,)),
        require_peer_attestation=True,
    )
    initiator = Initiator(server_world.verifier(), attestation=client_world.responder.local_attestation)
    client, server = run(initiator, responder)
    assert client.peer is not None and client.peer.measurements["measurement"] == GOOD
    assert server.peer is not None and server.peer.measurements["measurement"] == OTHER
    assert server.open(client.seal(b"x", now=NOW), now=NOW) == b"x"


# --- what the initiator refuses ------------------------------------------------------------------------------


def test_enclave_with_unpinned_measurement_is_refused() -> None:
    world = World(measurement=OTHER)
    with pytest.raises(MeasurementMismatch):
        run(world.initiator(), world.responder)


def test_document_from_another_attester_is_refused() -> None:
    """A relay running its own (simulated) enclave with the right measurement but an untrusted root."""
    world, impostor = World(), World()
    initiator = Initiator(world.verifier())
    with pytest.raises(SignatureInvalid):
        run(initiator, impostor.responder)


def test_relay_substituting_the_attested_key_is_refused() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    relay_keys = SessionKeys.generate()
    forged = parsed.document.replace(world.keys.public_bytes, relay_keys.public_bytes)
    assert forged != parsed.document
    with pytest.raises(SignatureInvalid):
        client.finish(ServerHello(parsed.binding, forged, b"").to_bytes(), now=NOW)


def test_relay_substituting_its_key_share_is_refused_by_the_enclave() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    server, server_hello = world.responder.accept(hello, now=NOW)
    finish, _ = client.finish(server_hello, now=NOW)
    parsed = ClientFinish.from_bytes(finish)
    relay_share = SessionKeys.generate().bound.kem_public_key
    with pytest.raises(HandshakeConfirmationFailed):
        server.finish(ClientFinish(parsed.version, relay_share, parsed.confirm).to_bytes(), now=NOW)


def test_replayed_server_hello_from_another_handshake_is_refused() -> None:
    world = World()
    initiator = world.initiator()
    _, old_hello = initiator.start(now=NOW)
    _, old_server_hello = world.responder.accept(old_hello, now=NOW)
    client, _ = initiator.start(now=NOW)  # a new handshake: a new nonce
    with pytest.raises(NonceMismatch):
        client.finish(old_server_hello, now=NOW)


def test_relay_stripping_fresh_mode_from_the_offer_is_a_downgrade() -> None:
    world = World()
    world.responder.refresh_document()
    initiator = world.initiator(modes=(Mode.FRESH, Mode.CACHED), max_document_age=timedelta(minutes=5))
    client, hello = initiator.start(now=NOW)
    offer = ClientHello.from_bytes(hello)
    stripped = ClientHello(offer.versions, frozenset({Mode.CACHED}), offer.nonce).to_bytes()
    _, server_hello = world.responder.accept(stripped, now=NOW)
    with pytest.raises(HandshakeDowngrade):
        client.finish(server_hello, now=NOW)


def test_relay_editing_the_offered_versions_is_a_downgrade() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    offer = ClientHello.from_bytes(hello)
    edited = ClientHello((9, *offer.versions), offer.modes, offer.nonce).to_bytes()  # server ignores 9, picks 1
    _, server_hello = world.responder.accept(edited, now=NOW)
    with pytest.raises(HandshakeDowngrade):
        client.finish(server_hello, now=NOW)


def test_server_choosing_a_mode_that_was_not_offered_is_a_downgrade() -> None:
    world = World()
    world.responder.refresh_document()
    client, hello = world.initiator().start(now=NOW)  # offers fresh only
    cached_offer = ClientHello.from_bytes(hello)
    _, server_hello = world.responder.accept(
        ClientHello(cached_offer.versions, frozenset({Mode.CACHED}), cached_offer.nonce).to_bytes(), now=NOW
    )
    with pytest.raises(HandshakeDowngrade):
        client.finish(server_hello, now=NOW)


def test_relay_editing_the_binding_is_a_transcript_mismatch() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    binding = parsed.binding
    edited = type(binding)(
        binding.version,
        binding.mode,
        binding.offered_versions,
        binding.offered_modes,
        binding.client_hello_hash,
        bytes(32),  # another server random
    )
    with pytest.raises(HandshakeTranscriptMismatch):
        client.finish(ServerHello(edited, parsed.document).to_bytes(), now=NOW)


def test_relay_editing_the_client_hello_elsewhere_is_a_transcript_mismatch() -> None:
    """The nonce and offer survive, but the hello bytes differ (here: the initiator's document is added)."""
    world = World()
    client, hello = world.initiator().start(now=NOW)
    offer = ClientHello.from_bytes(hello)
    padded = ClientHello(offer.versions, offer.modes, offer.nonce, b"relay").to_bytes()
    _, server_hello = world.responder.accept(padded, now=NOW)
    with pytest.raises(HandshakeTranscriptMismatch):
        client.finish(server_hello, now=NOW)


def test_fresh_server_hello_padded_with_a_signature_is_refused() -> None:
    """Nothing in a server hello may go unauthenticated: a relay cannot add bytes the client would ignore."""
    world = World()
    client, hello = world.initiator().start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    with pytest.raises(HandshakeMalformed):
        client.finish(ServerHello(parsed.binding, parsed.document, bytes(64)).to_bytes(), now=NOW)


def test_replayed_client_hello_and_finish_are_refused_by_the_enclave() -> None:
    """A relay replays a whole recorded handshake: the enclave's new server random changes every key."""
    world = World()
    client, hello = world.initiator().start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    finish, _ = client.finish(server_hello, now=NOW)
    replayed, _ = world.responder.accept(hello, now=NOW)
    with pytest.raises(HandshakeConfirmationFailed):
        replayed.finish(finish, now=NOW)


def test_cached_signature_over_another_handshake_is_refused() -> None:
    world = World()
    world.responder.refresh_document()
    initiator = world.initiator(modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5))
    _, other_hello = initiator.start(now=NOW)
    _, other_server_hello = world.responder.accept(other_hello, now=NOW)
    client, hello = initiator.start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    stolen = ServerHello.from_bytes(other_server_hello).signature
    with pytest.raises(HandshakeSignatureInvalid):
        client.finish(ServerHello(parsed.binding, parsed.document, stolen).to_bytes(), now=NOW)


def test_cached_mode_without_signature_is_refused() -> None:
    world = World()
    world.responder.refresh_document()
    client, hello = world.initiator(modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5)).start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    with pytest.raises(HandshakeSignatureInvalid):
        client.finish(ServerHello(parsed.binding, parsed.document).to_bytes(), now=NOW)


def test_stale_cached_document_is_refused() -> None:
    world = World()
    world.responder.refresh_document()  # made at NOW
    later = NOW + timedelta(minutes=6)
    initiator = world.initiator(modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5))
    with pytest.raises(Stale):
        run(initiator, world.responder, now=later)


def test_document_binding_no_session_key_is_refused() -> None:
    world = World()
    bad = Responder(world.keys, _KeyMangler(world.attester))
    with pytest.raises(HandshakeKeyInvalid):
        run(world.initiator(), bad)


class _KeyMangler:
    """An attester that binds a public key of the wrong shape (a broken or hostile enclave app)."""

    def __init__(self, attester: UnsafeTestAttester) -> None:
        self.attester = attester

    def attestation(self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes) -> bytes:
        return self.attester.attestation(public_key=public_key[:33], nonce=nonce, user_data=user_data)


def test_server_hello_after_the_timeout_is_refused() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    _, server_hello = world.responder.accept(hello, now=NOW)
    with pytest.raises(HandshakeTimeout):
        client.finish(server_hello, now=NOW + timedelta(minutes=1))


def test_alert_from_the_responder_is_reported_with_its_code() -> None:
    world = World()
    client, _ = world.initiator().start(now=NOW)
    with pytest.raises(HandshakeAborted) as caught:
        client.finish(Alert("handshake_version_unsupported").to_bytes(), now=NOW)
    assert caught.value.peer_code == "handshake_version_unsupported"


def test_a_handshake_step_cannot_run_twice() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    server, server_hello = world.responder.accept(hello, now=NOW)
    finish, _ = client.finish(server_hello, now=NOW)
    with pytest.raises(HandshakeStateError):
        client.finish(server_hello, now=NOW)
    server.finish(finish, now=NOW)
    with pytest.raises(HandshakeStateError):
        server.finish(finish, now=NOW)


# --- what the responder refuses ------------------------------------------------------------------------------


def test_client_finish_after_the_timeout_is_refused() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    server, server_hello = world.responder.accept(hello, now=NOW)
    finish, _ = client.finish(server_hello, now=NOW)
    with pytest.raises(HandshakeTimeout):
        server.finish(finish, now=NOW + timedelta(minutes=1))


def test_client_finish_with_a_forged_confirmation_is_refused() -> None:
    world = World()
    client, hello = world.initiator().start(now=NOW)
    server, server_hello = world.responder.accept(hello, now=NOW)
    finish = ClientFinish.from_bytes(client.finish(server_hello, now=NOW)[0])
    forged = ClientFinish(finish.version, finish.enc, bytes(32))
    with pytest.raises(HandshakeConfirmationFailed):
        server.finish(forged.to_bytes(), now=NOW)


def test_unknown_protocol_version_is_refused() -> None:
    world = World()
    _, hello = world.initiator().start(now=NOW)
    offer = ClientHello.from_bytes(hello)
    with pytest.raises(HandshakeVersionUnsupported):
        world.responder.accept(ClientHello((7,), offer.modes, offer.nonce).to_bytes(), now=NOW)
    with pytest.raises(HandshakeVersionUnsupported):
        world.responder.accept(b"\x02" + hello[1:], now=NOW)  # a hello format from the future


def test_cached_only_client_of_a_fresh_only_enclave_gets_mode_unavailable() -> None:
    world = World()
    responder = Responder(world.keys, world.attester, modes=(Mode.FRESH,))
    initiator = world.initiator(modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5))
    _, hello = initiator.start(now=NOW)
    with pytest.raises(HandshakeModeUnavailable):
        responder.accept(hello, now=NOW)


def test_unattested_initiator_is_refused_when_mutual_is_required() -> None:
    world = World()
    responder = Responder(world.keys, world.attester, peer_verifier=world.verifier(), require_peer_attestation=True)
    _, hello = world.initiator().start(now=NOW)
    with pytest.raises(HandshakeAttestationRequired):
        responder.accept(hello, now=NOW)


def test_initiator_with_unpinned_measurement_is_refused_in_mutual_mode() -> None:
    server_world, client_world = World(), World(measurement=OTHER)
    client_world.responder.refresh_document()
    responder = Responder(
        server_world.keys,
        server_world.attester,
        peer_verifier=UnsafeTestVerifier(client_world.attester.root, measurements=(GOOD,)),
    )
    initiator = Initiator(server_world.verifier(), attestation=client_world.responder.local_attestation)
    with pytest.raises(MeasurementMismatch):
        run(initiator, responder)


def test_initiator_that_cannot_sign_for_its_document_is_refused_in_mutual_mode() -> None:
    """A relay replays an enclave's cached document as its own hello, but cannot sign the transcript."""
    server_world, victim = World(), World(measurement=OTHER)
    victim.responder.refresh_document()
    responder = Responder(
        server_world.keys,
        server_world.attester,
        peer_verifier=UnsafeTestVerifier(victim.attester.root, measurements=(OTHER,)),
    )
    stolen = victim.responder.local_attestation()
    relay = Initiator(
        server_world.verifier(),
        attestation=lambda: type(stolen)(SessionKeys.generate(), stolen.document),  # the relay's own keys
    )
    with pytest.raises(HandshakeSignatureInvalid):
        run(relay, responder)


def test_stale_initiator_document_is_refused_in_mutual_mode() -> None:
    server_world, client_world = World(), World(measurement=OTHER)
    client_world.responder.refresh_document()
    responder = Responder(
        server_world.keys,
        server_world.attester,
        peer_verifier=UnsafeTestVerifier(client_world.attester.root, measurements=(OTHER,)),
        peer_max_age=timedelta(minutes=10),
    )
    initiator = Initiator(server_world.verifier(), attestation=client_world.responder.local_attestation)
    with pytest.raises(Stale):
        run(initiator, responder, now=NOW + timedelta(minutes=11))


def test_garbage_client_hello_is_malformed() -> None:
    world = World()
    for garbage in (b"", b"\x01", b"\x01\x01\x00\x00\x00\x00", b"GET / HTTP/1.1\r\n\r\n", bytes(64)):
        with pytest.raises((HandshakeMalformed, HandshakeVersionUnsupported)):
            world.responder.accept(garbage, now=NOW)


def test_client_hello_with_trailing_bytes_is_malformed() -> None:
    world = World()
    _, hello = world.initiator().start(now=NOW)
    body = hello[HEADER_SIZE:] + b"x"
    tampered = hello[:2] + len(body).to_bytes(4, "big") + body
    with pytest.raises(HandshakeMalformed):
        world.responder.accept(tampered, now=NOW)


# --- configuration fails closed ------------------------------------------------------------------------------


def test_accepting_cached_documents_requires_a_maximum_age() -> None:
    world = World()
    with pytest.raises(ConfigurationError):
        Initiator(world.verifier(), modes=(Mode.CACHED,))


def test_unknown_versions_cannot_be_configured() -> None:
    world = World()
    with pytest.raises(ConfigurationError):
        Initiator(world.verifier(), versions=(1, 3))


def test_mutual_requirement_needs_a_peer_verifier() -> None:
    world = World()
    with pytest.raises(ConfigurationError):
        Responder(world.keys, world.attester, require_peer_attestation=True)


def test_verifier_must_pin_a_measurement() -> None:
    with pytest.raises(ConfigurationError):
        UnsafeTestVerifier(Ed25519PrivateKey.generate().public_key().public_bytes_raw(), measurements=())
