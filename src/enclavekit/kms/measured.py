"""The KMS endpoint an enclave trusts, as its measured configuration names it. Pure parsing; no I/O.

An enclave's attested key release is confidential but not authenticated: anyone can seal a
``CiphertextForRecipient`` to the public key in the enclave's attestation document. A fake KMS could so hand the
enclave a key the host chose. So *which* KMS the enclave talks to, and the trust anchor its TLS certificate must
chain to, are part of what is measured (the app's ``--config`` file, folded into PCR0), never a launch setting::

    {"url": "https://kms.eu-west-1.amazonaws.com", "ca_pem": "-----BEGIN CERTIFICATE-----...",
     "unsafe_plain_http": false}

* ``url``: ``https://HOST[:PORT]``; absent: ``https://kms.REGION.amazonaws.com``.
* ``ca_pem``: the only roots the certificate may chain to; absent: the system's CA store (what AWS needs).
* ``unsafe_plain_http``: ``true`` lets ``url`` be ``http://`` — for a test against a plain emulator only; without
  it an ``http://`` URL is refused (:class:`~enclavekit.kms.errors.InsecureKmsEndpoint`).

The host supplies only the TCP route (the ``kms_route`` launch setting, ``HOST:PORT``: its proxy; on Nitro the
vsock proxy): TLS ends in the enclave and verifies the measured host, so a route to anything else fails with
:class:`~enclavekit.kms.errors.KmsEndpointUntrusted` before a request is sent.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from enclavekit.errors import ConfigurationError
from enclavekit.kms.endpoint import Credentials, KmsEndpoint
from enclavekit.kms.errors import InsecureKmsEndpoint

__all__ = ["MAX_KMS_CA_PEM", "MeasuredKmsEndpoint", "check_pinned_ca", "credentials_for", "parse_route"]

MAX_KMS_CA_PEM: Final = 64 * 1024
_FIELDS: Final = frozenset({"url", "ca_pem", "unsafe_plain_http"})
_HOST: Final = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_REGION: Final = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")


@dataclass(frozen=True, slots=True)
class MeasuredKmsEndpoint:
    """A KMS endpoint and its TLS trust anchor, fixed by the measured configuration.

    Guarantees: ``url`` is ``https://host[:port]`` unless ``unsafe_plain_http`` is set; ``ca_pem`` (when given)
    parses as certificates; :meth:`endpoint` verifies the server's chain against ``ca_pem`` only (or the system
    store when ``ca_pem`` is ``None``) and its name against ``url``'s host, whatever the route.
    """

    url: str
    region: str
    ca_pem: str | None = None
    unsafe_plain_http: bool = False

    def __post_init__(self) -> None:
        _check_url(self.url, self.unsafe_plain_http)
        if not _REGION.fullmatch(self.region):
            raise ConfigurationError(f"KMS region {self.region[:64]!r} is not an AWS region name")
        if self.ca_pem is not None:
            check_pinned_ca(self.ca_pem)

    @classmethod
    def for_region(cls, region: str) -> MeasuredKmsEndpoint:
        """AWS KMS in ``region``, verified against the system's CA store."""
        return cls(f"https://kms.{region}.amazonaws.com", region)

    @classmethod
    def from_document(cls, document: Any, *, region: str) -> MeasuredKmsEndpoint:
        """Parse a configuration's KMS endpoint object (``None``: AWS in ``region``); unknown fields are refused."""
        if document is None:
            return cls.for_region(region)
        if not isinstance(document, dict):
            raise ConfigurationError("the KMS endpoint must be an object {url, ca_pem, unsafe_plain_http}")
        unknown = sorted(set(document) - _FIELDS)
        if unknown:
            raise ConfigurationError(f"the KMS endpoint: unknown field {unknown[0][:64]!r}")
        url = document.get("url", f"https://kms.{region}.amazonaws.com")
        ca_pem = document.get("ca_pem")
        unsafe = document.get("unsafe_plain_http", False)
        if not isinstance(url, str) or (ca_pem is not None and not isinstance(ca_pem, str)):
            raise ConfigurationError("the KMS endpoint's url and ca_pem must be strings")
        if not isinstance(unsafe, bool):
            raise ConfigurationError("the KMS endpoint's unsafe_plain_http must be true or false")
        return cls(url.rstrip("/"), region, ca_pem, unsafe)

    def to_document(self) -> dict[str, Any]:
        """The JSON object :meth:`from_document` reads."""
        document: dict[str, Any] = {"url": self.url}
        if self.ca_pem is not None:
            document["ca_pem"] = self.ca_pem
        if self.unsafe_plain_http:
            document["unsafe_plain_http"] = True
        return document

    @property
    def is_aws(self) -> bool:
        host = urllib.parse.urlsplit(self.url).hostname or ""
        return host.endswith(".amazonaws.com")

    def ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2+, the chain verified against ``ca_pem`` only (or the system store) and the URL's host name."""
        context = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def endpoint(
        self,
        credentials: Credentials,
        *,
        route: tuple[str, int] | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
    ) -> KmsEndpoint:
        """The :class:`KmsEndpoint` for this measured URL, connecting through ``route`` (the host's proxy)."""
        context = None if self.url.startswith("http://") else self.ssl_context()
        return KmsEndpoint(
            self.url,
            region=self.region,
            credentials=credentials,
            timeout=timeout,
            attempts=attempts,
            ssl_context=context,
            route=route,
        )


