"""The web app's vault page, for the operator: members, their vault state, invitations (issue #15, ADR 0021).

``GET /vault`` renders what the vault's member registry (``STATE/vault/members.db``, written by the vault's host
bridge and ``enclavekit vault invite create``) holds: each member's status (enrolled, locked, seen), attempts left,
enrollment and last activity; each invitation's status (open, used — by whom —, expired). Never a PIN, a secret or
an invitation code: the registry has none. ``GET /api/vault`` is the same as JSON.

It is the operator's page, not the public trust center's: with an admin token configured it needs that token
(``Authorization: Bearer``, or the cookie that ``POST /vault/login`` sets from the form), and without one it
answers only loopback clients (the local stack) asking for a loopback host name, same-site (so that no web page the
operator visits can read it through the app's CORS, nor by rebinding a DNS name to 127.0.0.1). Kept apart from
``api.py``: one call, :func:`add_vault_page`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from enclavekit.services.trust.errors import TrustRejected

__all__ = ["OperatorOnly", "add_vault_page"]

COOKIE: Final = "enclavekit_operator"
LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_TOKEN: Final = 512


class OperatorOnly(TrustRejected):
    """The vault page is the operator's: a valid admin token (or, with none configured, a loopback client)."""

    code = "operator_only"


def _cookie_value(token: str) -> str:
    return hashlib.sha256(b"enclavekit operator page\x00" + token.encode()).hexdigest()


def _same_loopback_site(request: Request) -> bool:
    """Without a token, loopback is the credential — so refuse what a web page the operator visits could send to
    loopback: a cross-site request (the app answers CORS ``*``) and a rebound DNS name (``Host`` not loopback)."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    origin = request.headers.get("origin")
    origin_host = urlsplit(origin).hostname if origin else host
    return (
        host in LOOPBACK
        and origin_host in LOOPBACK
        and request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    )


def _moment(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def add_vault_page(
    app: FastAPI,
    *,
    page: Callable[..., HTMLResponse],
    state_dir: Path,
    admin_token: str | None,
) -> None:
    """Add ``/vault``, ``/vault/login`` and ``/api/vault`` to ``app`` (``page`` renders a template)."""

    def allowed(request: Request) -> bool:
        if admin_token:
            supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if supplied and hmac.compare_digest(supplied.encode(), admin_token.encode()):
                return True
            cookie = request.cookies.get(COOKIE, "")
            return bool(cookie) and hmac.compare_digest(cookie.encode(), _cookie_value(admin_token).encode())
        return request.client is not None and request.client.host in LOOPBACK and _same_loopback_site(request)

    def view() -> dict[str, Any]:
        from enclavekit.services.vault.members import MemberRegistry

        registry = MemberRegistry.open_existing(state_dir)
        if registry is None:
            return {"present": False, "members": [], "invitations": [], "now": time.time()}
        try:
            members, invitations = registry.members(), registry.invitations()
        finally:
            registry.close()
        return {"present": True, "members": members, "invitations": invitations, "now": time.time()}

    @app.get("/vault", response_class=HTMLResponse)
    async def vault_page(request: Request) -> Response:
        if not allowed(request):
            if admin_token:
                return page("vault_login.html", request, 401, failed=False)
            error = OperatorOnly("the vault page answers only the operator (loopback, or an admin token)")
            return page("error.html", request, 403, status_code=403, code=error.code, message=error.message)
        data = view()
        now = data["now"]
        counts = {
            "members": len(data["members"]),
            "enrolled": sum(1 for m in data["members"] if m.status == "enrolled"),
            "locked": sum(1 for m in data["members"] if m.status == "locked"),
            "open": sum(1 for i in data["invitations"] if i.status(now) == "open"),
        }
        return page(
            "vault.html",
            request,
            present=data["present"],
            members=data["members"],
            invitations=data["invitations"],
            counts=counts,
            unix_now=now,
            moment=_moment,
        )

    @app.post("/vault/login")
    async def vault_login(request: Request) -> Response:
        if not admin_token:
            error = OperatorOnly("no admin token is configured: the vault page answers loopback clients only")
            return page("error.html", request, 403, status_code=403, code=error.code, message=error.message)
        form = await request.form()
        supplied = form.get("token")
        if not isinstance(supplied, str) or len(supplied) > MAX_TOKEN:
            supplied = ""
        if not hmac.compare_digest(supplied.encode(), admin_token.encode()):
            return page("vault_login.html", request, 401, failed=True)
        response = RedirectResponse("/vault", status_code=303)
        response.set_cookie(COOKIE, _cookie_value(admin_token), httponly=True, samesite="strict", path="/")
        return response

    @app.get("/api/vault")
    async def api_vault(request: Request) -> JSONResponse:
        if not allowed(request):
            error = OperatorOnly("the vault view answers only the operator (loopback, or an admin token)")
            return JSONResponse({"error": error.to_json()}, status_code=403)
        data = view()
        now = data["now"]
        return JSONResponse(
            {
                "members": [m.to_json() for m in data["members"]],
                "invitations": [i.to_json(now) for i in data["invitations"]],
            }
        )
