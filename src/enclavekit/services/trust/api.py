"""The trust service's HTTP side: server-rendered pages for people, a JSON API for programs, a badge for sites.

Pages (Jinja2, no CDN, a little vendored JS): ``/`` the app list with filters, ``/apps/{id}`` an app's verdict,
phases, trust graph and history, ``/tasks/{id}`` one verification, ``/submit`` the upload form, ``/widget/{id}``
an embeddable card (``frame-ancestors`` allowlist), ``/badge/{id}.svg``.

JSON (CORS-enabled): ``GET /api/apps``, ``GET /api/app/{id}``, ``GET /api/task/{id}``, ``GET /api/task/{id}/report``,
``GET /api/task/{id}/ear`` (a signed EAR JWT), ``POST /api/tasks`` (upload), ``POST /api/app/{id}/verify``,
``POST /api/apps`` (register an endpoint; needs the admin token), ``GET /.well-known/jwks.json``.

Requests are bounded before they are read (``Content-Length`` over the limit: 413 at once; a body that grows
past it while streaming: 413 as soon as it does). Errors are answered with their code and message — 400, 404,
413, 422, 503 — never a 500 for anything a client sent.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclavekit import __version__
from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE
from enclavekit.errors import Error, InfrastructureError, Rejected
from enclavekit.services.trust.badge import badge_svg
from enclavekit.services.trust.errors import BadQuery, NotFound, TrustRejected, UploadInvalid, UploadTooLarge
from enclavekit.services.trust.graph import TrustGraph, render_svg
from enclavekit.services.trust.model import AppRecord, Kind, TargetOptions, TaskRecord, TaskStatus, Verdict, parse_at
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.service import Accepted, TrustService
from enclavekit.services.trust.signing import EAR_MEDIA_TYPE
from enclavekit.services.trust.store import AppFilter
from enclavekit.services.trust.vault_page import add_vault_page

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE = 100_000
"""The last page number a list answers (50 apps a page: five million apps); beyond it, 400."""
_KINDS = [str(k) for k in Kind]
_VERDICTS = [str(v) for v in Verdict]
_SORTS = {"recent": "Recently verified", "status": "Problems first", "name": "Name", "created": "Newest"}
_BASE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'"
)


class Unauthorized(TrustRejected):
    code = "unauthorized"


# --- request body limit (pure ASGI, so nothing is read past the limit) --------------------------------------


class BodyLimit:
    """Refuse bodies over ``limit`` bytes: by ``Content-Length`` before reading, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    await _early_413(scope, send, declared, self.limit)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(f"request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _early_413(scope: Scope, send: Send, declared: int, limit: int) -> None:
    message = (
        f"request body of {declared} bytes is over the limit of {limit}" if declared >= 0 else "invalid Content-Length"
    )
    status = 413 if declared >= 0 else 400
    body = json.dumps({"error": {"code": "upload_too_large" if status == 413 else "bad_request", "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


# --- templates ----------------------------------------------------------------------------------------------


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "in a moment" if future else "just now"


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(value: Any, size: int = 16) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= size else text[:size] + "…"


_VERDICT_TEXT = {
    "verified": "Verified",
    "failed": "Failed",
    "incomplete": "Incomplete",
    "error": "Error",
    "pending": "Pending",
    "passed": "Passed",
    "skipped": "Skipped",
    "not_checked": "Not checked",
    "active": "Running",
    "completed": "Completed",
    "cancelled": "Cancelled",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("enclavekit.services.trust", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["when"] = _when
    env.filters["short"] = _short
    env.filters["label"] = lambda value: _VERDICT_TEXT.get(str(value), str(value).title())
    env.globals["version"] = __version__
    return env


# --- metrics ------------------------------------------------------------------------------------------------


class _TaskGauge(Collector):
    def __init__(self, service: TrustService) -> None:
        self.service = service

    def collect(self) -> Any:
        tasks = GaugeMetricFamily("trust_tasks", "Verification tasks by status", labels=["status"])
        try:
            for status, count in self.service.store.task_counts().items():
                tasks.add_metric([status], count)
            apps = GaugeMetricFamily("trust_apps", "Targets by verdict", labels=["verdict"])
            for verdict, count in self.service.store.counts().items():
                apps.add_metric([verdict], count)
        except Exception:  # metrics must not fail because the database is briefly away
            return []
        return [tasks, apps]


# --- the application ----------------------------------------------------------------------------------------


def create_app(service: TrustService, *, queue: TaskQueue | None = None, listen_url: str | None = None) -> FastAPI:
    """The web app over ``service``; ``queue`` (optional) lets uploads wake a worker at once.

    Absolute links (embed snippets, badge and widget URLs) use ``settings.public_url``, else ``listen_url`` (the
    address the server listens on), else stay relative — never the request's ``Host`` header, which whoever
    sends the request chooses."""
    settings = service.settings
    env = _environment()
    app = FastAPI(
        title="enclavekit trust",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    registry = CollectorRegistry()
    requests_total = Counter("trust_http_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("trust_http_seconds", "HTTP request latency", ["route"], registry=registry)
    uploads = Counter("trust_uploads", "Evidence uploads", ["outcome"], registry=registry)
    registry.register(_TaskGauge(service))
    app.state.service = service

    static = resources.files("enclavekit.services.trust").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def page(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(request_path=request.url.path, now=datetime.now(UTC), **context)
        return HTMLResponse(html, status_code=status)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/.well-known/"))

    def error_response(request: Request, status: int, code: str, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
        return page("error.html", request, status, status_code=status, code=code, message=message)

    @app.exception_handler(Error)
    async def _error(request: Request, exc: Error) -> Response:
        if isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, UploadTooLarge):
            status = 413
        elif isinstance(exc, Unauthorized):
            status = 401
        elif isinstance(exc, UploadInvalid | BadQuery):
            status = 400
        elif isinstance(exc, Rejected):
            status = 422
        elif isinstance(exc, InfrastructureError):
            status = 503
        else:
            status = 400
        return error_response(request, status, exc.code, exc.message)

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(request: Request, exc: SQLAlchemyError) -> Response:
        logger.error("database error on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
        return error_response(request, 503, "database_unavailable", "the database is unavailable; try again shortly")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return error_response(request, exc.status_code, code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}" for error in exc.errors()
        )
        return error_response(request, 400, "bad_request", problems or "bad request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, "internal", "internal error; it has been logged")

    @app.middleware("http")
    async def _headers_and_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        route_name = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        requests_total.labels(route_name, str(response.status_code)).inc()
        latency.labels(route_name).observe(elapsed)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if "content-security-policy" not in response.headers:
            response.headers["Content-Security-Policy"] = _BASE_CSP + "; frame-ancestors 'none'"
            response.headers.setdefault("X-Frame-Options", "DENY")
        logger.info("%s %s -> %d (%.1f ms)", request.method, request.url.path, response.status_code, elapsed * 1000)
        return response

    # --- helpers ----------------------------------------------------------------------------------------

    def load_report(task: TaskRecord | None) -> dict[str, Any] | None:
        if task is None or task.result_key is None:
            return None
        try:
            return service.report(task)
        except (Error, ValueError):
            logger.warning("report of task %s is unreadable", task.id, exc_info=True)
            return None

    def graph_svg(report: Mapping[str, Any] | None) -> str:
        if not report or not report.get("graph"):
            return ""
        return render_svg(TrustGraph.from_json(report["graph"]))

    base_url = (settings.public_url or listen_url or "").rstrip("/")

    async def wake(accepted: Accepted) -> None:
        if queue is None or accepted.task.status is not TaskStatus.PENDING:
            return
        try:
            await queue.publish(accepted.task.id, timeout=1.0)
        except InfrastructureError as exc:
            logger.info("task %s stays pending until the queue is back: %s", accepted.task.id, exc.message)
            return
        await run_in_threadpool(service.store.mark_enqueued, [accepted.task.id])

    def app_json(record: AppRecord, history: list[TaskRecord], latest: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **record.to_json(),
            "latest": latest,
            "history": [task.to_json() for task in history],
        }

    def task_json(task: TaskRecord, report: dict[str, Any] | None) -> dict[str, Any]:
        out = task.to_json()
        out["report"] = None
        if report is not None:
            out["report"] = {k: v for k, v in report.items() if k not in ("ear_token",)}
        return out

    def filters_from(request: Request) -> AppFilter:
        params = request.query_params

        def choice(name: str, allowed: list[str] | None = None) -> str | None:
            value = params.get(name, "").strip()
            if not value or (allowed is not None and value not in allowed):
                return None
            return value[:100]

        for name, value in params.multi_items():
            if "\x00" in name or "\x00" in value:
                raise BadQuery(f"query parameter {name!r} contains a NUL character")
        page_number = _page_number(params.get("page"))
        sort = params.get("sort", "recent")
        return AppFilter(
            q=params.get("q", "")[:200],
            tee=choice("tee"),
            kind=choice("kind", _KINDS),
            verdict=choice("status", _VERDICTS),
            source=choice("source", ["upload", "endpoint"]),
            os_name=choice("os"),
            sort=sort if sort in _SORTS else "recent",
            limit=PAGE_SIZE,
            offset=(page_number - 1) * PAGE_SIZE,
        )

    async def read_part(value: Any, name: str, limit: int) -> bytes | None:
        if value is None or (isinstance(value, str) and not value):
            return None
        if isinstance(value, str):
            raise UploadInvalid(f"{name} must be a file")
        assert isinstance(value, UploadFile)
        if value.size is not None and value.size > limit:
            raise UploadTooLarge(f"{name} of {value.size} bytes is over the limit of {limit}")
        data = await value.read(limit + 1)
        if len(data) > limit:
            raise UploadTooLarge(f"{name} is over the limit of {limit} bytes")
        if not data and value.filename == "":
            return None
        return data

    async def accept_upload(request: Request) -> Accepted:
        form = await request.form(max_files=3, max_fields=12, max_part_size=64 * 1024)
        try:
            evidence = await read_part(form.get("evidence"), "evidence", min(settings.max_upload, MAX_EVIDENCE_SIZE))
            if evidence is None:
                raise UploadInvalid("choose an evidence file (a Nitro document, a TDX quote or a dstack bundle)")
            collateral = await read_part(form.get("collateral"), "collateral", 1024 * 1024)
            compose = await read_part(form.get("compose"), "compose", 1024 * 1024)
            kind_text = str(form.get("kind") or "").strip()
            if kind_text and kind_text not in _KINDS:
                raise UploadInvalid(f"kind must be one of {', '.join(_KINDS)}")
            at = parse_at(str(form.get("at") or "").strip() or "now")
            options = TargetOptions(
                at=at, trust_simulator=str(form.get("trust_simulator") or "") in ("1", "on", "true")
            )
            name = str(form.get("name") or "").strip() or None
        finally:
            await form.close()
        accepted = await run_in_threadpool(
            service.submit,
            evidence,
            collateral=collateral,
            compose=compose,
            name=name,
            kind=Kind(kind_text) if kind_text else None,
            options=options,
        )
        await wake(accepted)
        return accepted

    # --- pages ------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        filters = filters_from(request)
        apps, total = service.store.list_apps(filters)
        counts = service.store.counts()
        facets = service.store.facets()
        page_number = filters.offset // PAGE_SIZE + 1
        params = {k: v for k, v in request.query_params.items() if k != "page" and v}

        def page_link(number: int) -> str:
            return "/?" + urlencode({**params, "page": str(number)})

        return page(
            "index.html",
            request,
            apps=apps,
            total=total,
            counts=counts,
            facets=facets,
            filters=filters,
            kinds=_KINDS,
            verdicts=_VERDICTS,
            sorts=_SORTS,
            page_number=page_number,
            pages=max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE),
            prev_link=page_link(page_number - 1) if page_number > 1 else None,
            next_link=page_link(page_number + 1) if filters.offset + PAGE_SIZE < total else None,
            first_row=filters.offset + 1 if total else 0,
            last_row=min(filters.offset + PAGE_SIZE, total),
            status_link=lambda verdict: "/?" + urlencode({"status": verdict}),
        )

    @app.get("/apps/{app_id}", response_class=HTMLResponse)
    def app_page(request: Request, app_id: str) -> HTMLResponse:
        record = service.store.get_app(app_id)
        history = service.store.history(app_id, limit=50)
        latest_task = next((t for t in history if t.id == record.last_task_id), None)
        report = load_report(latest_task)
        base = base_url
        return page(
            "app.html",
            request,
            app=record,
            history=history,
            latest_task=latest_task,
            open_task=next((t for t in history if not t.status.terminal), None),
            report=report,
            graph=graph_svg(report),
            base=base,
            badge_url=f"{base}/badge/{record.id}.svg",
            widget_url=f"{base}/widget/{record.id}",
            page_url=f"{base}/apps/{record.id}",
            tcb=service.local_tcb.get(record.id),
        )

    @app.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(request: Request, task_id: str) -> HTMLResponse:
        task = service.store.get_task(task_id)
        record = service.store.get_app(task.app_id)
        report = load_report(task)
        return page("task.html", request, task=task, app=record, report=report, graph=graph_svg(report))

    @app.get("/submit", response_class=HTMLResponse)
    def submit_form(request: Request) -> HTMLResponse:
        return page("submit.html", request, error=None, kinds=_KINDS, limit=settings.max_upload, values={})

    @app.post("/submit")
    async def submit_page(request: Request) -> Response:
        try:
            accepted = await accept_upload(request)
        except Rejected as exc:
            uploads.labels("rejected").inc()
            status = 413 if isinstance(exc, UploadTooLarge) else 400 if isinstance(exc, UploadInvalid) else 422
            return page(
                "submit.html",
                request,
                status,
                error={"code": exc.code, "message": exc.message},
                kinds=_KINDS,
                limit=settings.max_upload,
                values={},
            )
        uploads.labels("accepted").inc()
        return RedirectResponse(f"/tasks/{accepted.task.id}", status_code=303)

    @app.post("/apps/{app_id}/verify")
    def verify_now(app_id: str) -> Response:
        task = service.reverify(app_id)
        return RedirectResponse(f"/tasks/{task.id}", status_code=303)

    @app.get("/widget/{app_id}", response_class=HTMLResponse)
    def widget(request: Request, app_id: str) -> HTMLResponse:
        record = service.store.get_app(app_id)
        response = page("widget.html", request, app=record, page_url=f"{base_url}/apps/{record.id}")
        ancestors = " ".join(settings.frame_ancestors) or "'none'"
        response.headers["Content-Security-Policy"] = f"{_BASE_CSP}; frame-ancestors {ancestors}"
        return response

    @app.get("/badge/{app_id}.svg")
    def badge(app_id: str) -> Response:
        try:
            record: AppRecord | None = service.store.get_app(app_id)
        except NotFound:
            record = None
        svg = badge_svg(record)
        return Response(
            svg,
            media_type="image/svg+xml",
            headers={
                "Cache-Control": "max-age=60",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "Access-Control-Allow-Origin": "*",
            },
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        counts = service.store.task_counts()
        return {"ok": True, "version": __version__, "tasks": counts, "queue": bool(queue and queue.connected)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # --- JSON API -----------------------------------------------------------------------------------------

    @app.get("/api/apps")
    def api_apps(request: Request) -> dict[str, Any]:
        filters = filters_from(request)
        apps, total = service.store.list_apps(filters)
        return {"total": total, "offset": filters.offset, "apps": [a.to_json() for a in apps]}

    @app.get("/api/app/{app_id}")
    def api_app(app_id: str) -> dict[str, Any]:
        record = service.store.get_app(app_id)
        history = service.store.history(app_id, limit=50)
        latest_task = next((t for t in history if t.id == record.last_task_id), None)
        report = load_report(latest_task)
        latest = None if latest_task is None else task_json(latest_task, report)
        return app_json(record, history, latest)

    @app.get("/api/task/{task_id}")
    def api_task(task_id: str) -> dict[str, Any]:
        task = service.store.get_task(task_id)
        return task_json(task, load_report(task))

    @app.get("/api/task/{task_id}/report")
    def api_task_report(task_id: str) -> dict[str, Any]:
        task = service.store.get_task(task_id)
        report = load_report(task)
        if report is None:
            raise NotFound(f"task {task_id} has no report ({task.status})")
        return report

    @app.get("/api/task/{task_id}/ear")
    def api_task_ear(task_id: str) -> Response:
        task = service.store.get_task(task_id)
        report = load_report(task)
        if report is None or not report.get("ear_token"):
            raise NotFound(f"task {task_id} has no EAR ({task.status})")
        return Response(str(report["ear_token"]), media_type=EAR_MEDIA_TYPE)

    @app.get("/.well-known/jwks.json")
    def jwks() -> dict[str, Any]:
        return service.signer.jwks()

    @app.post("/api/tasks", status_code=202)
    async def api_submit(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith("multipart/form-data"):
                accepted = await accept_upload(request)
            else:
                accepted = await raw_upload(request)
        except Rejected:
            uploads.labels("rejected").inc()
            raise
        uploads.labels("accepted").inc()
        return JSONResponse(
            {**accepted.to_json(), "created": accepted.created, "url": f"/tasks/{accepted.task.id}"},
            status_code=202,
        )

    async def raw_upload(request: Request) -> Accepted:
        limit = min(settings.max_upload, MAX_EVIDENCE_SIZE)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"evidence is over the limit of {limit} bytes")
            chunks.append(chunk)
        params = request.query_params
        kind_text = params.get("kind", "")
        if kind_text and kind_text not in _KINDS:
            raise UploadInvalid(f"kind must be one of {', '.join(_KINDS)}")
        options = TargetOptions(at=parse_at(params.get("at") or "now"))
        accepted = await run_in_threadpool(
            service.submit,
            b"".join(chunks),
            name=params.get("name") or None,
            kind=Kind(kind_text) if kind_text else None,
            options=options,
        )
        await wake(accepted)
        return accepted

    @app.post("/api/app/{app_id}/verify", status_code=202)
    async def api_verify(app_id: str) -> JSONResponse:
        task = await run_in_threadpool(service.reverify, app_id)
        record = await run_in_threadpool(service.store.get_app, app_id)
        await wake(Accepted(record, task, False))
        return JSONResponse({"task_id": task.id, "app_id": app_id, "status": str(task.status)}, status_code=202)

    def require_admin(request: Request, what: str) -> None:
        token = settings.admin_token
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            raise Unauthorized(f"{what} over HTTP is disabled (no admin token is configured)")
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Unauthorized(f"a valid admin token is required for {what}")

    @app.post("/api/task/{task_id}/cancel")
    def api_cancel(request: Request, task_id: str) -> dict[str, Any]:
        require_admin(request, "cancelling tasks")
        return service.store.cancel(task_id).to_json()

    @app.post("/api/apps", status_code=202)
    async def api_register(request: Request) -> JSONResponse:
        require_admin(request, "registering endpoints")
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise UploadInvalid("the body must be JSON: {url, name?, kind?, options?}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise UploadInvalid("the body must be JSON: {url, name?, kind?, options?}")
        kind_text = str(body.get("kind") or "app")
        if kind_text not in _KINDS:
            raise UploadInvalid(f"kind must be one of {', '.join(_KINDS)}")
        options = TargetOptions.from_json(body.get("options") if isinstance(body.get("options"), dict) else None)
        accepted = await run_in_threadpool(
            service.register_endpoint,
            body["url"],
            name=str(body["name"]) if body.get("name") else None,
            kind=Kind(kind_text),
            options=options,
        )
        await wake(accepted)
        return JSONResponse({**accepted.to_json(), "created": accepted.created}, status_code=202)

    add_vault_page(app, page=page, state_dir=settings.state_dir, admin_token=settings.admin_token)  # the operator's

    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "Authorization"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(BodyLimit, limit=settings.max_request)
    return app


def _page_number(text: str | None) -> int:
    """``?page=``: absent or empty means 1; else ASCII digits from 1 to :data:`MAX_PAGE`, or :class:`BadQuery`.

    Checked before ``int()`` and before SQL: a 20-digit page overflowed SQLite's 64-bit OFFSET (a 500), and
    ``int()`` takes non-ASCII digits and refuses over 4300 digits."""
    if text is None or text == "":
        return 1
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_PAGE))) or not 1 <= int(text) <= MAX_PAGE:
        raise BadQuery(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(text)
