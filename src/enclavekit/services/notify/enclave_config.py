"""The notify enclave's measured configuration: where its plaintext may go, and which KMS key it uses.

The file is part of the enclave image (the simulator folds its bytes into PCR0, see
:func:`enclavekit.enclave.runtime.image_files`; on Nitro it is baked into the EIF), so nothing the host controls at
run time — an RPC route, a launch argument, an environment variable — can change it without changing PCR0, and
a changed PCR0 is refused by clients (pinned PCR0) and by KMS (key policy): it gets neither the push key nor the
provider API key. It is JSON, parsed once here into frozen dataclasses; unknown fields are refused::

    {"format": "enclavekit-notify-config", "version": 1,
     "provider": {"url": "https://HOST[:PORT][/PREFIX]", "ca_pem": "-----BEGIN CERTIFICATE-----...",
                  "timeout": 10, "max_attempts": 4, "backoff": 0.2, "aliases_per_request": 50,
                  "alias_label": "push_id"},
     "kms": {"key_id": "...", "region": "us-east-1", "api_key_ciphertext": "BASE64 CiphertextBlob",
             "endpoint": {"url": "https://HOST[:PORT]", "ca_pem": "-----BEGIN CERTIFICATE-----..."}},
     "operator_keys": ["64 hex digits (raw Ed25519 public key)", ...]}

* ``provider.url``: ``https`` only; the enclave runs TLS end to end (through the host's CONNECT proxy, which is
  only a TCP path) and accepts only a certificate that chains to ``provider.ca_pem`` and names the URL's host.
* ``kms.api_key_ciphertext``: the provider API key as a KMS ``CiphertextBlob`` under ``kms.key_id``; the enclave
  decrypts it with an attested Recipient (encryption context :data:`API_KEY_CONTEXT`). The same key wraps the
  persisted push key (:data:`PUSH_KEY_CONTEXT`).
* ``kms.endpoint``: which KMS the enclave talks to and the roots its TLS certificate must chain to
  (:class:`~enclavekit.kms.measured.MeasuredKmsEndpoint`; absent: AWS KMS in ``kms.region`` with the system's
  roots). The host supplies only the TCP route (``kms_route``), never the URL or the trust anchor.
* ``operator_keys``: the callers (client identity keys) an operator-only route would accept. notify has no
  operator-only route today; :meth:`NotifyEnclaveConfig.require_operator` is the check any such route must make.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

from enclavekit.enclave.measured_config import AWS_REGION as _REGION
from enclavekit.enclave.measured_config import KMS_KEY_ID as _KEY_ID
from enclavekit.enclave.measured_config import InvalidEnclaveConfig, canonical, operator_keys, parse_json_document
from enclavekit.enclave.measured_config import config_object as _object
from enclavekit.errors import ConfigurationError, Rejected
from enclavekit.kms.measured import MeasuredKmsEndpoint, check_pinned_ca
from enclavekit.rpc import CallContext

__all__ = [
    "API_KEY_CONTEXT",
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "MAX_CONFIG_BYTES",
    "PUSH_KEY_CONTEXT",
    "InvalidEnclaveConfig",
    "KmsSettings",
    "NotAnOperator",
    "NotifyEnclaveConfig",
    "ProviderEndpoint",
    "canonical",
]

CONFIG_FORMAT: Final = "enclavekit-notify-config"
CONFIG_VERSION: Final = 1
MAX_CONFIG_BYTES: Final = 128 * 1024
MAX_CA_PEM: Final = 64 * 1024
MAX_CIPHERTEXT: Final = 6144
API_KEY_CONTEXT: Final = {"enclavekit:app": "notify", "enclavekit:purpose": "provider-api-key"}
"""The encryption context the provider API key is encrypted under (and decrypted with)."""
PUSH_KEY_CONTEXT: Final = {"enclavekit:app": "notify", "enclavekit:purpose": "push-key"}
"""The encryption context of the persisted push key's data key."""
_HOST: Final = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_PREFIX: Final = re.compile(r"^(/[A-Za-z0-9._~\-]+)*/?$")
_LABEL: Final = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class NotAnOperator(Rejected):
    """An operator-only route was called by a caller whose client key is not in the measured operator keys."""

    code = "not_an_operator"


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """The one provider the enclave delivers to: ``https://host:port/prefix``, its TLS roots pinned."""

    host: str
    port: int
    path_prefix: str
    ca_pem: str
    timeout: float = 10.0
    max_attempts: int = 4
    backoff: float = 0.2
    aliases_per_request: int = 50
    alias_label: str = "push_id"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.path_prefix}"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the provider's chain against ``ca_pem`` only (never the system store) and its host name."""
        context = ssl.create_default_context(cadata=self.ca_pem)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclass(frozen=True, slots=True)
class KmsSettings:
    """The KMS key that wraps the enclave's secrets, and the provider API key as its ciphertext."""

    key_id: str
    region: str
    api_key_ciphertext: bytes
    endpoint: MeasuredKmsEndpoint
    """The KMS the enclave talks to (URL and TLS trust anchor): measured, never host-chosen."""


