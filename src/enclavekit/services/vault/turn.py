"""TURN relay credentials for one call (sans-I/O), as coturn's REST API defines them (``use-auth-secret``).

The TURN server and the vault share ``static-auth-secret``; the vault issues, per call and per party::

    username   = "{expiry unix seconds}:{name}"
    credential = base64(HMAC-SHA1(secret, username))

The server accepts them until ``expiry`` — short (minutes): a leaked credential relays for one call's lifetime,
never for a user. The secret and the TURN URLs come from the vault's measured configuration (``turn``): the TURN
server runs outside the enclave and knows the secret anyway; what it protects is relay bandwidth, not user data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Final

from enclavekit.enclave.measured_config import InvalidEnclaveConfig, config_object

__all__ = ["MAX_TTL", "TurnConfig", "turn_credentials"]

MAX_TTL: Final = 3600
_URL: Final = re.compile(r"turns?:[A-Za-z0-9.\-\[\]:]{1,253}(\?transport=(udp|tcp))?")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """``{"urls": ["turn:host:3478?transport=udp", ...], "secret": "...", "ttl": 300}``."""

    urls: tuple[str, ...]
    secret: bytes
    ttl: int = 300

    @classmethod
    def from_json(cls, value: Any) -> TurnConfig:
        raw = config_object(value, "turn", {"urls", "secret", "ttl"})
        urls, secret, ttl = raw.get("urls"), raw.get("secret"), raw.get("ttl", 300)
        if (
            not isinstance(urls, list)
            or not 1 <= len(urls) <= 8
            or not all(isinstance(u, str) and _URL.fullmatch(u) for u in urls)
        ):
            raise InvalidEnclaveConfig("turn.urls lists 1..8 turn: or turns: URLs")
        if not isinstance(secret, str) or not 16 <= len(secret) <= 256:
            raise InvalidEnclaveConfig("turn.secret is 16..256 characters (coturn's static-auth-secret)")
        if type(ttl) is not int or not 30 <= ttl <= MAX_TTL:
            raise InvalidEnclaveConfig(f"turn.ttl is 30..{MAX_TTL} seconds")
        return cls(tuple(urls), secret.encode(), ttl)

    def to_json(self) -> dict[str, Any]:
        return {"urls": list(self.urls), "secret": self.secret.decode(), "ttl": self.ttl}


def turn_credentials(config: TurnConfig, name: str, *, now: float) -> dict[str, Any]:
    """Credentials for ``name`` (e.g. ``{call}:{user}``) valid until ``now + ttl``, in the RTCIceServer shape."""
    expiry = int(now) + config.ttl
    username = f"{expiry}:{name}"
    credential = base64.b64encode(hmac.new(config.secret, username.encode(), hashlib.sha1).digest()).decode()
    return {"urls": list(config.urls), "username": username, "credential": credential, "expires_at": expiry}
