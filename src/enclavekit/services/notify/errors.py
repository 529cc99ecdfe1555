"""Why notify refused a request or could not finish one. Codes are stable; each maps to one HTTP status.

Every error a client of the HTTP API can see is a :class:`NotifyRejected` (its fault: 4xx, ``allowRetry``
false unless waiting helps) or a :class:`NotifyUnavailable` (ours: 5xx, ``allowRetry`` true). The API renders
them in the reference's shape ``{"allowRetry": bool, "error": {"code", "message"}}`` (the host kit's envelope,
:mod:`enclavekit.hostkit`), with ``http_status`` as the status.
"""

from __future__ import annotations

from typing import ClassVar

from enclavekit.errors import InfrastructureError, Rejected

__all__ = [
    "AssetExists",
    "BadRequest",
    "DeliveryFailed",
    "EnclaveUnavailable",
    "InvalidProof",
    "InvalidPushId",
    "InvalidRoot",
    "NotFound",
    "NotInitialized",
    "NotifyRejected",
    "NotifyUnavailable",
    "PayloadTooLarge",
    "ProviderRejected",
    "PushIdsMismatch",
    "QueueUnavailable",
    "StaleTimestamp",
    "Unauthorized",
    "WorldIdUnavailable",
]


class NotifyRejected(Rejected):
    """A request to notify was refused. ``http_status`` is the HTTP status the API answers with."""

    code = "bad_request"
    http_status: ClassVar[int] = 400
    allow_retry: ClassVar[bool] = False


class BadRequest(NotifyRejected):
    """The body or the query does not validate (a field, a type, an unknown field, a bound).

    Its message names the offending field(s): ``"topic: String should have at least 1 character"``, a dotted
    path into the body (``"0.hmac_key: ..."`` for the first item of a list), or ``"body: ..."`` when the body as a
    whole is wrong (not JSON, not an object)."""

    code = "bad_request"


class InvalidPushId(NotifyRejected):
    """``encrypted_push_id`` is not hex, or not a well-formed sealed box (or, in the enclave, does not open)."""

    code = "invalid_push_id"


class StaleTimestamp(NotifyRejected):
    """The authorize ``timestamp`` is older than 300 s or in the future."""

    code = "invalid_timestamp"


class InvalidRoot(NotifyRejected):
    """The World ID sequencer refused the Merkle root (unknown or older than the allowed age)."""

    code = "invalid_root"


class InvalidProof(NotifyRejected):
    """The World ID proof does not verify for this signal, nullifier and root."""

    code = "invalid_proof"
    http_status = 401


class Unauthorized(NotifyRejected):
    """No bearer token, or a token that is malformed, forged, expired or not yet valid."""

    code = "unauthorized"
    http_status = 401


class PushIdsMismatch(NotifyRejected):
    """A different push ID for this World ID was stored less than 180 days ago: rotation refused."""

    code = "push_ids_mismatch"
    http_status = 403


class NotFound(NotifyRejected):
    """No such subscription (or route)."""

    code = "not_found"
    http_status = 404


class AssetExists(NotifyRejected):
    """The media object with this digest is already uploaded (the answer carries its URL)."""

    code = "asset_already_exists"
    http_status = 409

    def __init__(self, message: str, *, asset_url: str) -> None:
        super().__init__(message)
        self.asset_url = asset_url

    @property
    def envelope_fields(self) -> dict[str, str]:
        """Added to the error envelope: where the existing asset is."""
        return {"asset_url": self.asset_url}


class PayloadTooLarge(NotifyRejected):
    """The request body is over the API's limit (refused before it is read whole)."""

    code = "payload_too_large"
    http_status = 413


class NotInitialized(NotifyRejected):
    """The enclave has not received its provider configuration yet (``initialize``)."""

    code = "enclave_not_initialized"
    http_status = 503
    allow_retry = True


class ProviderRejected(Rejected):
    """The push provider refused a request for good (4xx other than 429): retrying cannot help."""

    code = "provider_rejected"


class NotifyUnavailable(InfrastructureError):
    """A dependency of notify failed; the request may succeed later."""

    code = "service_unavailable"
    http_status: ClassVar[int] = 503
    allow_retry: ClassVar[bool] = True


class WorldIdUnavailable(NotifyUnavailable):
    """The World ID sequencer could not be reached, or its prover failed."""

    code = "world_id_unavailable"


class EnclaveUnavailable(NotifyUnavailable):
    """The notify enclave could not be reached or did not answer in time."""

    code = "enclave_unavailable"


class QueueUnavailable(NotifyUnavailable):
    """NATS JetStream is not reachable."""

    code = "queue_unavailable"


class DeliveryFailed(NotifyUnavailable):
    """The push provider answered 429 or 5xx (or not at all) after every retry."""

    code = "delivery_failed"
