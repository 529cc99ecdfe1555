"""Access tokens: ES256 JWTs signed by KMS (AWS or the local emulator), checked locally with the public key.

Header ``{alg: ES256, typ: JWT, kid: <KMS key id>}``; claims ``sub`` (the encrypted push ID), ``iss``, ``iat``,
``nbf``, ``exp`` (iat + 7 days) and ``enclave_track``. KMS ``Sign`` (``ECDSA_SHA_256``) returns a DER signature;
JWS wants the raw ``r ‖ s`` (32 bytes each), so it is converted. Verification accepts only ES256 with our ``kid``
and allows 60 s of clock skew on ``nbf``, ``iat`` and ``exp``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from enclavekit.services.notify.errors import NotifyUnavailable, Unauthorized

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = ["SKEW", "TOKEN_LIFETIME", "Claims", "TokenIssuer", "b64url", "der_to_raw"]

TOKEN_LIFETIME = 7 * 86_400
SKEW = 60
MAX_TOKEN = 4096


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def der_to_raw(signature: bytes) -> bytes:
    """A DER ECDSA signature (what KMS returns) as JWS's raw ``r ‖ s`` for P-256."""
    r, s = decode_dss_signature(signature)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    iss: str
    iat: int
    nbf: int
    exp: int
    enclave_track: str


class TokenIssuer:
    """Issues tokens with KMS ``Sign`` and verifies them with the key's public half (fetched once)."""

    def __init__(self, kms: KMSClient, key_id: str, *, issuer: str, enclave_track: str) -> None:
        self._kms = kms
        self.key_id = key_id
        self.issuer = issuer
        self.enclave_track = enclave_track
        try:
            der = kms.get_public_key(KeyId=key_id)["PublicKey"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise NotifyUnavailable(f"cannot read the JWT signing key from KMS: {exc}") from exc
        public = serialization.load_der_public_key(der)
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
            raise NotifyUnavailable("the JWT signing key is not ECC_NIST_P256")
        self._public = public
        self._header = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": key_id}, separators=(",", ":")).encode())

    def issue(self, subject: str, *, now: int) -> tuple[str, int]:
        """A signed token for ``subject``; returns it and its expiry (unix s)."""
        claims: dict[str, str | int] = {
            "sub": subject,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME,
            "enclave_track": self.enclave_track,
        }
        signing_input = f"{self._header}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        try:
            answer = self._kms.sign(
                KeyId=self.key_id,
                Message=signing_input.encode(),
                MessageType="RAW",
                SigningAlgorithm="ECDSA_SHA_256",
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise NotifyUnavailable(f"KMS could not sign the token ({type(exc).__name__})") from exc
        return f"{signing_input}.{b64url(der_to_raw(answer['Signature']))}", now + TOKEN_LIFETIME

    def verify(self, token: str, *, now: int) -> Claims:
        """The token's claims if it is ours, intact and current (60 s skew); else :class:`Unauthorized`."""
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise Unauthorized("malformed token")
        header_b64, claims_b64, signature_b64 = token.split(".")
        try:
            header = json.loads(_unb64url(header_b64))
            claims: dict[str, Any] = json.loads(_unb64url(claims_b64))
            signature = _unb64url(signature_b64)
        except (ValueError, binascii.Error) as exc:
            raise Unauthorized("malformed token") from exc
        if not isinstance(header, dict) or header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            raise Unauthorized("token not signed by this service's key (alg/kid)")
        if len(signature) != 64:
            raise Unauthorized("malformed token signature")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        try:
            self._public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise Unauthorized("token signature does not verify") from exc
        try:
            parsed = Claims(
                sub=str(claims["sub"]),
                iss=str(claims["iss"]),
                iat=int(claims["iat"]),
                nbf=int(claims["nbf"]),
                exp=int(claims["exp"]),
                enclave_track=str(claims.get("enclave_track", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise Unauthorized("token claims are incomplete") from exc
        if parsed.iss != self.issuer:
            raise Unauthorized("token issued by someone else")
        if now + SKEW < parsed.nbf or now + SKEW < parsed.iat:
            raise Unauthorized("token not valid yet")
        if now - SKEW >= parsed.exp:
            raise Unauthorized("token expired")
        return parsed
