"""The trust service's JSON API for programs: apps, tasks, reports, EAR tokens, the JWKS, uploads, re-verify,
and (with the admin token) cancelling tasks and registering endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from enclavekit.errors import Rejected
from enclavekit.services.trust.errors import NotFound
from enclavekit.services.trust.routes._context import Web, app_json, filters_from, task_json
from enclavekit.services.trust.routes._uploads import accept_upload, raw_upload, register_endpoint
from enclavekit.services.trust.service import Accepted
from enclavekit.services.trust.signing import EAR_MEDIA_TYPE

__all__ = ["router"]

router = APIRouter()


@router.get("/api/apps")
def api_apps(request: Request, web: Web) -> dict[str, Any]:
    filters = filters_from(request)
    apps, total = web.service.store.list_apps(filters)
    return {"total": total, "offset": filters.offset, "apps": [a.to_json() for a in apps]}


@router.get("/api/app/{app_id}")
def api_app(app_id: str, web: Web) -> dict[str, Any]:
    record = web.service.store.get_app(app_id)
    history = web.service.store.history(app_id, limit=50)
    latest_task = next((t for t in history if t.id == record.last_task_id), None)
    report = web.load_report(latest_task)
    latest = None if latest_task is None else task_json(latest_task, report)
    return app_json(record, history, latest)


@router.get("/api/task/{task_id}")
def api_task(task_id: str, web: Web) -> dict[str, Any]:
    task = web.service.store.get_task(task_id)
    return task_json(task, web.load_report(task))


@router.get("/api/task/{task_id}/report")
def api_task_report(task_id: str, web: Web) -> dict[str, Any]:
    task = web.service.store.get_task(task_id)
    report = web.load_report(task)
    if report is None:
        raise NotFound(f"task {task_id} has no report ({task.status})")
    return report


@router.get("/api/task/{task_id}/ear")
def api_task_ear(task_id: str, web: Web) -> Response:
    task = web.service.store.get_task(task_id)
    report = web.load_report(task)
    if report is None or not report.get("ear_token"):
        raise NotFound(f"task {task_id} has no EAR ({task.status})")
    return Response(str(report["ear_token"]), media_type=EAR_MEDIA_TYPE)


@router.get("/.well-known/jwks.json")
def jwks(web: Web) -> dict[str, Any]:
    return web.service.signer.jwks()


@router.post("/api/tasks", status_code=202)
async def api_submit(request: Request, web: Web) -> JSONResponse:
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            accepted = await accept_upload(web, request)
        else:
            accepted = await raw_upload(web, request)
    except Rejected:
        web.metrics.uploads.labels("rejected").inc()
        raise
    web.metrics.uploads.labels("accepted").inc()
    return JSONResponse(
        {**accepted.to_json(), "created": accepted.created, "url": f"/tasks/{accepted.task.id}"}, status_code=202
    )


@router.post("/api/app/{app_id}/verify", status_code=202)
async def api_verify(app_id: str, web: Web) -> JSONResponse:
    task = await run_in_threadpool(web.service.reverify, app_id)
    record = await run_in_threadpool(web.service.store.get_app, app_id)
    await web.wake(Accepted(record, task, False))
    return JSONResponse({"task_id": task.id, "app_id": app_id, "status": str(task.status)}, status_code=202)


@router.post("/api/task/{task_id}/cancel")
def api_cancel(request: Request, task_id: str, web: Web) -> dict[str, Any]:
    web.require_admin(request, "cancelling tasks")
    return web.service.store.cancel(task_id).to_json()


@router.post("/api/apps", status_code=202)
async def api_register(request: Request, web: Web) -> JSONResponse:
    web.require_admin(request, "registering endpoints")
    accepted = await register_endpoint(web, request)
    return JSONResponse({**accepted.to_json(), "created": accepted.created}, status_code=202)
