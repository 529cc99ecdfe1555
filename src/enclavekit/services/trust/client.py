"""What a program calls: the trust service's JSON API from Python (``enclavekit trust submit`` uses it).

::

    with TrustClient("http://127.0.0.1:8080") as trust:
        task = trust.submit(Path("attestation.cbor").read_bytes(), at="doc")
        done = trust.wait(task["task_id"])
        claims = trust.ear(done["id"], jwks=pinned_jwks)   # the EAR, checked against a key you pinned

Refusals come back as :class:`TrustApiError` with the service's ``code`` and ``message``; a service that cannot
be reached is :class:`~enclavekit.services.trust.errors.EndpointUnavailable` (retryable).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from enclavekit.errors import Rejected
from enclavekit.services.trust.errors import EndpointUnavailable
from enclavekit.services.trust.signing import verify_token

__all__ = ["TERMINAL", "TrustApiError", "TrustClient"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})


class TrustApiError(Rejected):
    """The service refused a request; ``service_code`` and ``message`` are the service's own."""

    code = "trust_api"

    def __init__(self, service_code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.service_code = service_code
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"code": self.service_code, "message": self.message}


class TrustClient:
    """A synchronous client of one trust service."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> TrustClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(f"{self.base_url}: {exc}") from exc
        if answer.status_code >= 400:
            try:
                error = answer.json().get("error") or {}
            except (ValueError, AttributeError):
                error = {}
            raise TrustApiError(
                str(error.get("code") or "http_error"),
                str(error.get("message") or f"HTTP {answer.status_code}"),
                answer.status_code,
            )
        return answer

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._call(method, path, **kwargs).json()
        if not isinstance(body, dict):
            raise TrustApiError("bad_answer", f"{path} did not answer a JSON object", 502)
        return body

    def submit(
        self,
        evidence: bytes,
        *,
        collateral: bytes | None = None,
        compose: bytes | None = None,
        at: str = "now",
        name: str | None = None,
        kind: str | None = None,
        filename: str = "evidence",
    ) -> dict[str, Any]:
        """Upload evidence; ``{task_id, app_id, status, created, url}``."""
        files: dict[str, tuple[str, bytes, str]] = {"evidence": (filename, evidence, "application/octet-stream")}
        if collateral is not None:
            files["collateral"] = ("collateral.json", collateral, "application/json")
        if compose is not None:
            files["compose"] = ("app-compose.json", compose, "application/json")
        data = {"at": at}
        if name:
            data["name"] = name
        if kind:
            data["kind"] = kind
        return self._json("POST", "/api/tasks", files=files, data=data)

    def task(self, task_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/task/{task_id}")

    def app(self, app_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/app/{app_id}")

    def apps(self, **filters: str) -> dict[str, Any]:
        return self._json("GET", "/api/apps", params=filters)

    def verify_now(self, app_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/app/{app_id}/verify")

    def register(self, url: str, **fields: Any) -> dict[str, Any]:
        """Register an endpoint (the client needs the admin ``token``)."""
        return self._json("POST", "/api/apps", json={"url": url, **fields})

    def wait(self, task_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the task is finished; raise ``TimeoutError`` with the last state otherwise."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            task = self.task(task_id)
            if task.get("status") in TERMINAL:
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} is still {task.get('status')} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def jwks(self) -> dict[str, Any]:
        return self._json("GET", "/.well-known/jwks.json")

    def ear(self, task_id: str, *, jwks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The task's EAR claims, after checking the token's signature against ``jwks`` (pin it; by default the
        service's published keys, which only proves the token came from this service)."""
        token = self._call("GET", f"/api/task/{task_id}/ear").text
        return verify_token(token, jwks if jwks is not None else self.jwks())