@dataclass(frozen=True, slots=True)
class NotifyEnclaveConfig:
    """The parsed, checked configuration. ``raw`` is the exact measured bytes."""

    provider: ProviderEndpoint
    kms: KmsSettings
    operator_keys: tuple[bytes, ...]
    raw: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> NotifyEnclaveConfig:
        """Parse and check the file; raise :class:`InvalidEnclaveConfig` naming the first problem."""
        document = parse_json_document(data, what="notify", max_bytes=MAX_CONFIG_BYTES)
        top = _object(document, "configuration", {"format", "version", "provider", "kms", "operator_keys"})
        if top.get("format") != CONFIG_FORMAT or top.get("version") != CONFIG_VERSION:
            raise InvalidEnclaveConfig(f"expected format {CONFIG_FORMAT!r} version {CONFIG_VERSION}")
        provider = _provider(_object(top.get("provider"), "provider", _PROVIDER_FIELDS))
        kms = _kms(_object(top.get("kms"), "kms", {"key_id", "region", "api_key_ciphertext", "endpoint"}))
        return cls(provider, kms, operator_keys(top.get("operator_keys")), data)

    def to_document(self) -> dict[str, Any]:
        """The JSON document (what :func:`canonical` writes)."""
        p = self.provider
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "provider": {
                "url": p.url,
                "ca_pem": p.ca_pem,
                "timeout": p.timeout,
                "max_attempts": p.max_attempts,
                "backoff": p.backoff,
                "aliases_per_request": p.aliases_per_request,
                "alias_label": p.alias_label,
            },
            "kms": {
                "key_id": self.kms.key_id,
                "region": self.kms.region,
                "api_key_ciphertext": base64.b64encode(self.kms.api_key_ciphertext).decode(),
                "endpoint": self.kms.endpoint.to_document(),
            },
            "operator_keys": [key.hex() for key in self.operator_keys],
        }

    def require_operator(self, call: CallContext) -> bytes:
        """The caller's key if it is one of the measured operator keys; else raise :class:`NotAnOperator`."""
        key = call.client_key
        if key is None or key not in self.operator_keys:
            raise NotAnOperator("this route is for the operator keys named in the measured configuration")
        return key


_PROVIDER_FIELDS: Final = frozenset(
    {"url", "ca_pem", "timeout", "max_attempts", "backoff", "aliases_per_request", "alias_label"}
)


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not low <= float(value) <= high:
        raise InvalidEnclaveConfig(f"provider.{name} must be a number in {low}..{high}")
    return float(value)


def _provider(data: dict[str, Any]) -> ProviderEndpoint:
    url = data.get("url")
    if not isinstance(url, str) or len(url) > 512:
        raise InvalidEnclaveConfig("provider.url must be a string of at most 512 characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise InvalidEnclaveConfig("provider.url must be https:// (TLS ends inside the enclave)")
    if parts.username or parts.password or parts.query or parts.fragment or not parts.hostname:
        raise InvalidEnclaveConfig("provider.url must be https://host[:port][/prefix], nothing else")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise InvalidEnclaveConfig("provider.url has an invalid host") from None
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise InvalidEnclaveConfig("provider.url has an invalid port") from exc
    if not 0 < port < 65536:
        raise InvalidEnclaveConfig("provider.url has an invalid port")
    prefix = parts.path.rstrip("/")
    if not _PREFIX.fullmatch(parts.path or "/"):
        raise InvalidEnclaveConfig("provider.url has an invalid path prefix")
    ca_pem = data.get("ca_pem")
    if not isinstance(ca_pem, str):
        raise InvalidEnclaveConfig(f"provider.ca_pem must be PEM certificates, at most {MAX_CA_PEM} characters")
    try:
        check_pinned_ca(ca_pem, what="provider.ca_pem", max_chars=MAX_CA_PEM)
    except ConfigurationError as exc:
        raise InvalidEnclaveConfig(exc.message) from exc
    label = data.get("alias_label", "push_id")
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise InvalidEnclaveConfig("provider.alias_label must be 1..64 of [A-Za-z0-9_-]")
    return ProviderEndpoint(
        host=host,
        port=port,
        path_prefix=prefix,
        ca_pem=ca_pem,
        timeout=float(_number(data.get("timeout", 10.0), "timeout", 0.1, 120)),
        max_attempts=int(_number(data.get("max_attempts", 4), "max_attempts", 1, 10, integer=True)),
        backoff=float(_number(data.get("backoff", 0.2), "backoff", 0, 30)),
        aliases_per_request=int(
            _number(data.get("aliases_per_request", 50), "aliases_per_request", 1, 50, integer=True)
        ),
        alias_label=label,
    )


def _kms(data: dict[str, Any]) -> KmsSettings:
    key_id = data.get("key_id")
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise InvalidEnclaveConfig("kms.key_id must be a KMS key id or ARN")
    region = data.get("region", "us-east-1")
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise InvalidEnclaveConfig("kms.region must be an AWS region name")
    blob = data.get("api_key_ciphertext")
    if not isinstance(blob, str) or not 0 < len(blob) <= MAX_CIPHERTEXT:
        raise InvalidEnclaveConfig("kms.api_key_ciphertext must be base64 of a KMS CiphertextBlob")
    try:
        ciphertext = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEnclaveConfig("kms.api_key_ciphertext is not base64") from exc
    if not ciphertext:
        raise InvalidEnclaveConfig("kms.api_key_ciphertext is empty")
    try:
        endpoint = MeasuredKmsEndpoint.from_document(data.get("endpoint"), region=region)
    except ConfigurationError as exc:
        raise InvalidEnclaveConfig(f"kms.endpoint: {exc}") from exc
    return KmsSettings(key_id=key_id, region=region, api_key_ciphertext=ciphertext, endpoint=endpoint)
