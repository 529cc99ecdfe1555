"""The error envelope every enclavekit HTTP service answers with, and the status an error maps to.

The body is ``{"allowRetry": bool, "error": {"code": str, "message": str}}`` — the World Chat backend's shape,
which notify's clients depend on — plus any fields an error adds (``asset_url``). ``allowRetry`` says whether
sending the same request later may succeed.

The status: an :class:`~enclavekit.errors.Error` subclass declares ``http_status`` (a class attribute); one that
does not is answered by its family — a rejection ``rejected_status`` (400 unless the service says otherwise), an
infrastructure failure 503, anything else 500 with its message withheld (it may name paths or settings).

Pure: no web framework here, so error classes may say how they travel without pulling one in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from enclavekit.errors import Error, InfrastructureError, Rejected

__all__ = [
    "INTERNAL_ERROR",
    "BadRequest",
    "InvalidContentLength",
    "PayloadTooLarge",
    "describe_validation",
    "envelope",
    "http_status",
    "render_envelope",
]

INTERNAL_ERROR: Final = "internal_server_error"
"""The code of every answer that hides what went wrong (a bug, or an error that is not an outside one's)."""


class BadRequest(Rejected):
    """The request does not validate (a field, a type, an unknown field, a bound); the message names the field."""

    code = "bad_request"
    http_status = 400


class InvalidContentLength(Rejected):
    """``Content-Length`` is not a decimal number of bytes (or two of them disagree)."""

    code = "bad_request"
    http_status = 400


class PayloadTooLarge(Rejected):
    """The request body is over the service's limit (refused before it is read whole)."""

    code = "payload_too_large"
    http_status = 413


def http_status(error: Error, *, rejected_status: int = 400) -> int:
    """The HTTP status ``error`` is answered with (see the module's docstring)."""
    declared = getattr(error, "http_status", None)
    if isinstance(declared, int):
        return declared
    if isinstance(error, Rejected):
        return rejected_status
    if isinstance(error, InfrastructureError):
        return 503
    return 500


def envelope(error: Error, *, rejected_status: int = 400) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for ``error``. A 500 says only :data:`INTERNAL_ERROR` and "internal error"."""
    status = http_status(error, rejected_status=rejected_status)
    if status >= 500 and not isinstance(error, InfrastructureError) and getattr(error, "http_status", None) is None:
        return status, {"allowRetry": True, "error": {"code": INTERNAL_ERROR, "message": "internal error"}}
    retry = getattr(error, "allow_retry", error.retryable)
    extra = getattr(error, "envelope_fields", None)
    body: dict[str, Any] = {"allowRetry": bool(retry), "error": {"code": error.code, "message": error.message}}
    if isinstance(extra, Mapping):
        body.update(extra)
    return status, body


def render_envelope(error: Error) -> tuple[int, Mapping[str, str], bytes]:
    """``(status, headers, body)`` of the envelope, for code below the web framework (ASGI middleware)."""
    status, body = envelope(error)
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def describe_validation(errors: Iterable[Mapping[str, Any]], *, located_in_request: bool) -> str:
    """One message naming the offending fields of pydantic's validation ``errors`` (at most three; inputs are
    never echoed): ``"topic: String should have at least 1 character"``, ``"0.hmac_key: ..."`` for the first
    item of a list, ``"body: not valid JSON"``.

    ``located_in_request``: the locations start with where in the request (``body``/``query``/``path``), as
    FastAPI's do; pydantic's own (``model_validate_json``) start at the field."""
    parts: list[str] = []
    for error in list(errors)[:3]:
        if error.get("type") == "json_invalid":
            parts.append("body: not valid JSON")
            continue
        location = [str(part) for part in error.get("loc", ())][1 if located_in_request else 0 :]
        parts.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
