"""A KMS endpoint over the standard library: the AWS KMS JSON 1.1 protocol, signed with SigV4, over TLS.

This is what an enclave uses to reach KMS (see ``docs/adr/0013-stdlib-kms-client.md``): ``http.client`` +
``ssl`` + a SigV4 signature, so the enclave's TCB holds no AWS SDK. TLS (to ``https://kms.REGION.amazonaws.com``
or any ``https://`` endpoint) is verified against the system's CA store and ends in this process; ``http://`` is
for tests against a plain emulator. ``route`` (``(host, port)``) is where the TCP connection goes — the host's
proxy (on Nitro, the vsock proxy) — while TLS still verifies the URL's host: the route chooses a path, never
whom the client trusts. A failed TLS verification raises :class:`KmsEndpointUntrusted` before anything is sent.
Whether ``http://`` may be used at all is the caller's decision (:mod:`enclavekit.kms.measured` refuses it unless
the measured configuration says ``unsafe_plain_http``). Every answer is size-limited and parsed once; errors are
the classes of :mod:`enclavekit.kms.errors`, chosen by the ``__type`` KMS answers with. Transient failures (unreachable,
throttled, 5xx) are retried ``attempts`` times with a short backoff, as boto3's standard mode does.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from enclavekit.backoff import exponential_backoff
from enclavekit.errors import ConfigurationError
from enclavekit.kms._sigv4 import authorization
from enclavekit.kms.errors import KmsEndpointUntrusted, KmsRejected, KmsUnavailable, aws_error_class

__all__ = ["MAX_RESPONSE_SIZE", "Credentials", "KmsEndpoint"]

MAX_RESPONSE_SIZE = 1 << 20
"""Largest answer read: a CiphertextForRecipient for a 4 KiB plaintext is under 8 KiB."""
_CONTENT_TYPE = "application/x-amz-json-1.1"


@dataclass(frozen=True, slots=True)
class Credentials:
    """AWS credentials for SigV4; the secret parts are kept out of ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (what the parent hands an
        enclave: it has no instance metadata service). Raises :class:`ConfigurationError` when absent."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise ConfigurationError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)


class KmsEndpoint:
    """Calls KMS operations at ``url`` (``https://kms.REGION.amazonaws.com`` by default for a region)."""

    def __init__(
        self,
        url: str,
        *,
        region: str,
        credentials: Credentials,
        timeout: float = 10.0,
        attempts: int = 3,
        ssl_context: ssl.SSLContext | None = None,
        route: tuple[str, int] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigurationError(f"KMS endpoint {url!r}: expected https://HOST[:PORT] (http:// for the emulator)")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
            raise ConfigurationError(f"KMS endpoint {url!r}: only scheme, host and port are allowed")
        try:
            self._port = parsed.port
        except ValueError as exc:
            raise ConfigurationError(f"KMS endpoint {url!r}: bad port") from exc
        if attempts < 1:
            raise ConfigurationError("KMS endpoint: attempts must be at least 1")
        self.url = url
        self.region = region
        self._tls = parsed.scheme == "https"
        self._hostname = parsed.hostname
        self._host_header = parsed.netloc
        self._credentials = credentials
        self._timeout = timeout
        self._attempts = attempts
        self._ssl = ssl_context
        self._route = route
        self._now = now

    @classmethod
    def for_region(cls, region: str, credentials: Credentials, **kwargs: Any) -> KmsEndpoint:
        """AWS KMS in ``region``, over TLS verified against the system's CA store."""
        return cls(f"https://kms.{region}.amazonaws.com", region=region, credentials=credentials, **kwargs)

    def call(self, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``operation`` (``Decrypt``, ``GenerateDataKey``...) with ``request`` (JSON-ready: bytes already
        base64); returns the answer's JSON object. Raises a :class:`KmsRejected` or :class:`KmsUnavailable`."""
        body = json.dumps(dict(request), separators=(",", ":")).encode()
        for attempt in range(self._attempts):
            try:
                return self._once(operation, body)
            except KmsUnavailable:
                if attempt + 1 == self._attempts:
                    raise
                time.sleep(exponential_backoff(attempt + 1, base=0.05, cap=2.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, operation: str, body: bytes) -> dict[str, Any]:
        headers = {
            "Content-Type": _CONTENT_TYPE,
            "Host": self._host_header,
            "X-Amz-Date": self._now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"),
            "X-Amz-Target": f"TrentService.{operation}",
        }
        if self._credentials.session_token:
            headers["X-Amz-Security-Token"] = self._credentials.session_token
        headers["Authorization"] = authorization(
            method="POST",
            path="/",
            query="",
            headers=headers,
            body=body,
            service="kms",
            region=self.region,
            access_key_id=self._credentials.access_key_id,
            secret_access_key=self._credentials.secret_access_key,
        )
        host, port = self._route or (self._hostname, self._port or (443 if self._tls else 80))
        connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
        try:
            if self._tls:
                connection.sock = self._handshake(host, port)
            connection.request("POST", "/", body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            payload = response.read(MAX_RESPONSE_SIZE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise KmsUnavailable(f"KMS is unreachable or failed: {exc}") from exc
        finally:
            connection.close()
        if len(payload) > MAX_RESPONSE_SIZE:
            raise KmsRejected(f"KMS answered {operation} with more than {MAX_RESPONSE_SIZE} bytes")
        try:
            answer = json.loads(payload) if payload else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if status == 200:
            if not isinstance(answer, dict):
                raise KmsRejected(f"KMS answered {operation} with a body that is not a JSON object")
            return answer
        if isinstance(answer, dict) and isinstance(answer.get("__type"), str):
            aws_type = str(answer["__type"]).rsplit("#", 1)[-1]
            message = answer.get("message") or answer.get("Message") or ""
            raise aws_error_class(aws_type)(f"{aws_type}: {str(message)[:500]}")
        if status >= 500 or status == 429:
            raise KmsUnavailable(f"KMS answered {operation} with HTTP {status}")
        raise KmsRejected(f"KMS answered {operation} with HTTP {status} and no error type")

    def _handshake(self, host: str, port: int) -> ssl.SSLSocket:
        """TCP to the route, then TLS verifying the URL's host against the trust anchor (system store by default)."""
        context = self._ssl or ssl.create_default_context()
        raw = socket.create_connection((host, port), timeout=self._timeout)
        try:
            return context.wrap_socket(raw, server_hostname=self._hostname)
        except ssl.SSLError as exc:  # a wrong chain or name, or a peer that does not speak TLS
            raw.close()
            raise KmsEndpointUntrusted(
                f"the KMS endpoint at {host}:{port} failed TLS verification as {self._hostname}: {exc}"
            ) from exc
        except OSError:
            raw.close()
            raise
