"""The operations inside a vault envelope: one module per feature, each exporting ``OPERATIONS`` (name → handler).

A handler gets the :class:`~enclavekit.services.vault.enclave_app.VaultEnclave` it runs in and the opened
:class:`Request` (user, operation, JSON payload, the enclave's clock) and returns the ``ok`` object; it raises a
:class:`~enclavekit.services.vault.errors.VaultRejected` (or any :class:`~enclavekit.errors.Error`) to answer an
error — inside the response envelope, never visible to the host. Payload fields are read with the helpers here, so
a wrong type is ``bad_payload`` naming the field, never a crash.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enclavekit.services.vault.errors import VaultRejected

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = [
    "BadPayload",
    "Handler",
    "Request",
    "UnknownOp",
    "optional_bool",
    "optional_int",
    "payload_bytes",
    "payload_hex",
    "payload_str",
]


class UnknownOp(VaultRejected):
    code = "unknown_op"


class BadPayload(VaultRejected):
    code = "bad_payload"


@dataclass(frozen=True, slots=True)
class Request:
    """One operation, opened and parsed: whose vault, which operation, its payload and the enclave's clock."""

    user: str
    op: str
    payload: Mapping[str, Any]
    now: float
    sender: str | None = None
    """For a peer request (``MessageSpace.{user}.forVault.{sender}.{op}``): the user whose app sent it."""
    message_id: str = ""
    """The envelope's message id (hex): a peer request's authorization is bound to it."""


Handler = Callable[["VaultEnclave", Request], Awaitable[dict[str, Any]]]


def payload_str(payload: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = payload.get(key, default)
    if not isinstance(value, str):
        raise BadPayload(f"{key} must be text")
    return value


def payload_bytes(payload: Mapping[str, Any], key: str) -> bytes:
    text = payload.get(key)
    if not isinstance(text, str):
        raise BadPayload(f"{key} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPayload(f"{key} is not base64") from exc


def payload_hex(payload: Mapping[str, Any], key: str, size: int) -> bytes:
    """``size`` bytes given as hex text under ``key`` (``bad_payload`` naming the field otherwise)."""
    text = payload_str(payload, key, default="")
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise BadPayload(f"{key} is hex") from exc
    if len(value) != size:
        raise BadPayload(f"{key} is {size} bytes")
    return value


def optional_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is not None and type(value) is not int:
        raise BadPayload(f"{key} is an integer")
    return value


def optional_bool(payload: Mapping[str, Any], key: str, *, default: bool = False) -> bool:
    value = payload.get(key, default)
    if type(value) is not bool:
        raise BadPayload(f"{key} is true or false")
    return value
