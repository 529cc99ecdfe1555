"""The end-to-end envelope between a user's app and its vault enclave (the host relays it, blind).

The app takes the vault's X25519 key from the vault enclave's attestation document (its ``public_key``; see
:func:`enclavekit.services.vault.client.verify_vault_key`), makes a **single-use** X25519 key for every request
(so PIN material never shares a key with anything), and::

    shared   = X25519(ephemeral, vault)
    k_req    = HKDF-SHA256(shared, salt = "enclavekit vault envelope v1", info = "app->vault" ‖ eph ‖ vault)
    k_resp   = HKDF-SHA256(shared, salt = "enclavekit vault envelope v1", info = "vault->app" ‖ eph ‖ vault)

Request (binary, versioned from its first byte; all integers big-endian)::

    0x01 ‖ eph(32) ‖ nonce(24) ‖ timestamp_ms(8) ‖ message_id(16) ‖ len(1) user ‖ len(1) op ‖ ciphertext

``ciphertext = XChaCha20-Poly1305(k_req, nonce, payload, ad = everything before the ciphertext)``: the user and
the operation are authenticated, so the host cannot re-route a request to another user's vault or operation. The
response is ``0x01 ‖ nonce(24) ‖ XChaCha20-Poly1305(k_resp, nonce, payload, ad = 0x01 ‖ message_id)``, readable
only by the holder of the ephemeral key. The vault refuses a request outside the timestamp window or whose
message id it has seen (:class:`ReplayGuard`). ``docs/vault.md`` has a test vector.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

from enclavekit.services.vault.errors import VaultRejected

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE",
    "EnvelopeInvalid",
    "EnvelopeReplayed",
    "OpenedRequest",
    "ReplayGuard",
    "RequestEnvelope",
    "open_request",
    "open_response",
    "seal_request",
    "seal_response",
]

ENVELOPE_VERSION: Final = 1
MAX_ENVELOPE: Final = 256 * 1024
SALT: Final = b"enclavekit vault envelope v1"
_FIXED: Final = 1 + 32 + 24 + 8 + 16
_TAG: Final = 16


class EnvelopeInvalid(VaultRejected):
    """The bytes are not a v1 envelope, are too large, name another user or operation, or do not decrypt."""

    code = "envelope_invalid"


class EnvelopeReplayed(VaultRejected):
    """The envelope's timestamp is outside the window, or its message id was already seen."""

    code = "envelope_replayed"


def _keys(shared: bytes, eph: bytes, vault: bytes) -> tuple[bytes, bytes]:
    def derive(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=label + eph + vault).derive(shared)

    return derive(b"app->vault"), derive(b"vault->app")


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """What the app keeps to read the response: the message id and the response key (memory only)."""

    data: bytes
    message_id: bytes
    response_key: bytes = field(repr=False)


def seal_request(
    vault_public: bytes,
    user: str,
    op: str,
    payload: bytes,
    *,
    now: float,
    ephemeral: bytes | None = None,
    nonce: bytes | None = None,
    message_id: bytes | None = None,
) -> RequestEnvelope:
    """A request to ``vault_public`` for ``user``'s ``op``; ``ephemeral``/``nonce``/``message_id`` only for vectors."""
    eph_secret = ephemeral or secrets.token_bytes(32)
    eph = crypto_scalarmult_base(eph_secret)
    shared = crypto_scalarmult(eph_secret, vault_public)
    k_req, k_resp = _keys(shared, eph, vault_public)
    mid = message_id or secrets.token_bytes(16)
    nonce = nonce or secrets.token_bytes(24)
    u, o = user.encode(), op.encode()
    if not (0 < len(u) < 256 and 0 < len(o) < 256):
        raise EnvelopeInvalid("user and op are 1..255 bytes")
    head = bytes([ENVELOPE_VERSION]) + eph + nonce + struct.pack(">Q", int(now * 1000)) + mid
    head += bytes([len(u)]) + u + bytes([len(o)]) + o
    data = head + crypto_aead_xchacha20poly1305_ietf_encrypt(payload, head, nonce, k_req)
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeInvalid("envelope too large")
    return RequestEnvelope(data, mid, k_resp)


