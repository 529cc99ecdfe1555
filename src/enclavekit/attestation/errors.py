"""Why a piece of evidence was refused: one exception type per reason, each with a stable ``code``."""

from __future__ import annotations

from enclavekit.errors import ConfigurationError, InfrastructureError, Rejected

__all__ = [
    "AttestationError",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "ChainUntrusted",
    "CollateralExpired",
    "CollateralInvalid",
    "CollateralMismatch",
    "CollateralMissing",
    "CollateralUnavailable",
    "ComposeHashMismatch",
    "DebugMode",
    "EventDigestMismatch",
    "Malformed",
    "MeasurementMismatch",
    "NonceMismatch",
    "PlatformRejected",
    "PolicyInvalid",
    "PublicKeyMismatch",
    "QuoteSignatureInvalid",
    "QuoteUnclassified",
    "ReportDataMismatch",
    "RtmrMismatch",
    "SignatureInvalid",
    "Stale",
    "TcbStatusRejected",
    "TdAttributesRejected",
    "TeeMismatch",
    "TimestampInFuture",
    "UnsupportedAlgorithm",
    "UnsupportedEvidence",
    "UserDataMismatch",
]


class AttestationError(Rejected):
    """Evidence did not verify. Subclasses name the reason."""

    code = "attestation_invalid"


class Malformed(AttestationError):
    """The bytes are not a well-formed piece of evidence (bad CBOR, wrong types, sizes out of range)."""

    code = "malformed"


class UnsupportedAlgorithm(AttestationError):
    """The evidence uses an algorithm we do not accept (anything but ES384 for Nitro)."""

    code = "unsupported_algorithm"


class UnsupportedEvidence(AttestationError):
    """Genuine-looking evidence of a kind this verifier does not support (a NitroTPM document, for instance):
    neither accepted nor called forged."""

    code = "unsupported_evidence"


class SignatureInvalid(AttestationError):
    """A signature does not verify: the evidence was altered or forged."""

    code = "signature_invalid"


class ChainUntrusted(AttestationError):
    """The certificate chain does not lead to a trusted root, or breaks a path rule."""

    code = "chain_untrusted"


class CertificateExpired(AttestationError):
    """A certificate of the chain had expired at the verification time."""

    code = "certificate_expired"


class CertificateNotYetValid(AttestationError):
    """A certificate of the chain was not yet valid at the verification time."""

    code = "certificate_not_yet_valid"


class CertificateRevoked(AttestationError):
    """A certificate of the chain is on its issuer's revocation list at the verification time."""

    code = "certificate_revoked"


class TimestampInFuture(AttestationError):
    """The evidence claims to have been made after the verification time (beyond the allowed skew)."""

    code = "timestamp_in_future"


class Stale(AttestationError):
    """The evidence is older than the policy's maximum age."""

    code = "stale"


class DebugMode(AttestationError):
    """The enclave or TD runs in debug mode, where the host can read its memory."""

    code = "debug_mode"


class MeasurementMismatch(AttestationError):
    """The measured code matches none of the policy's allowed measurement sets."""

    code = "measurement_mismatch"


class NonceMismatch(AttestationError):
    """The evidence does not carry the nonce the verifier asked for (a replay, or someone else's evidence)."""

    code = "nonce_mismatch"


class PublicKeyMismatch(AttestationError):
    """The evidence binds another public key than the one expected."""

    code = "public_key_mismatch"


class UserDataMismatch(AttestationError):
    """The evidence carries other user data than the policy expects."""

    code = "user_data_mismatch"


class TcbStatusRejected(AttestationError):
    """The platform's TCB status (or one of its advisories) is not allowed by the policy."""

    code = "tcb_status"


class CollateralMissing(AttestationError):
    """No collateral was given, so the hardware signature and TCB could not be checked."""

    code = "collateral_missing"


class CollateralExpired(AttestationError):
    """The collateral (TCB info, QE identity, CRLs) is outside its validity at the verification time."""

    code = "collateral_expired"


class CollateralInvalid(Malformed):
    """The collateral given cannot be used: not well-formed, or lacking a part (the CRLs, for instance).

    A :class:`Malformed` (it is a bad document), with its own code so that a user knows to fix the collateral,
    not the evidence.
    """

    code = "collateral_invalid"


class CollateralMismatch(AttestationError):
    """The collateral does not belong to this quote's platform, or is otherwise inconsistent."""

    code = "collateral_mismatch"


class CollateralUnavailable(InfrastructureError):
    """Collateral could not be fetched from the PCCS (network, HTTP error, unusable answer). Worth retrying."""

    code = "collateral_unavailable"


class PlatformRejected(AttestationError):
    """The platform's configuration (dynamic platform, cached keys, SMT) is not allowed by the policy."""

    code = "platform_policy"


class TeeMismatch(AttestationError):
    """The evidence comes from another kind of TEE than the verifier or policy expects (an SGX quote for TDX)."""

    code = "tee_mismatch"


class QuoteSignatureInvalid(AttestationError):
    """The quote's signature or its certification chain does not verify."""

    code = "quote_signature_invalid"


class QuoteUnclassified(AttestationError):
    """The quote verifier (dcap-qvl) refused the quote for a reason enclavekit does not recognise.

    Not a verdict on the signature: the detail keeps the verifier's own message. Report it, so it gets a name.
    """

    code = "quote_unclassified"


class TdAttributesRejected(AttestationError):
    """The TD runs with attributes that weaken its isolation (SEPT_VE_DISABLE clear, migratable, profiling,
    a service TD bound, reserved bits), which the quote verifier refuses."""

    code = "td_attributes_rejected"


class RtmrMismatch(AttestationError):
    """Replaying the event log does not reproduce the quote's RTMRs."""

    code = "rtmr_mismatch"


class EventDigestMismatch(AttestationError):
    """A logged event's digest is not the digest of its content."""

    code = "event_digest_mismatch"


class ComposeHashMismatch(AttestationError):
    """The app-compose file, or its hash, is not the one the evidence (or the policy) names."""

    code = "compose_hash_mismatch"


class ReportDataMismatch(AttestationError):
    """REPORTDATA is not the value the policy expects."""

    code = "report_data_mismatch"


class PolicyInvalid(ConfigurationError):
    """A policy that cannot be used: empty, contradictory, or badly formed. Policies fail closed."""

    code = "policy_invalid"
