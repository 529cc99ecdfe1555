"""Why a handshake or a record was refused: one exception type per reason, each with a stable ``code``.

Every refusal of bytes from the peer (or from whoever relays them) is a :class:`ChannelError`, a
:class:`~enclavekit.errors.Rejected`: retrying the same bytes cannot succeed. Attestation failures raised by an
injected verifier (``measurement_mismatch``, ``nonce_mismatch``, ``signature_invalid``...) pass through
unchanged. Two lifecycle conditions are :class:`~enclavekit.errors.InfrastructureError`\\ s instead, because
the remedy is a new session: :class:`SessionExpired` and :class:`SessionTruncated`.
"""

from __future__ import annotations

from enclavekit.errors import InfrastructureError, Rejected

__all__ = [
    "ChannelError",
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
    "MessageTooLarge",
    "RecordAfterClose",
    "RecordError",
    "RecordMalformed",
    "RecordOutOfOrder",
    "RecordReplayed",
    "RecordTampered",
    "RecordTooLarge",
    "RecordTruncated",
    "SessionClosed",
    "SessionExpired",
    "SessionTruncated",
]


class ChannelError(Rejected):
    """The peer's bytes were refused by the attested channel."""

    code = "channel_error"


class MessageTooLarge(ChannelError):
    """A message header announces more bytes than allowed for its type; refused before reading the body."""

    code = "message_too_large"


# --- handshake ---------------------------------------------------------------------------------------------


class HandshakeError(ChannelError):
    """The handshake failed; no key was derived, nothing was sent encrypted."""

    code = "handshake_failed"


class HandshakeMalformed(HandshakeError):
    """A handshake message is not well formed (sizes, counts, unknown values, trailing bytes)."""

    code = "handshake_malformed"


class HandshakeVersionUnsupported(HandshakeError):
    """No protocol version both sides speak (or a message carries a version that was not negotiated)."""

    code = "handshake_version_unsupported"


class HandshakeModeUnavailable(HandshakeError):
    """The responder cannot serve any attestation mode the initiator offered."""

    code = "handshake_mode_unavailable"


class HandshakeDowngrade(HandshakeError):
    """The offer was altered in transit, or the responder chose something that was not offered."""

    code = "handshake_downgrade"


class HandshakeTranscriptMismatch(HandshakeError):
    """The responder attested or signed another handshake than the one this side saw."""

    code = "handshake_transcript_mismatch"


class HandshakeKeyInvalid(HandshakeError):
    """The attested ``public_key`` is absent or is not a session key binding this protocol understands."""

    code = "handshake_key_invalid"


class HandshakeSignatureInvalid(HandshakeError):
    """A handshake signature (cached-mode responder, or mutual-mode initiator) does not verify."""

    code = "handshake_signature_invalid"


class HandshakeConfirmationFailed(HandshakeError):
    """The initiator's key confirmation does not match: a substituted key or an altered transcript."""

    code = "handshake_confirmation_failed"


class HandshakeIdentityMalformed(HandshakeMalformed):
    """The client identity field of a client finish is truncated, oversized or of the wrong length."""

    code = "handshake_identity_malformed"


class HandshakeIdentityKeyUnsupported(HandshakeError):
    """The client identity names a key type this side does not know (only Ed25519 is defined)."""

    code = "handshake_identity_key_unsupported"


class HandshakeIdentitySignatureInvalid(HandshakeError):
    """The client identity's proof does not verify over this handshake's transcript.

    What a proof signed in another session (a replay), over another transcript, or by another key looks like.
    """

    code = "handshake_identity_signature_invalid"


class HandshakeAttestationRequired(HandshakeError):
    """The responder requires the initiator to attest (enclave-to-enclave), and it did not."""

    code = "handshake_attestation_required"


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete within its time limit."""

    code = "handshake_timeout"


class HandshakeStateError(HandshakeError):
    """A handshake message arrived in a state where it is not expected (or a step was repeated)."""

    code = "handshake_unexpected_message"


class HandshakeAborted(HandshakeError):
    """The peer aborted the handshake with an alert. ``peer_code`` is the code it sent (unauthenticated)."""

    code = "handshake_aborted"

    def __init__(self, message: str, *, peer_code: str = "") -> None:
        super().__init__(message)
        self.peer_code = peer_code


# --- records -----------------------------------------------------------------------------------------------


class RecordError(ChannelError):
    """A record was refused. The session must be torn down: it is no longer in a known state."""

    code = "record_error"


class RecordMalformed(RecordError):
    """A record is not well formed (header, length, unknown type)."""

    code = "record_malformed"


class RecordTooLarge(RecordError):
    """A record's plaintext is larger than the session allows."""

    code = "record_too_large"


class RecordTampered(RecordError):
    """A record does not authenticate: modified, forged, or from another session or key epoch."""

    code = "record_tampered"


class RecordReplayed(RecordError):
    """An authentic record arrived again (its sequence number was already received)."""

    code = "record_replayed"


class RecordOutOfOrder(RecordError):
    """An authentic record arrived ahead of its turn: an earlier one was dropped or reordered."""

    code = "record_out_of_order"


class RecordTruncated(RecordError):
    """The stream ended in the middle of a record."""

    code = "record_truncated"


class RecordAfterClose(RecordError):
    """A record arrived after the peer's close record."""

    code = "record_after_close"


class SessionTruncated(InfrastructureError):
    """The stream ended between records without the peer's close record (a cut connection)."""

    code = "session_truncated"


class SessionExpired(InfrastructureError):
    """The session outlived its lifetime or sequence space; open a new one."""

    code = "session_expired"


class SessionClosed(InfrastructureError):
    """The session was closed (by this side or the peer) and cannot send any more."""

    code = "session_closed"
