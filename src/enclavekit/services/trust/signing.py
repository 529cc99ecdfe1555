"""EAR tokens: the service signs each verification's EAR claims set as a JWT (ES256, RFC 7515 compact form).

The key is made once and kept in the state folder (mode 0600); its public half is published as a JWK set at
``/.well-known/jwks.json`` so a program can check a token offline with any JOSE library, or with
:func:`verify_token`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from enclavekit.errors import ConfigurationError, Rejected

__all__ = ["EAR_MEDIA_TYPE", "EarSigner", "TokenInvalid", "verify_token"]

EAR_MEDIA_TYPE = "application/eat-ear+jwt"


class TokenInvalid(Rejected):
    code = "token_invalid"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class EarSigner:
    """Signs EAR claims sets with one P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError("the EAR signing key must be a P-256 key")
        self._key = key
        numbers = key.public_key().public_numbers()
        self._jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
            "use": "sig",
            "alg": "ES256",
        }
        thumbprint = json.dumps({k: self._jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        self.kid = _b64(hashlib.sha256(thumbprint.encode()).digest())  # RFC 7638
        self._jwk["kid"] = self.kid

    @classmethod
    def load_or_create(cls, path: Path) -> EarSigner:
        """The key at ``path``, made (atomically, 0600) if absent."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            with contextlib.suppress(FileExistsError):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(handle, "wb") as out:
                    out.write(pem)
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{path}: cannot load the EAR signing key ({exc})") from exc
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{path}: the EAR signing key is not an EC key")
        return cls(loaded)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def verify_token(token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The claims of ``token`` if a key of ``jwks`` signed it (ES256); raise :class:`TokenInvalid`."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(claims_b64))
        signature = _unb64(signature_b64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenInvalid("not a compact JWS") from exc
    if not isinstance(header, dict) or header.get("alg") != "ES256" or len(signature) != 64:
        raise TokenInvalid("only ES256 tokens are accepted")
    key = next((k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if key is None:
        raise TokenInvalid("no key with this kid")
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_unb64(key["x"]), "big"), int.from_bytes(_unb64(key["y"]), "big"), ec.SECP256R1()
    ).public_key()
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{header_b64}.{claims_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TokenInvalid("signature does not verify") from exc
    if not isinstance(claims, dict):
        raise TokenInvalid("claims are not a JSON object")
    return claims