@dataclass(frozen=True, slots=True)
class OpenedRequest:
    """A request the vault opened: who and what it claims (authenticated), and how to answer it."""

    user: str
    op: str
    timestamp: float
    message_id: bytes
    payload: bytes = field(repr=False)
    response_key: bytes = field(repr=False)


def open_request(vault_secret: bytes, data: bytes) -> OpenedRequest:
    """Parse and decrypt a request envelope with the vault's X25519 secret; raises :class:`EnvelopeInvalid`."""
    if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE:
        raise EnvelopeInvalid("envelope too large")
    if len(data) < _FIXED + 2 + _TAG or data[0] != ENVELOPE_VERSION:
        raise EnvelopeInvalid("not a vault envelope v1")
    eph, nonce = data[1:33], data[33:57]
    (millis,) = struct.unpack(">Q", data[57:65])
    mid = data[65:81]
    at = _FIXED
    try:
        ulen = data[at]
        user = data[at + 1 : at + 1 + ulen].decode()
        at += 1 + ulen
        olen = data[at]
        op = data[at + 1 : at + 1 + olen].decode()
        at += 1 + olen
    except (IndexError, UnicodeDecodeError) as exc:
        raise EnvelopeInvalid("envelope header is malformed") from exc
    if not user or not op or len(user.encode()) != ulen or len(op.encode()) != olen or len(data) < at + _TAG:
        raise EnvelopeInvalid("envelope header is malformed")
    vault = crypto_scalarmult_base(vault_secret)
    try:
        shared = crypto_scalarmult(vault_secret, eph)
    except Exception as exc:  # a low-order point: libsodium refuses it
        raise EnvelopeInvalid("bad ephemeral key") from exc
    k_req, k_resp = _keys(shared, eph, vault)
    try:
        payload = crypto_aead_xchacha20poly1305_ietf_decrypt(data[at:], data[:at], nonce, k_req)
    except CryptoError as exc:
        raise EnvelopeInvalid("envelope does not decrypt for this vault") from exc
    return OpenedRequest(user, op, millis / 1000, mid, payload, k_resp)


def seal_response(request: OpenedRequest, payload: bytes, *, nonce: bytes | None = None) -> bytes:
    nonce = nonce or secrets.token_bytes(24)
    ad = bytes([ENVELOPE_VERSION]) + request.message_id
    return (
        bytes([ENVELOPE_VERSION])
        + nonce
        + crypto_aead_xchacha20poly1305_ietf_encrypt(payload, ad, nonce, request.response_key)
    )


def open_response(request: RequestEnvelope, data: bytes) -> bytes:
    if len(data) > MAX_ENVELOPE or len(data) < 1 + 24 + _TAG or data[0] != ENVELOPE_VERSION:
        raise EnvelopeInvalid("not a vault response v1")
    ad = bytes([ENVELOPE_VERSION]) + request.message_id
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(data[25:], ad, data[1:25], request.response_key)
    except CryptoError as exc:
        raise EnvelopeInvalid("response does not decrypt for this request") from exc


@dataclass
class ReplayGuard:
    """Accepts a message id once, with a timestamp within ``window`` seconds of ``now``; remembers at most
    ``capacity`` ids (when full, the oldest is forgotten and nothing at or before its timestamp is accepted any
    more, so a forgotten id cannot replay). An id forgotten because its timestamp left the window raises that floor
    too: a clock the host sets forward and then back (the simulator's) does not make it acceptable again."""

    window: float = 120.0
    capacity: int = 100_000
    _seen: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    _floor: float = 0.0

    def check(self, message_id: bytes, timestamp: float, *, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) < now - 2 * self.window:
            _, aged = self._seen.popitem(last=False)  # its timestamp is outside the window now: the window refuses it
            self._floor = max(self._floor, aged)  # ... and stays refused if the clock is set back (a host's clock)
        if abs(now - timestamp) > self.window or timestamp <= self._floor:
            raise EnvelopeReplayed("the envelope's timestamp is outside the accepted window")
        if message_id in self._seen:
            raise EnvelopeReplayed("the envelope was already received")
        self._seen[message_id] = timestamp
        while len(self._seen) > self.capacity:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)
