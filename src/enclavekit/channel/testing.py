"""A software attester and verifier for tests and examples. UNSAFE: it proves nothing about running code.

The "document" is ``CBOR [payload, Ed25519 signature]`` signed by a key in ordinary process memory, so anyone
holding that key can attest anything. It exists so the channel and RPC layers (and code built on them) can be
tested fast and deterministically (Ed25519 and CBOR are deterministic, so documents are reproducible bytes,
which the wire test vector relies on). Real deployments use the NSM (or its simulator) and
``enclavekit.attestation.nitro``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclavekit.attestation import cbor
from enclavekit.attestation.errors import (
    Malformed,
    MeasurementMismatch,
    NonceMismatch,
    SignatureInvalid,
    Stale,
    TimestampInFuture,
)
from enclavekit.attestation.report import VerifiedAttestation
from enclavekit.errors import ConfigurationError

__all__ = ["UnsafeTestAttestation", "UnsafeTestAttester", "UnsafeTestVerifier"]

_CONTEXT = b"enclavekit unsafe test document\x00"
_MAX_DOCUMENT = 8 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsafeTestAttestation(VerifiedAttestation):
    """A verified test document (satisfies :class:`~enclavekit.channel.protocols.AttestedPeer`)."""

    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None


class UnsafeTestAttester:
    """Signs test documents claiming ``measurement`` with ``signing_key``; ``clock`` stamps them."""

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        *,
        measurement: bytes,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._key = signing_key
        self.measurement = measurement
        self.clock = clock

    @classmethod
    def generate(cls, *, measurement: bytes, clock: Callable[[], datetime] = _utc_now) -> UnsafeTestAttester:
        return cls(Ed25519PrivateKey.generate(), measurement=measurement, clock=clock)

    @property
    def root(self) -> bytes:
        """The public key a verifier must trust for these documents."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def attestation(self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes) -> bytes:
        payload = cbor.encode(
            {
                "measurement": self.measurement,
                "timestamp_ms": int(self.clock().timestamp() * 1000),
                "public_key": public_key,
                "user_data": user_data,
                "nonce": nonce,
            }
        )
        return cbor.encode([payload, self._key.sign(_CONTEXT + payload)])


class UnsafeTestVerifier:
    """Verifies test documents signed by ``root`` whose measurement is one of ``measurements``."""

    def __init__(self, root: bytes, *, measurements: tuple[bytes, ...], max_age: timedelta | None = None) -> None:
        if not measurements:
            raise ConfigurationError("a verifier must pin at least one measurement")
        self._root = Ed25519PublicKey.from_public_bytes(root)
        self.measurements = measurements
        self.max_age = max_age

    def verify(self, document: bytes, *, nonce: bytes | None, now: datetime) -> UnsafeTestAttestation:
        item = cbor.decode(document, max_size=_MAX_DOCUMENT, what="test document")
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
            raise Malformed("a test document is [payload, signature]")
        payload, signature = item
        try:
            self._root.verify(signature, _CONTEXT + payload)
        except InvalidSignature:
            raise SignatureInvalid("test document signature does not verify") from None
        fields = cbor.decode(payload, max_size=_MAX_DOCUMENT, what="test document payload")
        if not isinstance(fields, dict) or set(fields) != {
            "measurement",
            "timestamp_ms",
            "public_key",
            "user_data",
            "nonce",
        }:
            raise Malformed("test document payload has the wrong fields")
        for name in ("public_key", "user_data", "nonce"):
            if fields[name] is not None and not isinstance(fields[name], bytes):
                raise Malformed(f"test document {name} must be bytes or null")
        if not isinstance(fields["measurement"], bytes) or type(fields["timestamp_ms"]) is not int:
            raise Malformed("test document measurement or timestamp has the wrong type")
        made = datetime.fromtimestamp(fields["timestamp_ms"] / 1000, tz=UTC)
        if made > now + timedelta(seconds=60):
            raise TimestampInFuture(f"test document made at {made.isoformat()}, after {now.isoformat()}")
        if self.max_age is not None and now - made > self.max_age:
            raise Stale(f"test document is {(now - made).total_seconds():.0f} s old")
        if fields["measurement"] not in self.measurements:
            raise MeasurementMismatch("test document measurement is not pinned by the policy")
        if nonce is not None and (fields["nonce"] is None or not hmac.compare_digest(fields["nonce"], nonce)):
            raise NonceMismatch("test document does not carry the expected nonce")
        measurements: Mapping[str, bytes] = MappingProxyType({"measurement": fields["measurement"]})
        return UnsafeTestAttestation(
            tee="unsafe-test",
            timestamp=made,
            debug=False,
            measurements=measurements,
            public_key=fields["public_key"],
            user_data=fields["user_data"],
            nonce=fields["nonce"],
        )
