"""The attested handshake, as two small state machines. Sans-I/O: bytes in, bytes out, ``now`` passed in.

One round trip, then the initiator may send records at once::

    initiator                                              responder (enclave)
    ClientHello  {versions, modes, nonce, [document]}  ->
                                                       <-  ServerHello {binding, document, [signature]}
    ClientFinish {enc, confirmation, [signature]}      ->
    records ...                                        <-> records ...

* **fresh** mode: the responder's document is made for this handshake: its ``nonce`` is the initiator's nonce
  and its ``user_data`` is SHA-256("enclavekit-session binding\\0" ‖ binding).
* **cached** mode: a recent document (no nonce) plus an Ed25519 signature, by the key the document binds, over
  the binding (which holds the hash of the client hello, hence its nonce) and the document's hash.
* **mutual** (enclave to enclave): the initiator's hello carries its own document; its client finish carries a
  signature over the whole transcript by the key that document binds.
* **client identity** (version 2): the client finish carries the client's long-term Ed25519 public key and its
  signature over the transcript hash (which covers both hellos, hence both nonces and the enclave's document,
  ``enc`` and the client's key), as a TLS client certificate and CertificateVerify do, sealed under a key from
  the session's key schedule so the relay never learns who connects. The key is in the transcript hash that the
  key confirmation covers, so it cannot be swapped, and a proof from another session does not verify.

The initiator verifies the responder's evidence, then that the binding is its own handshake, before it derives
any key. The key schedule (:mod:`enclavekit.channel.schedule`) binds both hellos, the document and the version
into HPKE's ``info``, so a relay can neither substitute a key nor downgrade the version unnoticed.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from enclavekit.attestation.errors import NonceMismatch, Stale
from enclavekit.channel.errors import (
    HandshakeAborted,
    HandshakeAttestationRequired,
    HandshakeConfirmationFailed,
    HandshakeDowngrade,
    HandshakeIdentitySignatureInvalid,
    HandshakeKeyInvalid,
    HandshakeMalformed,
    HandshakeModeUnavailable,
    HandshakeSignatureInvalid,
    HandshakeStateError,
    HandshakeTimeout,
    HandshakeTranscriptMismatch,
    HandshakeVersionUnsupported,
)
from enclavekit.channel.keys import BoundKeys, SessionKeys, verify_identity_proof
from enclavekit.channel.protocols import AttestedPeer, Attester, IdentitySigner, Verifier
from enclavekit.channel.record import Session, SessionLimits
from enclavekit.channel.schedule import confirmation, hpke_info, initiator_secrets, responder_secrets, sha256
from enclavekit.channel.wire import (
    IDENTITY_VERSION,
    NONCE_SIZE,
    RANDOM_SIZE,
    SUPPORTED_VERSIONS,
    Alert,
    Binding,
    ClientFinish,
    ClientHello,
    ClientIdentityProof,
    MessageType,
    Mode,
    ServerHello,
    identity_key_field,
)
from enclavekit.errors import ConfigurationError

__all__ = [
    "BINDING_CONTEXT",
    "CACHED_SIGNATURE_CONTEXT",
    "CLIENT_IDENTITY_CONTEXT",
    "INITIATOR_SIGNATURE_CONTEXT",
    "ClientHandshake",
    "Initiator",
    "LocalAttestation",
    "Responder",
    "ServerHandshake",
    "binding_user_data",
    "identity_proof_message",
    "open_identity",
    "seal_identity",
    "transcript_hash",
]

logger = logging.getLogger(__name__)

BINDING_CONTEXT = b"enclavekit-session binding\x00"
CACHED_SIGNATURE_CONTEXT = b"enclavekit-session cached signature\x00"
INITIATOR_SIGNATURE_CONTEXT = b"enclavekit-session initiator signature\x00"
CLIENT_IDENTITY_CONTEXT = b"enclavekit-session client identity\x00"

RandomSource = Callable[[int], bytes]


def binding_user_data(binding: Binding) -> bytes:
    """The ``user_data`` a fresh-mode document carries: SHA-256 of the context string and the binding."""
    return sha256(BINDING_CONTEXT + binding.to_bytes())


def transcript_hash(
    version: int, client_hello: bytes, server_hello: bytes, enc: bytes, client_key: bytes | None
) -> bytes:
    """SHA-256(client hello ‖ server hello ‖ enc), and from version 2 ‖ the client identity key field
    (``0x00`` anonymous, ``key_type ‖ public key`` otherwise): what the confirmation and both signatures cover."""
    return _transcript_hash(version, client_hello + server_hello, enc, client_key)


def _transcript_hash(version: int, hellos: bytes, enc: bytes, client_key: bytes | None) -> bytes:
    suffix = identity_key_field(client_key) if version >= IDENTITY_VERSION else b""
    return sha256(hellos + enc + suffix)


def identity_proof_message(transcript: bytes) -> bytes:
    """What a client identity key signs: the context string and the transcript hash."""
    return CLIENT_IDENTITY_CONTEXT + transcript


_IDENTITY_NONCE = bytes(12)  # the identity key seals exactly one message


def seal_identity(identity_key: bytes, aad: bytes, identity: ClientIdentityProof) -> bytes:
    """The client finish's identity field: ChaCha20-Poly1305(identity_key, zero nonce, aad, identity), where
    ``identity_key`` is the session's ``Export("enclavekit client identity", 32)`` and ``aad`` is
    SHA-256(client hello ‖ server hello ‖ enc)."""
    return ChaCha20Poly1305(identity_key).encrypt(_IDENTITY_NONCE, identity.to_bytes(), aad)


def open_identity(identity_key: bytes, aad: bytes, sealed: bytes) -> ClientIdentityProof:
    """Open and parse a sealed identity field; a field that does not open was altered in transit (or sealed for
    another session): :class:`HandshakeConfirmationFailed`."""
    try:
        plaintext = ChaCha20Poly1305(identity_key).decrypt(_IDENTITY_NONCE, sealed, aad)
    except (InvalidTag, ValueError):
        raise HandshakeConfirmationFailed(
            "the sealed client identity does not open: it was altered in transit or sealed for another session"
        ) from None
    return ClientIdentityProof.from_bytes(plaintext)


def _cached_signature_message(binding: Binding, document: bytes) -> bytes:
    return CACHED_SIGNATURE_CONTEXT + binding.to_bytes() + sha256(document)


def _check_versions(versions: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(versions)
    if not chosen or any(v not in SUPPORTED_VERSIONS for v in chosen) or len(set(chosen)) != len(chosen):
        raise ConfigurationError(f"versions must be distinct values from {SUPPORTED_VERSIONS}")
    return chosen


def _check_age(attestation: AttestedPeer, max_age: timedelta, now: datetime, whose: str) -> None:
    made = attestation.timestamp
    if made is None:
        raise Stale(f"{whose} cached document has no timestamp, so its age cannot be checked")
    if now - made > max_age:
        raise Stale(f"{whose} cached document is {(now - made).total_seconds():.0f} s old (limit {max_age})")


def _raise_if_alert(message: bytes) -> None:
    if len(message) > 1 and message[1] == MessageType.ALERT:
        alert = Alert.from_bytes(message)
        raise HandshakeAborted(f"the peer aborted the handshake: {alert.code}", peer_code=alert.code)


@dataclass(frozen=True, slots=True)
class LocalAttestation:
    """This endpoint's keys and a document whose ``public_key`` is ``keys.public_bytes`` (for mutual mode)."""

    keys: SessionKeys
    document: bytes