def parse_route(value: str | None) -> tuple[str, int] | None:
    """The host-supplied TCP route ``HOST:PORT`` (``[V6]:PORT``), or ``None``; raises on anything else.

    A route is only a TCP path: it never changes which host TLS verifies, so the host may choose it."""
    if value is None or value == "":
        return None
    host, sep, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(value) > 300:
        raise ConfigurationError(f"kms_route {value[:80]!r}: expected HOST:PORT")
    return host, int(port_text)


def _check_url(url: str, unsafe_plain_http: bool) -> None:
    if not isinstance(url, str) or len(url) > 512:
        raise ConfigurationError("the KMS endpoint url must be a string of at most 512 characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not unsafe_plain_http:
        raise InsecureKmsEndpoint(
            f"the KMS endpoint {url[:128]!r} is not https: an enclave talks to KMS only over TLS that ends inside it "
            "(a measured unsafe_plain_http flag allows http for tests)"
        )
    if parts.scheme not in ("https", "http"):
        raise InsecureKmsEndpoint(f"the KMS endpoint {url[:128]!r} must be https://HOST[:PORT]")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigurationError("the KMS endpoint url must be https://HOST[:PORT], nothing else")
    host = parts.hostname
    if not host:
        raise ConfigurationError("the KMS endpoint url has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ConfigurationError("the KMS endpoint url has an invalid host") from None
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigurationError("the KMS endpoint url has an invalid port") from exc


def check_pinned_ca(ca_pem: str, *, what: str = "the KMS endpoint's ca_pem", max_chars: int = MAX_KMS_CA_PEM) -> None:
    """Raise :class:`ConfigurationError` unless ``ca_pem`` is PEM certificates that TLS can pin (``what`` names it)."""
    if not ca_pem.strip() or len(ca_pem) > max_chars:
        raise ConfigurationError(f"{what} must be PEM certificates, at most {max_chars} characters")
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem.encode())
        ssl.create_default_context(cadata=ca_pem)
    except (ValueError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{what} holds no usable certificate") from exc
    if not certificates:
        raise ConfigurationError(f"{what} holds no certificate")


def credentials_for(endpoint: MeasuredKmsEndpoint, settings: Mapping[str, str]) -> Credentials:
    """SigV4 credentials: the ``kms_access_key_id``/``kms_secret_access_key`` settings, else the environment,
    else (for a non-AWS endpoint: the local emulator, which checks none) a placeholder. Credentials only
    authorize calls; the key policy (bound to the measurement) decides what is released."""
    key, secret = settings.get("kms_access_key_id"), settings.get("kms_secret_access_key")
    if key and secret:
        return Credentials(key, secret, settings.get("kms_session_token") or None)
    try:
        return Credentials.from_environment()
    except ConfigurationError:
        if endpoint.is_aws:
            raise
        return Credentials("enclavekit", "enclavekit")
