"""The attested session: an HPKE-keyed, attestation-bound handshake and a record layer. No I/O.

Enclave side::

    responder = Responder(SessionKeys.generate(), attester=nsm)      # keys stay in enclave memory
    responder.refresh_document()                                     # optional: enables cached mode
    handshake, server_hello = responder.accept(client_hello, now=now)
    session = handshake.finish(client_finish, now=now)

Client side::

    initiator = Initiator(verifier)                                  # verifier pins the enclave's measurements
    # or Initiator(verifier, identity=ClientIdentityKey.generate()): the enclave sees session.client_key
    handshake, client_hello = initiator.start(now=now)
    client_finish, session = handshake.finish(server_hello, now=now)
    record = session.seal(b"hello", now=now)                         # the peer: session.open(record, now=now)

``enclavekit.rpc`` runs this over sockets. The byte format is in ``docs/wire-session.md``.
"""

from enclavekit.channel.errors import (
    ChannelError,
    HandshakeAborted,
    HandshakeAttestationRequired,
    HandshakeConfirmationFailed,
    HandshakeDowngrade,
    HandshakeError,
    HandshakeIdentityKeyUnsupported,
    HandshakeIdentityMalformed,
    HandshakeIdentitySignatureInvalid,
    HandshakeKeyInvalid,
    HandshakeMalformed,
    HandshakeModeUnavailable,
    HandshakeSignatureInvalid,
    HandshakeStateError,
    HandshakeTimeout,
    HandshakeTranscriptMismatch,
    HandshakeVersionUnsupported,
    MessageTooLarge,
    RecordAfterClose,
    RecordError,
    RecordMalformed,
    RecordOutOfOrder,
    RecordReplayed,
    RecordTampered,
    RecordTooLarge,
    RecordTruncated,
    SessionClosed,
    SessionExpired,
    SessionTruncated,
)
from enclavekit.channel.handshake import (
    ClientHandshake,
    Initiator,
    LocalAttestation,
    Responder,
    ServerHandshake,
)
from enclavekit.channel.keys import BoundKeys, ClientIdentityKey, SessionKeys
from enclavekit.channel.protocols import AttestedPeer, Attester, IdentitySigner, Verifier
from enclavekit.channel.record import MessageReader, Session, SessionLimits
from enclavekit.channel.wire import HEADER_SIZE, SUPPORTED_VERSIONS, MessageType, Mode, parse_header

__all__ = [
    "HEADER_SIZE",
    "SUPPORTED_VERSIONS",
    "AttestedPeer",
    "Attester",
    "BoundKeys",
    "ChannelError",
    "ClientHandshake",
    "ClientIdentityKey",
    "HandshakeAborted",
    "HandshakeAttestationRequired",
    "HandshakeConfirmationFailed",
    "HandshakeDowngrade",
    "HandshakeError",
    "HandshakeIdentityKeyUnsupported",
    "HandshakeIdentityMalformed",
    "HandshakeIdentitySignatureInvalid",
    "HandshakeKeyInvalid",
    "HandshakeMalformed",
    "HandshakeModeUnavailable",
    "HandshakeSignatureInvalid",
    "HandshakeStateError",
    "HandshakeTimeout",
    "HandshakeTranscriptMismatch",
    "HandshakeVersionUnsupported",
    "IdentitySigner",
    "Initiator",
    "LocalAttestation",
    "MessageReader",
    "MessageTooLarge",
    "MessageType",
    "Mode",
    "RecordAfterClose",
    "RecordError",
    "RecordMalformed",
    "RecordOutOfOrder",
    "RecordReplayed",
    "RecordTampered",
    "RecordTooLarge",
    "RecordTruncated",
    "Responder",
    "ServerHandshake",
    "Session",
    "SessionClosed",
    "SessionExpired",
    "SessionKeys",
    "SessionLimits",
    "SessionTruncated",
    "Verifier",
    "parse_header",
]