# --- initiator -----------------------------------------------------------------------------------------------


class Initiator:
    """How this side opens sessions: which evidence it accepts, and (enclave to enclave) its own attestation.

    * ``verifier`` checks the responder's document against the caller's policy.
    * ``modes``: attestation modes accepted. Default fresh only; accepting ``Mode.CACHED`` requires
      ``max_document_age`` (how old a cached document may be at ``now``).
    * ``attestation``: returns this endpoint's :class:`LocalAttestation` to attest itself (mutual mode).
    * ``identity``: the client's long-term key, proven in the handshake (version 2 and later; an initiator
      with an identity offers only those versions, so it never silently falls back to an anonymous session).
    * ``random``: the randomness source (``os.urandom``); tests inject a fixed one.
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        modes: Iterable[Mode] = (Mode.FRESH,),
        max_document_age: timedelta | None = None,
        attestation: Callable[[], LocalAttestation] | None = None,
        identity: IdentitySigner | None = None,
        versions: Sequence[int] = SUPPORTED_VERSIONS,
        limits: SessionLimits | None = None,
        random: RandomSource = os.urandom,
    ) -> None:
        self.verifier = verifier
        self.identity = identity
        self.modes = frozenset(Mode(m) for m in modes)
        if not self.modes:
            raise ConfigurationError("an initiator must accept at least one attestation mode")
        if Mode.CACHED in self.modes and (max_document_age is None or max_document_age <= timedelta(0)):
            raise ConfigurationError("accepting cached documents requires a positive max_document_age")
        self.max_document_age = max_document_age
        self.attestation = attestation
        self.versions = _check_versions(versions)
        if identity is not None:
            self.versions = tuple(v for v in self.versions if v >= IDENTITY_VERSION)
            if not self.versions:
                raise ConfigurationError(f"a client identity needs protocol version {IDENTITY_VERSION} or later")
            if len(identity.public_key) != 32:
                raise ConfigurationError("a client identity is a raw 32-byte Ed25519 public key")
        self.limits = limits or SessionLimits()
        self.random = random

    def start(self, *, now: datetime) -> tuple[ClientHandshake, bytes]:
        """Begin a handshake: returns its state and the client hello to send."""
        local = self.attestation() if self.attestation is not None else None
        nonce = self.random(NONCE_SIZE)
        hello = ClientHello(self.versions, self.modes, nonce, None if local is None else local.document)
        return ClientHandshake(self, hello.to_bytes(), nonce, local, now), hello.to_bytes()


class ClientHandshake:
    """One initiator handshake, waiting for the server hello. Use once."""

    __slots__ = ("_client_hello", "_done", "_initiator", "_local", "_nonce", "_started")

    def __init__(
        self,
        initiator: Initiator,
        client_hello: bytes,
        nonce: bytes,
        local: LocalAttestation | None,
        now: datetime,
    ) -> None:
        self._initiator = initiator
        self._client_hello = client_hello
        self._nonce = nonce
        self._local = local
        self._started = now
        self._done = False

    def finish(self, server_hello: bytes, *, now: datetime) -> tuple[bytes, Session]:
        """Verify the server hello; return the client finish to send and the established session.

        Raises the attestation error of the verifier, or a :class:`~enclavekit.channel.errors.HandshakeError`;
        no key exists until every check passed.
        """
        if self._done:
            raise HandshakeStateError("this handshake already processed a server hello")
        self._done = True
        initiator = self._initiator
        if now - self._started > initiator.limits.handshake_timeout:
            raise HandshakeTimeout("the server hello arrived after the handshake timeout")
        _raise_if_alert(server_hello)
        hello = ServerHello.from_bytes(server_hello)
        binding = hello.binding
        if binding.mode not in initiator.modes:
            raise HandshakeDowngrade(f"the responder chose {binding.mode.name.lower()} mode, which was not offered")
        if binding.version not in initiator.versions:
            raise HandshakeDowngrade(f"the responder chose version {binding.version}, which was not offered")

        verifier = initiator.verifier
        if binding.mode is Mode.FRESH:
            if hello.signature:
                raise HandshakeMalformed("a fresh-mode server hello carries no signature")
            peer = verifier.verify(hello.document, nonce=self._nonce, now=now)
            if peer.nonce is None or not hmac.compare_digest(peer.nonce, self._nonce):
                raise NonceMismatch("the responder's document does not carry this handshake's nonce")
            keys = BoundKeys.from_bytes(peer.public_key)
            if peer.user_data is None or not hmac.compare_digest(peer.user_data, binding_user_data(binding)):
                raise HandshakeTranscriptMismatch("the responder's document attests another handshake binding")
        else:
            peer = verifier.verify(hello.document, nonce=None, now=now)
            assert initiator.max_document_age is not None
            _check_age(peer, initiator.max_document_age, now, "the responder's")
            keys = BoundKeys.from_bytes(peer.public_key)
            if not hello.signature or not keys.verify_signature(
                hello.signature, _cached_signature_message(binding, hello.document)
            ):
                raise HandshakeSignatureInvalid("the responder's cached-mode signature does not verify")

        # The binding is now known to come from the attested responder: compare it with what was sent.
        if binding.offered_versions != initiator.versions or binding.offered_modes != initiator.modes:
            raise HandshakeDowngrade("the responder saw another offer than the one sent: it was altered in transit")
        if not hmac.compare_digest(binding.client_hello_hash, sha256(self._client_hello)):
            raise HandshakeTranscriptMismatch("the responder saw another client hello than the one sent")

        signer = initiator.identity
        client_key = None if signer is None else signer.public_key
        info = hpke_info(binding.version, self._client_hello, server_hello, hello.document)
        try:
            enc, secrets = initiator_secrets(keys.kem_public_key, info, initiator.random(32))
        except ValueError as exc:
            raise HandshakeKeyInvalid("the attested X25519 key is unusable") from exc
        transcript = transcript_hash(binding.version, self._client_hello, server_hello, enc, client_key)
        signature = b""
        if self._local is not None:
            signature = self._local.keys.sign(INITIATOR_SIGNATURE_CONTEXT + transcript)
        sealed = b""
        if signer is not None and client_key is not None:
            proof = ClientIdentityProof(client_key, signer.sign(identity_proof_message(transcript)))
            sealed = seal_identity(secrets.identity, sha256(self._client_hello + server_hello + enc), proof)
        finish = ClientFinish(
            binding.version, enc, confirmation(secrets.finished, transcript), signature, sealed_identity=sealed
        )
        session = Session(
            role="initiator",
            version=binding.version,
            secrets=secrets,
            peer=peer,
            now=now,
            limits=initiator.limits,
            client_key=client_key,
        )
        return finish.to_bytes(), session


# --- responder -----------------------------------------------------------------------------------------------


class Responder:
    """The enclave side: its session keys (memory only), its attester, and what it serves.

    * ``modes``: the attestation modes served. Cached mode needs a document from :meth:`refresh_document`
      (the runtime calls it at boot and before the document's certificate expires); until then only fresh
      mode is served.
    * ``peer_verifier``: verifies initiators that attest (enclave-to-enclave); ``require_peer_attestation``
      refuses initiators that do not; ``peer_max_age`` bounds the age of their (cached) documents.

    ``accept`` may run in several threads at once if the attester allows it.
    """

    def __init__(
        self,
        keys: SessionKeys,
        attester: Attester,
        *,
        modes: Iterable[Mode] = (Mode.FRESH, Mode.CACHED),
        peer_verifier: Verifier | None = None,
        require_peer_attestation: bool = False,
        peer_max_age: timedelta = timedelta(hours=1),
        versions: Sequence[int] = SUPPORTED_VERSIONS,
        limits: SessionLimits | None = None,
        random: RandomSource = os.urandom,
    ) -> None:
        self.keys = keys
        self.attester = attester
        self.modes = frozenset(Mode(m) for m in modes)
        if not self.modes:
            raise ConfigurationError("a responder must serve at least one attestation mode")
        if require_peer_attestation and peer_verifier is None:
            raise ConfigurationError("require_peer_attestation needs a peer_verifier")
        self.peer_verifier = peer_verifier
        self.require_peer_attestation = require_peer_attestation
        self.peer_max_age = peer_max_age
        self.versions = _check_versions(versions)
        self.limits = limits or SessionLimits()
        self.random = random
        self._document: bytes | None = None

    def refresh_document(self) -> bytes:
        """Attest the session keys without a nonce, and keep the document for cached mode and mutual handshakes."""
        document = self.attester.attestation(public_key=self.keys.public_bytes, nonce=None, user_data=None)
        self._document = document
        return document

    @property
    def cached_document(self) -> bytes | None:
        return self._document

    def local_attestation(self) -> LocalAttestation:
        """This enclave's keys and cached document, to attest itself as an initiator (pass the bound method)."""
        if self._document is None:
            raise ConfigurationError("no cached document yet: call refresh_document() first")
        return LocalAttestation(self.keys, self._document)

    def accept(self, client_hello: bytes, *, now: datetime) -> tuple[ServerHandshake, bytes]:
        """Answer a client hello: returns the handshake state and the server hello to send.

        Raises a :class:`~enclavekit.channel.errors.HandshakeError` (send :meth:`alert` for it, then close) or
        the peer verifier's attestation error (mutual mode).
        """
        hello = ClientHello.from_bytes(client_hello)
        common = [v for v in hello.versions if v in self.versions]
        if not common:
            raise HandshakeVersionUnsupported(f"no common version: offered {hello.versions}, served {self.versions}")
        version = max(common)
        document = self._document
        served = hello.modes & self.modes
        if Mode.CACHED in served and document is not None:
            mode = Mode.CACHED
        elif Mode.FRESH in served:
            mode = Mode.FRESH
        else:
            raise HandshakeModeUnavailable("no attestation mode both sides accept is available")

        peer: AttestedPeer | None = None
        peer_keys: BoundKeys | None = None
        if hello.document is not None and self.peer_verifier is not None:
            peer = self.peer_verifier.verify(hello.document, nonce=None, now=now)
            _check_age(peer, self.peer_max_age, now, "the initiator's")
            peer_keys = BoundKeys.from_bytes(peer.public_key)
        elif self.require_peer_attestation:
            raise HandshakeAttestationRequired("this responder only accepts initiators that attest themselves")

        binding = Binding(
            version=version,
            mode=mode,
            offered_versions=hello.versions,
            offered_modes=hello.modes,
            client_hello_hash=sha256(client_hello),
            server_random=self.random(RANDOM_SIZE),
        )
        if mode is Mode.FRESH:
            document = self.attester.attestation(
                public_key=self.keys.public_bytes, nonce=hello.nonce, user_data=binding_user_data(binding)
            )
            signature = b""
        else:
            assert document is not None
            signature = self.keys.sign(_cached_signature_message(binding, document))
        server_hello = ServerHello(binding, document, signature).to_bytes()
        handshake = ServerHandshake(
            self,
            version=version,
            info=hpke_info(version, client_hello, server_hello, document),
            transcript=client_hello + server_hello,
            peer=peer,
            peer_keys=peer_keys,
            now=now,
        )
        return handshake, server_hello

    @staticmethod
    def alert(error: Exception) -> bytes:
        """The alert to send before closing after a failed handshake (the error's code, nothing else)."""
        code = getattr(error, "code", "handshake_failed")
        try:
            return Alert(code).to_bytes()
        except HandshakeMalformed:
            return Alert("handshake_failed").to_bytes()


class ServerHandshake:
    """One responder handshake, waiting for the client finish. Use once."""

    __slots__ = ("_deadline", "_done", "_info", "_peer", "_peer_keys", "_responder", "_transcript", "_version")

    def __init__(
        self,
        responder: Responder,
        *,
        version: int,
        info: bytes,
        transcript: bytes,
        peer: AttestedPeer | None,
        peer_keys: BoundKeys | None,
        now: datetime,
    ) -> None:
        self._responder = responder
        self._version = version
        self._info = info
        self._transcript = transcript
        self._peer = peer
        self._peer_keys = peer_keys
        self._deadline = now + responder.limits.handshake_timeout
        self._done = False

    def finish(self, client_finish: bytes, *, now: datetime) -> Session:
        """Check the initiator's key confirmation (and, mutual mode, its signature; with a client identity, its
        proof over this transcript); return the session, whose ``client_key`` is the proven key or None."""
        if self._done:
            raise HandshakeStateError("this handshake already processed a client finish")
        self._done = True
        if now > self._deadline:
            raise HandshakeTimeout("the client finish arrived after the handshake timeout")
        _raise_if_alert(client_finish)
        finish = ClientFinish.from_bytes(client_finish)
        if finish.version != self._version:
            raise HandshakeVersionUnsupported(f"client finish is version {finish.version}, not {self._version}")
        responder = self._responder
        try:
            secrets = responder_secrets(finish.enc, responder.keys.hpke_private_key(), self._info)
        except ValueError as exc:
            raise HandshakeConfirmationFailed("the initiator's key share is unusable") from exc
        identity = None
        if finish.sealed_identity:
            aad = sha256(self._transcript + finish.enc)
            identity = open_identity(secrets.identity, aad, finish.sealed_identity)
        client_key = None if identity is None else identity.public_key
        transcript = _transcript_hash(self._version, self._transcript, finish.enc, client_key)
        if not hmac.compare_digest(finish.confirm, confirmation(secrets.finished, transcript)):
            raise HandshakeConfirmationFailed(
                "key confirmation failed: the key share, client key or transcript was altered in transit"
            )
        if self._peer_keys is not None and not (
            finish.signature
            and self._peer_keys.verify_signature(finish.signature, INITIATOR_SIGNATURE_CONTEXT + transcript)
        ):
            raise HandshakeSignatureInvalid("the initiator's signature over the transcript does not verify")
        if identity is not None and not verify_identity_proof(
            identity.public_key, identity.proof, identity_proof_message(transcript)
        ):
            raise HandshakeIdentitySignatureInvalid(
                "the client identity's proof does not sign this handshake (replayed, or over another transcript)"
            )
        return Session(
            role="responder",
            version=self._version,
            secrets=secrets,
            peer=self._peer,
            now=now,
            limits=responder.limits,
            client_key=client_key,
        )
