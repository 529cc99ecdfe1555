"""What every route of the trust web app shares, handed to routes as a FastAPI dependency (:data:`Web`): the
service and its store, the queue that wakes workers, templates, metrics, and the helpers that turn records into
pages, JSON and list filters."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from enclavekit.errors import Error, InfrastructureError
from enclavekit.services.trust.errors import BadQuery, Unauthorized
from enclavekit.services.trust.graph import TrustGraph, render_svg
from enclavekit.services.trust.model import AppRecord, Kind, TaskRecord, TaskStatus, Verdict
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.service import Accepted, TrustService
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.store import AppFilter

__all__ = [
    "BASE_CSP",
    "KINDS",
    "MAX_PAGE",
    "PAGE_SIZE",
    "SORTS",
    "VERDICTS",
    "Web",
    "WebContext",
    "WebMetrics",
    "app_json",
    "task_json",
]

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE = 100_000
"""The last page number a list answers (50 apps a page: five million apps); beyond it, 400."""
KINDS = [str(k) for k in Kind]
VERDICTS = [str(v) for v in Verdict]
BASE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'"
)
"""The Content-Security-Policy of every page, before its ``frame-ancestors``."""
SORTS = {"recent": "Recently verified", "status": "Problems first", "name": "Name", "created": "Newest"}


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


class WebMetrics:
    """The web app's Prometheus registry: requests, latency, uploads, and task/app gauges read from the store."""

    def __init__(self, service: TrustService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("trust_http_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("trust_http_seconds", "HTTP request latency", ["route"], registry=self.registry)
        self.uploads = Counter("trust_uploads", "Evidence uploads", ["outcome"], registry=self.registry)
        self.registry.register(_TaskGauge(service))


@dataclass(frozen=True, slots=True)
class WebContext:
    """The web app's dependencies. ``base_url`` prefixes absolute links (embed snippets, badge and widget URLs):
    ``settings.public_url``, else the address the server listens on, else empty (relative links) — never the
    request's ``Host`` header, which whoever sends the request chooses."""

    service: TrustService
    queue: TaskQueue | None
    templates: jinja2.Environment
    metrics: WebMetrics
    base_url: str

    @property
    def settings(self) -> TrustSettings:
        return self.service.settings

    def page(self, name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(request_path=request.url.path, now=datetime.now(UTC), **context)
        return HTMLResponse(html, status_code=status)

    def load_report(self, task: TaskRecord | None) -> dict[str, Any] | None:
        if task is None or task.result_key is None:
            return None
        try:
            return self.service.report(task)
        except (Error, ValueError):
            logger.warning("report of task %s is unreadable", task.id, exc_info=True)
            return None

    async def wake(self, accepted: Accepted) -> None:
        """Publish a pending task at once (else the dispatcher's next pass does)."""
        if self.queue is None or accepted.task.status is not TaskStatus.PENDING:
            return
        try:
            await self.queue.publish(accepted.task.id, timeout=1.0)
        except InfrastructureError as exc:
            logger.info("task %s stays pending until the queue is back: %s", accepted.task.id, exc.message)
            return
        await run_in_threadpool(self.service.store.mark_enqueued, [accepted.task.id])

    def require_admin(self, request: Request, what: str) -> None:
        token = self.settings.admin_token
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            raise Unauthorized(f"{what} over HTTP is disabled (no admin token is configured)")
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Unauthorized(f"a valid admin token is required for {what}")


def _web(request: Request) -> WebContext:
    context: WebContext = request.app.state.web
    return context


Web = Annotated[WebContext, Depends(_web)]
"""A route's parameter ``web: Web`` receives the app's :class:`WebContext`."""


def graph_svg(report: Mapping[str, Any] | None) -> str:
    if not report or not report.get("graph"):
        return ""
    return render_svg(TrustGraph.from_json(report["graph"]))


def app_json(record: AppRecord, history: list[TaskRecord], latest: dict[str, Any] | None) -> dict[str, Any]:
    return {**record.to_json(), "latest": latest, "history": [task.to_json() for task in history]}


def task_json(task: TaskRecord, report: dict[str, Any] | None) -> dict[str, Any]:
    out = task.to_json()
    out["report"] = None if report is None else {k: v for k, v in report.items() if k != "ear_token"}
    return out


def page_number(text: str | None) -> int:
    """``?page=``: absent or empty means 1; else ASCII digits from 1 to :data:`MAX_PAGE`, or :class:`BadQuery`.

    Checked before ``int()`` and before SQL: a 20-digit page overflowed SQLite's 64-bit OFFSET (a 500), and
    ``int()`` takes non-ASCII digits and refuses over 4300 digits."""
    if text is None or text == "":
        return 1
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_PAGE))) or not 1 <= int(text) <= MAX_PAGE:
        raise BadQuery(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


def filters_from(request: Request) -> AppFilter:
    """The app list's filters from the query string (unknown choices ignored; NUL characters refused)."""
    params = request.query_params

    def choice(name: str, allowed: list[str] | None = None) -> str | None:
        value = params.get(name, "").strip()
        if not value or (allowed is not None and value not in allowed):
            return None
        return value[:100]

    for name, value in params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise BadQuery(f"query parameter {name!r} contains a NUL character")
    number = page_number(params.get("page"))
    sort = params.get("sort", "recent")
    return AppFilter(
        q=params.get("q", "")[:200],
        tee=choice("tee"),
        kind=choice("kind", KINDS),
        verdict=choice("status", VERDICTS),
        source=choice("source", ["upload", "endpoint"]),
        os_name=choice("os"),
        sort=sort if sort in SORTS else "recent",
        limit=PAGE_SIZE,
        offset=(number - 1) * PAGE_SIZE,
    )
