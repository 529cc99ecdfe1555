"""RPC errors, and how an error travels: as ``(code, message)``, mapped back to its enclavekit class.

A handler that raises an :class:`~enclavekit.errors.Error` sends its ``code`` and ``message``; the caller gets
an instance of the class registered for that code (any ``Error`` subclass imported in the caller's process), so
``except MeasurementMismatch`` works across the wire. Unknown or ambiguous codes arrive as
:class:`RemoteError`, with the code kept in ``remote_code``. Any other exception in a handler is reported as
:class:`HandlerFailed` without its details (which could hold secrets).
"""

from __future__ import annotations

from enclavekit.errors import ConfigurationError, Error, InfrastructureError, Rejected

__all__ = [
    "AddressInvalid",
    "ConnectionClosed",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DuplicateRequest",
    "FrameMalformed",
    "FrameTooLarge",
    "FrameTruncated",
    "FrameUnexpected",
    "FrameVersionUnsupported",
    "HandlerFailed",
    "IdleTimeout",
    "InvalidRequest",
    "InvalidResponse",
    "Overloaded",
    "ReadTimeout",
    "RemoteError",
    "UnknownRoute",
    "error_from_wire",
]


class FrameMalformed(Rejected):
    """A frame is not well formed (kind, ids, field sizes, encoding)."""

    code = "frame_malformed"


class FrameTooLarge(Rejected):
    """A frame's length prefix is over the limit; refused before reading (or allocating) its payload."""

    code = "frame_too_large"


class FrameTruncated(Rejected):
    """The stream ended in the middle of a frame."""

    code = "frame_truncated"


class FrameVersionUnsupported(Rejected):
    """A frame's first byte is not a frame version this side speaks."""

    code = "frame_version_unsupported"


class FrameUnexpected(Rejected):
    """A valid frame that this side never accepts (a response sent to a server, a request sent to a client)."""

    code = "frame_unexpected"


class UnknownRoute(Rejected):
    """The request names a route the server does not have."""

    code = "rpc_unknown_route"


class InvalidRequest(Rejected):
    """The request body does not validate against the route's request model."""

    code = "rpc_invalid_request"


class InvalidResponse(Rejected):
    """The response body does not validate against the route's response model."""

    code = "rpc_invalid_response"


class DuplicateRequest(Rejected):
    """A request reused the id of a request still in flight on the same connection."""

    code = "rpc_duplicate_request"


class ReadTimeout(Rejected):
    """A peer started a message and did not finish it in time (slowloris)."""

    code = "read_timeout"


class DeadlineExceeded(InfrastructureError):
    """The call did not complete within its timeout (it was cancelled on the server)."""

    code = "rpc_deadline_exceeded"


class Overloaded(InfrastructureError):
    """The server refused the request: too many requests in flight on this connection."""

    code = "rpc_overloaded"


class IdleTimeout(InfrastructureError):
    """Nothing arrived for the idle timeout while nothing was in flight; the connection was closed."""

    code = "idle_timeout"


class ConnectionClosed(InfrastructureError):
    """The connection is closed (cleanly, or because of the error it was closed for)."""

    code = "connection_closed"


class ConnectionFailed(InfrastructureError):
    """Could not connect (refused, unreachable, no such socket, no vsock device)."""

    code = "connection_failed"


class AddressInvalid(ConfigurationError):
    """An address string is not ``tcp://HOST:PORT``, ``unix:///PATH`` or ``vsock://CID:PORT``."""

    code = "address_invalid"


class HandlerFailed(Error):
    """The route's handler failed unexpectedly (a bug on the server); details stay in the server's log."""

    code = "rpc_internal_error"


class RemoteError(Error):
    """An error whose code has no unique class in this process. ``remote_code`` is the code as sent."""

    code = "remote_error"

    def __init__(self, message: str, *, remote_code: str) -> None:
        super().__init__(message)
        self.remote_code = remote_code

    def __str__(self) -> str:
        return f"{self.remote_code}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"code": self.remote_code, "message": self.message}


_registry: dict[str, type[Error] | None] = {}
_registered: set[type[Error]] = set()


def _refresh_registry() -> None:
    stack: list[type[Error]] = [Error]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls in _registered:
            continue
        _registered.add(cls)
        code = cls.__dict__.get("code")
        if not isinstance(code, str) or cls is RemoteError:
            continue
        if code in _registry and _registry[code] is not cls:
            _registry[code] = None  # ambiguous: two classes claim it
        else:
            _registry[code] = cls


def error_from_wire(code: str, message: str) -> Error:
    """The enclavekit error for ``code`` (or a :class:`RemoteError`), carrying ``message``.

    The registry is brought up to date on every call (classes imported since are added, and a code claimed by
    two classes becomes ambiguous); errors are rare enough for the walk over the classes not to matter.
    """
    _refresh_registry()
    cls = _registry.get(code)
    if cls is not None:
        try:
            error = cls(message)
        except TypeError:
            pass
        else:
            if error.code == code:
                return error
    return RemoteError(message, remote_code=code)
