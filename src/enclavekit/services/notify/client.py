"""What a chat app does with notify: verify the enclave, seal its push ID, authorize, subscribe, upload.

::

    client = NotifyClient("https://notify.example", NitroPolicy(measurements=[{0: pcr0}]))
    key = client.enclave_public_key()                 # attestation verified; the key comes from the document
    sealed = client.seal("my-braze-alias", key)
    client.authorize(sealed, prove=lambda signal: my_world_id_proof(signal))
    client.subscribe([("/xmtp/mls/1/g-…", hmac_key_hex, expires_at)])

The push ID is sealed on the device to the X25519 key found in a verified attestation document, so only
an enclave running the pinned code can open it; the API, database and queue only ever hold the sealed box.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from enclavekit.attestation import nitro
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.errors import Rejected
from enclavekit.services.notify.pushid import seal_push_id

__all__ = ["ApiError", "NotifyClient"]


class ApiError(Rejected):
    """The API answered with an error ``{"allowRetry", "error": {"code", "message"}}``."""

    code = "notify_api_error"

    def __init__(self, message: str, *, status: int = 0, api_code: str = "", allow_retry: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.api_code = api_code
        self.allow_retry = allow_retry


@dataclass
class NotifyClient:
    base_url: str
    policy: NitroPolicy
    timeout: float = 15.0
    token: str | None = None
    _http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        answer = self._http.request(method, path, headers=headers, **kwargs)
        if answer.status_code >= 400:
            try:
                body = answer.json()
                error = body["error"]
                raise ApiError(
                    error["message"], status=answer.status_code, api_code=error["code"], allow_retry=body["allowRetry"]
                )
            except (ValueError, KeyError, TypeError):
                raise ApiError(answer.text[:200], status=answer.status_code) from None
        return answer

    def enclave_public_key(self) -> bytes:
        """The push key from the enclave's attestation document, verified against ``policy``."""
        answer = self._request("GET", "/v1/attestation-document").json()
        document = base64.b64decode(answer["attestation_doc_base64"])
        attestation = nitro.verify(document, self.policy, now=datetime.now(UTC))
        if attestation.public_key is None or len(attestation.public_key) != 32:
            raise Rejected("the attestation document carries no X25519 push key")
        if answer.get("public_key") and answer["public_key"] != attestation.public_key.hex():
            raise Rejected("the API's public_key differs from the one in the attestation document")
        return attestation.public_key

    @staticmethod
    def seal(push_id: str, public_key: bytes) -> str:
        return seal_push_id(push_id, public_key)

    def authorize(
        self,
        encrypted_push_id: str,
        prove: Callable[[str], Mapping[str, str]],
        *,
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        """Prove World ID for ``"{encrypted_push_id}:{timestamp}"`` and keep the access token."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        proof = prove(f"{encrypted_push_id}:{timestamp}")
        body = {"encrypted_push_id": encrypted_push_id, "timestamp": timestamp, **proof}
        answer: dict[str, Any] = self._request("POST", "/v1/authorize", json=body).json()
        self.token = answer["access_token"]
        return answer

    def subscribe(self, items: Iterable[tuple[str, str, int]]) -> None:
        body = [{"topic": t, "hmac_key": k, "ttl": ttl} for t, k, ttl in items]
        self._request("POST", "/v1/subscriptions", json=body)

    def unsubscribe(self, topic: str, hmac_key: str) -> None:
        self._request("DELETE", "/v1/subscriptions", params={"topic": topic, "hmac_key": hmac_key})

    def unsubscribe_many(self, keys: Iterable[tuple[str, str]]) -> dict[str, int]:
        body = [{"topic": t, "hmac_key": k} for t, k in keys]
        result: dict[str, int] = self._request("POST", "/v1/subscriptions/delete", json=body).json()
        return result

    def upload_media(self, data: bytes, content_type: str) -> str:
        """Upload (already encrypted) media; returns its CDN URL (an existing identical object is reused)."""
        digest = hashlib.sha256(data).hexdigest()
        body = {"content_digest_sha256": digest, "content_length": len(data), "content_type": content_type}
        answer = self._request("POST", "/v1/media/presigned-urls", json=body).json()  # 409: ApiError with the URL
        put = httpx.put(answer["presigned_url"], content=data, headers=answer["headers"], timeout=self.timeout)
        put.raise_for_status()
        return str(answer["asset_url"])
