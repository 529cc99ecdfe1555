"""The vault enclave's measured configuration: whom it trusts and which KMS key holds its material.

The file is part of the enclave image (the simulator folds its bytes into PCR0; on Nitro it is baked into the EIF),
so a host that changes any of it boots an enclave with another PCR0: KMS (whose key policy pins the PCR0) gives it
no material, and the vault's peers (which accept only their own PCR0) refuse it as a ledger replica. JSON, parsed
once here into frozen dataclasses; unknown fields are refused::

    {"format": "enclavekit-vault-config", "version": 1,
     "kms": {"key_id": "...", "region": "us-east-1", "endpoint": {"url": "https://...", "ca_pem": "..."}},
     "ledger": {"replicas": 3, "quorum": 2},
     "attestation_roots": ["-----BEGIN CERTIFICATE-----..."],
     "guess_limit": 10,
     "operator_keys": ["64 hex digits (raw Ed25519 public key)", ...],
     "recovery": {"delay_s": 86400},
     "turn": {"urls": ["turn:turn.example.org:3478"], "secret": "...", "ttl": 300}}

* ``kms``: the key that seals every user's material (its policy must release only to this PCR0: checked at boot),
  and the endpoint with the CA its certificate must chain to (absent: AWS KMS in ``region``, system roots).
* ``ledger``: the guess ledger's replica set size and the quorum every count needs (more than half the replicas,
  so two quorums always share a replica). The host only lists the peers' addresses (routes); a peer counts only if
  its attestation verifies under ``attestation_roots`` with this enclave's own PCR0.
* ``attestation_roots``: the roots a peer's attestation must chain to — on Nitro the AWS Nitro root only; in the
  local stack the NSM simulator's root (its certificate is in the file, so it is measured).
* ``guess_limit``: the limit a vault gets when the enrolling user names none (1..255).
* ``operator_keys``: the keys that sign operator documents (invitation codes, proposals); optional, at most 16.
* ``recovery.delay_s``: how long a started recovery waits for a cancel before it can complete (1 s .. 30 days;
  absent: 24 h). Measured like the rest: a host that shortens it boots another PCR0 (ADR 0022).
* ``turn``: the TURN relay for calls (``services/vault/turn.py``): its URLs, the secret it shares with the vault
  (coturn's ``static-auth-secret``) and the lifetime of the per-call credentials; optional (no calls' relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclavekit.enclave.measured_config import (
    AWS_REGION,
    KMS_KEY_ID,
    InvalidEnclaveConfig,
    canonical,
    config_object,
    operator_keys,
    parse_json_document,
)
from enclavekit.errors import ConfigurationError
from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.recovery import DEFAULT_RECOVERY_DELAY, MAX_RECOVERY_DELAY
from enclavekit.services.vault.turn import TurnConfig

__all__ = [
    "ALLOWED_LAUNCH_SETTINGS",
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "MAX_CONFIG_BYTES",
    "MAX_REPLICAS",
    "NotAnOperator",
    "VaultEnclaveConfig",
    "vault_config_document",
]

CONFIG_FORMAT: Final = "enclavekit-vault-config"
CONFIG_VERSION: Final = 1
MAX_CONFIG_BYTES: Final = 64 * 1024
MAX_ROOTS: Final = 4
MAX_ROOT_PEM: Final = 8 * 1024
MAX_REPLICAS: Final = 15
ALLOWED_LAUNCH_SETTINGS: Final = frozenset(
    {"kms_route", "kms_access_key_id", "kms_secret_access_key", "ledger_peers", "objects_route"}
)
"""Host launch settings the vault accepts: routes that carry only ciphertext (the TCP route to the measured KMS
endpoint — TLS ends in the enclave and checks the measured CA — the emulator's unchecked credentials, the peers'
addresses, the host's object service for encrypted objects). Any other (``kms_url``, ``trust_sim_root``,
``kms_key_id``, the former ``objects`` folder...) is refused at boot."""


class NotAnOperator(VaultRejected):
    """An operator document whose signature is not by one of the measured operator keys."""

    code = "not_an_operator"


@dataclass(frozen=True, slots=True)
class VaultEnclaveConfig:
    """The parsed, checked configuration. ``raw`` is the exact measured bytes; ``roots`` are DER certificates."""

    kms_key_id: str
    kms_region: str
    kms_endpoint: MeasuredKmsEndpoint
    replicas: int
    quorum: int
    roots: tuple[bytes, ...]
    guess_limit: int
    raw: bytes
    operator_keys: tuple[bytes, ...] = ()
    """Raw Ed25519 public keys whose signatures the vault accepts on operator documents (invitations,
    proposals): :meth:`require_operator_signature`."""
    recovery_delay: int = DEFAULT_RECOVERY_DELAY
    """Seconds a started recovery waits for a cancel before it can complete (ADR 0022)."""
    turn: TurnConfig | None = None
    """The TURN relay whose per-call credentials the vault issues (``call.turn``); None: calls get none."""

    @classmethod
    def from_bytes(cls, data: bytes) -> VaultEnclaveConfig:
        """Parse and check the file; raise :class:`InvalidEnclaveConfig` naming the first problem."""
        document = parse_json_document(data, what="vault", max_bytes=MAX_CONFIG_BYTES)
        top = config_object(
            document,
            "configuration",
            {
                "format",
                "version",
                "kms",
                "ledger",
                "attestation_roots",
                "guess_limit",
                "operator_keys",
                "recovery",
                "turn",
            },
        )
        if top.get("format") != CONFIG_FORMAT or top.get("version") != CONFIG_VERSION:
            raise InvalidEnclaveConfig(f"expected format {CONFIG_FORMAT!r} version {CONFIG_VERSION}")
        kms = config_object(top.get("kms"), "kms", {"key_id", "region", "endpoint"})
        key_id, region = kms.get("key_id"), kms.get("region")
        if not isinstance(key_id, str) or not KMS_KEY_ID.fullmatch(key_id):
            raise InvalidEnclaveConfig("kms.key_id must be a KMS key id or ARN")
        if not isinstance(region, str) or not AWS_REGION.fullmatch(region):
            raise InvalidEnclaveConfig("kms.region must be an AWS region name")
        try:
            endpoint = MeasuredKmsEndpoint.from_document(kms.get("endpoint"), region=region)
        except ConfigurationError as exc:
            raise InvalidEnclaveConfig(f"kms.endpoint: {exc}") from exc
        ledger = config_object(top.get("ledger"), "ledger", {"replicas", "quorum"})
        replicas, quorum = ledger.get("replicas"), ledger.get("quorum")
        if type(replicas) is not int or not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidEnclaveConfig(f"ledger.replicas must be an integer in 1..{MAX_REPLICAS}")
        if type(quorum) is not int or not replicas < 2 * quorum or quorum > replicas:
            raise InvalidEnclaveConfig("ledger.quorum must be more than half of ledger.replicas, and at most all")
        roots = _roots(top.get("attestation_roots"))
        limit = top.get("guess_limit")
        if type(limit) is not int or not 1 <= limit <= 255:
            raise InvalidEnclaveConfig("guess_limit must be an integer in 1..255")
        operators = operator_keys(top.get("operator_keys"))
        recovery = config_object(top.get("recovery", {}), "recovery", {"delay_s"})
        delay = recovery.get("delay_s", DEFAULT_RECOVERY_DELAY)
        if type(delay) is not int or not 1 <= delay <= MAX_RECOVERY_DELAY:
            raise InvalidEnclaveConfig(f"recovery.delay_s must be an integer in 1..{MAX_RECOVERY_DELAY}")
        turn = None if top.get("turn") is None else TurnConfig.from_json(top.get("turn"))
        return cls(key_id, region, endpoint, replicas, quorum, roots, limit, data, operators, delay, turn)

    def require_operator_signature(self, message: bytes, signature: bytes) -> bytes:
        """The operator key (one of the measured ``operator_keys``) whose Ed25519 signature over ``message`` this
        is; raise :class:`NotAnOperator` otherwise. The host cannot forge an operator document: the keys are
        measured and the private keys are the operator's, not the host's."""
        for key in self.operator_keys:
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
            except InvalidSignature:
                continue
            return key
        raise NotAnOperator("not signed by an operator key named in the vault's measured configuration")


def _roots(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ROOTS:
        raise InvalidEnclaveConfig(f"attestation_roots must list 1..{MAX_ROOTS} PEM certificates")
    roots: list[bytes] = []
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_ROOT_PEM:
            raise InvalidEnclaveConfig(f"an attestation root is one PEM certificate of at most {MAX_ROOT_PEM} chars")
        try:
            certificate = x509.load_pem_x509_certificate(item.encode())
        except ValueError as exc:
            raise InvalidEnclaveConfig("an attestation root is not a PEM certificate") from exc
        roots.append(certificate.public_bytes(serialization.Encoding.DER))
    if len(set(roots)) != len(roots):
        raise InvalidEnclaveConfig("attestation_roots lists a certificate twice")
    return tuple(roots)


def vault_config_document(
    *,
    kms_key_id: str,
    roots_der: list[bytes] | tuple[bytes, ...],
    kms_region: str = "us-east-1",
    kms_endpoint: MeasuredKmsEndpoint | None = None,
    replicas: int = 3,
    quorum: int = 2,
    guess_limit: int = 10,
    operator_keys: tuple[bytes, ...] = (),
    recovery_delay: int | None = None,
    turn: TurnConfig | None = None,
) -> bytes:
    """The canonical bytes of a vault configuration (checked by parsing it back)."""
    pems = [x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode() for der in roots_der]
    document = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "kms": {"key_id": kms_key_id, "region": kms_region}
        | ({} if kms_endpoint is None else {"endpoint": kms_endpoint.to_document()}),
        "ledger": {"replicas": replicas, "quorum": quorum},
        "attestation_roots": pems,
        "guess_limit": guess_limit,
    } | ({"operator_keys": [key.hex() for key in operator_keys]} if operator_keys else {})
    if recovery_delay is not None:
        document["recovery"] = {"delay_s": recovery_delay}
    if turn is not None:
        document["turn"] = turn.to_json()
    data = canonical(document)
    VaultEnclaveConfig.from_bytes(data)
    return data
