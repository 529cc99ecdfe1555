"""Business (B2C) data contracts (sans-I/O): a business asks a user's vault for data under a signed contract.

A business is an Ed25519 key and a NATS identity (its ``business`` name). Its contract names the key, the user,
the profile fields it may read, the purpose and the time it ends; the business signs it::

    {"format": "enclavekit-data-contract", "version": 1, "id": 32 hex, "business": name, "key": 64 hex,
     "user": name, "fields": [...], "purpose": text, "expires_at": unix seconds}
    signature = Ed25519(key, "enclavekit data contract v1\\0" ‖ canonical JSON)

The user's vault accepts it (``contract.accept``: the signature, the user, not expired), and from then on every
read by the business — a peer request with an authorization of kind ``contract``, signed by the same key — is
checked against it: the contract is accepted, not revoked, not expired, the sender is the business, and every field
asked is in the contract. Each read is in the user's audit feed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclavekit.services.vault.connection import canonical, check_field, public_key, sign
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.objects import check_user

__all__ = [
    "CONTRACT_FORMAT",
    "ContractExpired",
    "ContractInvalid",
    "ContractRevoked",
    "DataContract",
    "offer_contract",
]

CONTRACT_FORMAT: Final = "enclavekit-data-contract"
MAX_PURPOSE: Final = 512
_LABEL: Final = b"enclavekit data contract v1\x00"
_ID: Final = re.compile(r"[0-9a-f]{32}")
_KEYS: Final = {"format", "version", "id", "business", "key", "user", "fields", "purpose", "expires_at"}


class ContractInvalid(VaultRejected):
    """Not a data contract v1, not signed by the key it names, for another user, or already expired."""

    code = "contract_invalid"


class ContractRevoked(VaultRejected):
    """The user revoked this contract (or never accepted it): the business reads nothing more."""

    code = "contract_revoked"


class ContractExpired(VaultRejected):
    """The contract's end has passed: the business reads nothing more."""

    code = "contract_expired"


@dataclass(frozen=True, slots=True)
class DataContract:
    id: str
    business: str
    key: bytes
    user: str
    fields: tuple[str, ...]
    purpose: str
    expires_at: float

    @classmethod
    def from_json(cls, raw: object) -> DataContract:
        if not isinstance(raw, dict) or set(raw) != _KEYS:
            raise ContractInvalid(f"a data contract has exactly the fields {sorted(_KEYS)}")
        if raw["format"] != CONTRACT_FORMAT or raw["version"] != 1:
            raise ContractInvalid(f"not an {CONTRACT_FORMAT} version 1")
        ident, key, purpose, fields = raw["id"], raw["key"], raw["purpose"], raw["fields"]
        if not isinstance(ident, str) or not _ID.fullmatch(ident):
            raise ContractInvalid("id is 32 lowercase hex digits")
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ContractInvalid("key is a raw Ed25519 public key, 64 lowercase hex digits")
        if not isinstance(purpose, str) or not 0 < len(purpose) <= MAX_PURPOSE:
            raise ContractInvalid(f"purpose is 1..{MAX_PURPOSE} characters")
        if not isinstance(fields, list) or not 0 < len(fields) <= 64:
            raise ContractInvalid("fields lists 1..64 profile fields")
        if type(raw["expires_at"]) not in (int, float):
            raise ContractInvalid("expires_at is a unix time")
        try:
            names = tuple(check_field(f, "profile field") for f in fields)
            business, user = check_user(raw["business"]), check_user(raw["user"])
        except VaultRejected as exc:
            raise ContractInvalid(str(exc)) from exc
        return cls(ident, business, bytes.fromhex(key), user, names, purpose, float(raw["expires_at"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CONTRACT_FORMAT,
            "version": 1,
            "id": self.id,
            "business": self.business,
            "key": self.key.hex(),
            "user": self.user,
            "fields": list(self.fields),
            "purpose": self.purpose,
            "expires_at": self.expires_at,
        }

    def signed_bytes(self) -> bytes:
        return _LABEL + canonical(self.to_json())

    def check_signature(self, signature: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, self.signed_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise ContractInvalid("the contract is not signed by the key it names") from exc


def offer_contract(
    business_key: bytes, *, business: str, user: str, fields: list[str], purpose: str, expires_at: float
) -> tuple[DataContract, bytes]:
    """A new contract signed with ``business_key`` (an Ed25519 seed): (the contract, its signature)."""
    document = {
        "format": CONTRACT_FORMAT,
        "version": 1,
        "id": secrets.token_hex(16),
        "business": business,
        "key": public_key(business_key).hex(),
        "user": user,
        "fields": fields,
        "purpose": purpose,
        "expires_at": expires_at,
    }
    contract = DataContract.from_json(document)
    return contract, sign(business_key, contract.signed_bytes())
