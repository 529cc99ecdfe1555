"""The trust service's HTTP side: server-rendered pages for people, a JSON API for programs, a badge for sites.

Pages (Jinja2, no CDN, a little vendored JS; :mod:`.routes.pages`): ``/`` the app list with filters,
``/apps/{id}`` an app's verdict, phases, trust graph and history, ``/tasks/{id}`` one verification, ``/submit``
the upload form, ``/widget/{id}`` an embeddable card (``frame-ancestors`` allowlist), ``/badge/{id}.svg``.

JSON (CORS-enabled; :mod:`.routes.json_api`): ``GET /api/apps``, ``GET /api/app/{id}``, ``GET /api/task/{id}``,
``GET /api/task/{id}/report``, ``GET /api/task/{id}/ear`` (a signed EAR JWT), ``POST /api/tasks`` (upload),
``POST /api/app/{id}/verify``, ``POST /api/apps`` (register an endpoint; needs the admin token),
``GET /.well-known/jwks.json``.

Requests are bounded before they are read, by the host kit's body limit (``Content-Length`` over the limit: 413
at once; invalid: 400; a body that grows past it while streaming: 413 as soon as it does). Errors are the host
kit's envelope ``{"allowRetry", "error": {"code", "message"}}`` (a page for people, JSON under ``/api/`` and
``/.well-known/``) — 400, 401, 404, 413, 422, 503 — never a 500 for anything a client sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.cors import CORSMiddleware

from enclavekit import __version__
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.handlers import install_error_handlers
from enclavekit.services.trust.errors import DatabaseUnavailable, UploadTooLarge
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.routes import json_api, pages
from enclavekit.services.trust.routes._context import BASE_CSP, WebContext, WebMetrics
from enclavekit.services.trust.routes._templates import environment
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.vault_page import add_vault_page

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

REJECTED_STATUS = 422
"""The status of a refusal that declares none (evidence that does not verify, an unusable endpoint)."""


def _database_unavailable(exc: Exception) -> DatabaseUnavailable:
    logger.error("database error: %s", exc.__class__.__name__)
    return DatabaseUnavailable("the database is unavailable; try again shortly")


def create_app(service: TrustService, *, queue: TaskQueue | None = None, listen_url: str | None = None) -> FastAPI:
    """The web app over ``service``; ``queue`` (optional) lets uploads wake a worker at once.

    Absolute links (embed snippets, badge and widget URLs) use ``settings.public_url``, else ``listen_url`` (the
    address the server listens on), else stay relative — never the request's ``Host`` header, which whoever
    sends the request chooses."""
    settings = service.settings
    web = WebContext(
        service=service,
        queue=queue,
        templates=environment(),
        metrics=WebMetrics(service),
        base_url=(settings.public_url or listen_url or "").rstrip("/"),
    )
    app = FastAPI(
        title="enclavekit trust",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.service = service
    app.state.web = web

    static = resources.files("enclavekit.services.trust").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.include_router(pages.router)
    app.include_router(json_api.router)
    add_vault_page(app, page=web.page, state_dir=settings.state_dir, admin_token=settings.admin_token)  # the operator's

    def respond(request: Request, status: int, body: dict[str, Any]) -> Response:
        if request.url.path.startswith(("/api/", "/.well-known/")):
            return JSONResponse(body, status_code=status)
        error = body["error"]
        return web.page("error.html", request, status, status_code=status, code=error["code"], message=error["message"])

    install_error_handlers(
        app, rejected_status=REJECTED_STATUS, translate={SQLAlchemyError: _database_unavailable}, respond=respond
    )

    @app.middleware("http")
    async def _headers_and_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route_name = getattr(request.scope.get("route"), "path", "unmatched")
        elapsed = time.perf_counter() - started
        web.metrics.requests.labels(route_name, str(response.status_code)).inc()
        web.metrics.latency.labels(route_name).observe(elapsed)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if "content-security-policy" not in response.headers:
            response.headers["Content-Security-Policy"] = BASE_CSP + "; frame-ancestors 'none'"
            response.headers.setdefault("X-Frame-Options", "DENY")
        logger.info("%s %s -> %d (%.1f ms)", request.method, request.url.path, response.status_code, elapsed * 1000)
        return response

    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "Authorization"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(BodyLimit, limit=settings.max_request, too_large=UploadTooLarge)
    return app
