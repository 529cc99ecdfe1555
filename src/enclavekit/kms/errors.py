"""Why a key release failed: one exception type per reason, each with a stable ``code``.

Two groups live here:

* envelope errors — a ``CiphertextForRecipient`` (CMS) that cannot be parsed or opened;
* KMS errors — the errors of the AWS KMS protocol. The emulator raises them and sends their ``aws_type`` as
  ``__type`` with their ``http_status``; the client raises the same classes when KMS (AWS or the emulator)
  answers with that ``__type``. Rejections (never retried) are :class:`KmsRejected`; failures worth a retry
  (KMS unreachable, throttled, internal error) are :class:`KmsUnavailable`.
"""

from __future__ import annotations

from typing import ClassVar

from enclavekit.errors import ConfigurationError, InfrastructureError, Rejected

__all__ = [
    "AccessDenied",
    "DisabledKey",
    "EnvelopeDecryptionFailed",
    "EnvelopeError",
    "EnvelopeMalformed",
    "EnvelopeUnsupported",
    "IncorrectKey",
    "InsecureKmsEndpoint",
    "InvalidCiphertext",
    "InvalidKeyUsage",
    "KmsEndpointUntrusted",
    "KmsInternal",
    "KmsRejected",
    "KmsUnavailable",
    "MalformedPolicyDocument",
    "NotFound",
    "PlaintextReturned",
    "RecipientMismatch",
    "RequestTooLarge",
    "SerializationError",
    "UnknownOperation",
    "UnsupportedOperation",
    "ValidationError",
    "aws_error_class",
]


# --- CMS envelopes (CiphertextForRecipient) ----------------------------------------------------------------------


class EnvelopeError(Rejected):
    """A CMS envelope was refused. Subclasses name the reason."""

    code = "cms_invalid"


class EnvelopeMalformed(EnvelopeError):
    """The bytes are not a well-formed CMS EnvelopedData of the KMS shape (bad BER, wrong structure, sizes)."""

    code = "cms_malformed"


class EnvelopeUnsupported(EnvelopeError):
    """The envelope uses another algorithm or recipient form than KMS's (RSAES-OAEP-SHA256, AES-256-CBC, SKI)."""

    code = "cms_unsupported"


class RecipientMismatch(EnvelopeError):
    """The envelope is addressed to another key (its subjectKeyIdentifier is not this key's)."""

    code = "cms_recipient_mismatch"


class EnvelopeDecryptionFailed(EnvelopeError):
    """The envelope names this key but does not decrypt (altered key, ciphertext or padding)."""

    code = "cms_decryption_failed"


# --- the AWS KMS protocol ----------------------------------------------------------------------------------------


class KmsRejected(Rejected):
    """KMS refused the request. ``aws_type`` is the protocol's ``__type``; ``http_status`` its HTTP status."""

    code = "kms_rejected"
    aws_type: ClassVar[str] = "ValidationException"
    http_status: ClassVar[int] = 400


class KmsUnavailable(InfrastructureError):
    """KMS could not be reached or failed on its side (network, throttling, internal error). Retry later."""

    code = "kms_unavailable"
    aws_type: ClassVar[str] = "KMSInternalException"
    http_status: ClassVar[int] = 500


class AccessDenied(KmsRejected):
    """The key policy does not allow this request (or the attestation document does not satisfy it)."""

    code = "kms_access_denied"
    aws_type = "AccessDeniedException"


class InvalidCiphertext(KmsRejected):
    """The ciphertext blob is corrupt, altered, of another KMS, or bound to another encryption context."""

    code = "kms_invalid_ciphertext"
    aws_type = "InvalidCiphertextException"


class IncorrectKey(KmsRejected):
    """Decrypt named a ``KeyId`` other than the key that made the ciphertext."""

    code = "kms_incorrect_key"
    aws_type = "IncorrectKeyException"


