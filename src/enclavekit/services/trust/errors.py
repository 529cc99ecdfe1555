"""Why the trust service refused a request or could not finish a task; codes are stable, as everywhere.

An error a client of the HTTP API can see declares its ``http_status`` where it is not the API's default (422
for a refusal, 503 for an infrastructure failure); the API answers with the host kit's envelope."""

from __future__ import annotations

from enclavekit.errors import ConfigurationError, InfrastructureError, Rejected

__all__ = [
    "BadQuery",
    "DatabaseUnavailable",
    "EndpointUnavailable",
    "EndpointUnsupported",
    "NotFound",
    "ObjectStoreError",
    "QueueUnavailable",
    "RegistryInvalid",
    "TaskTimeout",
    "TrustRejected",
    "Unauthorized",
    "UploadInvalid",
    "UploadTooLarge",
]


class TrustRejected(Rejected):
    """A request to the trust service was refused (never retried)."""

    code = "trust_rejected"


class BadQuery(TrustRejected):
    """A query parameter is malformed or out of range (answered 400, naming the parameter)."""

    code = "bad_request"
    http_status = 400


class UploadTooLarge(TrustRejected):
    """An upload is over its size limit (refused before it is read whole)."""

    code = "upload_too_large"
    http_status = 413


class UploadInvalid(TrustRejected):
    """An upload is not usable: not attestation evidence, a missing part, a bad option."""

    code = "upload_invalid"
    http_status = 400


class NotFound(TrustRejected):
    """No app or task has this id."""

    code = "not_found"
    http_status = 404


class Unauthorized(TrustRejected):
    """An admin route without the admin token (or with none configured)."""

    code = "unauthorized"
    http_status = 401


class EndpointUnsupported(TrustRejected):
    """A registered endpoint cannot be polled (unknown URL scheme, answer that is not evidence)."""

    code = "endpoint_unsupported"


class EndpointUnavailable(InfrastructureError):
    """A registered endpoint did not answer with evidence (connection refused, HTTP error, timeout)."""

    code = "endpoint_unavailable"


class TaskTimeout(InfrastructureError):
    """A verification task ran past its time limit."""

    code = "task_timeout"


class ObjectStoreError(InfrastructureError):
    """The object store (local folder or S3) failed."""

    code = "object_store"


class DatabaseUnavailable(InfrastructureError):
    """The database did not answer (or failed) while serving a request."""

    code = "database_unavailable"


class QueueUnavailable(InfrastructureError):
    """NATS JetStream is not reachable."""

    code = "queue_unavailable"


class RegistryInvalid(ConfigurationError):
    """The OS measurement registry file is unusable (bad TOML, bad values, or not the pinned file)."""

    code = "registry_invalid"
