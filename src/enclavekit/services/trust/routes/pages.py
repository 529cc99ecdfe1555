"""The trust web app for people: the app list, app and task pages, the upload form, the widget, the badge, and
the operator's ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from enclavekit import __version__
from enclavekit.errors import Rejected
from enclavekit.hostkit.errors import http_status
from enclavekit.services.trust.badge import badge_svg
from enclavekit.services.trust.errors import NotFound
from enclavekit.services.trust.model import AppRecord
from enclavekit.services.trust.routes._context import (
    BASE_CSP,
    KINDS,
    PAGE_SIZE,
    SORTS,
    VERDICTS,
    Web,
    filters_from,
    graph_svg,
)
from enclavekit.services.trust.routes._uploads import accept_upload

__all__ = ["router"]

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index(request: Request, web: Web) -> HTMLResponse:
    filters = filters_from(request)
    store = web.service.store
    apps, total = store.list_apps(filters)
    page_number = filters.offset // PAGE_SIZE + 1
    params = {k: v for k, v in request.query_params.items() if k != "page" and v}

    def page_link(number: int) -> str:
        return "/?" + urlencode({**params, "page": str(number)})

    return web.page(
        "index.html",
        request,
        apps=apps,
        total=total,
        counts=store.counts(),
        facets=store.facets(),
        filters=filters,
        kinds=KINDS,
        verdicts=VERDICTS,
        sorts=SORTS,
        page_number=page_number,
        pages=max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE),
        prev_link=page_link(page_number - 1) if page_number > 1 else None,
        next_link=page_link(page_number + 1) if filters.offset + PAGE_SIZE < total else None,
        first_row=filters.offset + 1 if total else 0,
        last_row=min(filters.offset + PAGE_SIZE, total),
        status_link=lambda verdict: "/?" + urlencode({"status": verdict}),
    )


@router.get("/apps/{app_id}", response_class=HTMLResponse)
def app_page(request: Request, app_id: str, web: Web) -> HTMLResponse:
    record = web.service.store.get_app(app_id)
    history = web.service.store.history(app_id, limit=50)
    latest_task = next((t for t in history if t.id == record.last_task_id), None)
    report = web.load_report(latest_task)
    base = web.base_url
    return web.page(
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
        tcb=web.service.local_tcb.get(record.id),
    )


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: str, web: Web) -> HTMLResponse:
    task = web.service.store.get_task(task_id)
    record = web.service.store.get_app(task.app_id)
    report = web.load_report(task)
    return web.page("task.html", request, task=task, app=record, report=report, graph=graph_svg(report))


@router.get("/submit", response_class=HTMLResponse)
def submit_form(request: Request, web: Web) -> HTMLResponse:
    return web.page("submit.html", request, error=None, kinds=KINDS, limit=web.settings.max_upload, values={})


@router.post("/submit")
async def submit_page(request: Request, web: Web) -> Response:
    try:
        accepted = await accept_upload(web, request)
    except Rejected as exc:
        web.metrics.uploads.labels("rejected").inc()
        return web.page(
            "submit.html",
            request,
            http_status(exc, rejected_status=422),
            error={"code": exc.code, "message": exc.message},
            kinds=KINDS,
            limit=web.settings.max_upload,
            values={},
        )
    web.metrics.uploads.labels("accepted").inc()
    return RedirectResponse(f"/tasks/{accepted.task.id}", status_code=303)


@router.post("/apps/{app_id}/verify")
def verify_now(app_id: str, web: Web) -> Response:
    task = web.service.reverify(app_id)
    return RedirectResponse(f"/tasks/{task.id}", status_code=303)


@router.get("/widget/{app_id}", response_class=HTMLResponse)
def widget(request: Request, app_id: str, web: Web) -> HTMLResponse:
    record = web.service.store.get_app(app_id)
    response = web.page("widget.html", request, app=record, page_url=f"{web.base_url}/apps/{record.id}")
    ancestors = " ".join(web.settings.frame_ancestors) or "'none'"
    response.headers["Content-Security-Policy"] = f"{BASE_CSP}; frame-ancestors {ancestors}"
    return response


@router.get("/badge/{app_id}.svg")
def badge(app_id: str, web: Web) -> Response:
    try:
        record: AppRecord | None = web.service.store.get_app(app_id)
    except NotFound:
        record = None
    return Response(
        badge_svg(record),
        media_type="image/svg+xml",
        headers={
            "Cache-Control": "max-age=60",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Access-Control-Allow-Origin": "*",
        },
    )


@router.get("/healthz")
def healthz(web: Web) -> dict[str, Any]:
    counts = web.service.store.task_counts()
    return {"ok": True, "version": __version__, "tasks": counts, "queue": bool(web.queue and web.queue.connected)}


@router.get("/metrics")
def metrics(web: Web) -> Response:
    return Response(generate_latest(web.metrics.registry), media_type=CONTENT_TYPE_LATEST)