class NotFound(KmsRejected):
    """No such key."""

    code = "kms_not_found"
    aws_type = "NotFoundException"


class ValidationError(KmsRejected):
    """A parameter is missing, of the wrong type, or out of range."""

    code = "kms_validation"
    aws_type = "ValidationException"


class SerializationError(KmsRejected):
    """The request body is not a JSON object."""

    code = "kms_serialization"
    aws_type = "SerializationException"


class RequestTooLarge(KmsRejected):
    """The request body is larger than the server accepts."""

    code = "kms_request_too_large"
    aws_type = "RequestEntityTooLargeException"
    http_status = 413


class UnknownOperation(KmsRejected):
    """``X-Amz-Target`` names no operation this server implements."""

    code = "kms_unknown_operation"
    aws_type = "UnknownOperationException"


class UnsupportedOperation(KmsRejected):
    """The operation exists but not for this key or these parameters (for example Sign with an AES key)."""

    code = "kms_unsupported_operation"
    aws_type = "UnsupportedOperationException"


class InvalidKeyUsage(KmsRejected):
    """The key's usage does not allow this operation or algorithm (Encrypt with a signing key...)."""

    code = "kms_invalid_key_usage"
    aws_type = "InvalidKeyUsageException"


class DisabledKey(KmsRejected):
    """The key is disabled."""

    code = "kms_disabled"
    aws_type = "DisabledException"


class MalformedPolicyDocument(KmsRejected):
    """A key policy is not valid JSON, or uses what this implementation cannot evaluate faithfully."""

    code = "kms_malformed_policy"
    aws_type = "MalformedPolicyDocumentException"


class KmsInternal(KmsUnavailable):
    """KMS failed internally."""

    code = "kms_internal"
    aws_type = "KMSInternalException"
    http_status = 500


class KmsEndpointUntrusted(Rejected):
    """The peer at the KMS route did not prove, over TLS, that it is the measured KMS endpoint (its certificate
    does not chain to the measured trust anchor or does not name the measured host, or it does not speak TLS).
    Nothing was sent to it: the request (with its Recipient) goes out only after the handshake verifies."""

    code = "kms_endpoint_untrusted"


class InsecureKmsEndpoint(ConfigurationError):
    """A KMS endpoint that is not ``https://``, without the measured configuration's explicit ``unsafe_`` flag."""

    code = "kms_endpoint_insecure"


class PlaintextReturned(Rejected):
    """KMS answered a request that carried a Recipient with plaintext: refused, and the plaintext discarded."""

    code = "kms_plaintext_returned"


_REJECTED: tuple[type[KmsRejected], ...] = (
    AccessDenied,
    InvalidCiphertext,
    IncorrectKey,
    NotFound,
    ValidationError,
    SerializationError,
    RequestTooLarge,
    UnknownOperation,
    UnsupportedOperation,
    InvalidKeyUsage,
    DisabledKey,
    MalformedPolicyDocument,
)
_BY_TYPE: dict[str, type[KmsRejected] | type[KmsUnavailable]] = {cls.aws_type: cls for cls in _REJECTED}
_BY_TYPE[KmsInternal.aws_type] = KmsInternal
_RETRYABLE_TYPES = frozenset(
    {
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "ThrottlingException",
        "LimitExceededException",
        "ServiceUnavailableException",
        "InternalFailure",
        "RequestTimeout",
    }
)


def aws_error_class(aws_type: str) -> type[KmsRejected] | type[KmsUnavailable]:
    """The class for a protocol ``__type`` (with or without its ``namespace#`` prefix).

    Types that this module does not name map to :class:`KmsUnavailable` when AWS documents them as transient,
    else to :class:`KmsRejected`.
    """
    name = aws_type.rsplit("#", 1)[-1]
    known = _BY_TYPE.get(name)
    if known is not None:
        return known
    return KmsUnavailable if name in _RETRYABLE_TYPES else KmsRejected
