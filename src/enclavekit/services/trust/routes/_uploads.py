"""Evidence uploads over HTTP: a multipart form (the page and the API) or a raw body (the API), each part bounded
before it is read whole; the service is called the way the CLI and the client call it."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE
from enclavekit.services.trust.errors import UploadInvalid, UploadTooLarge
from enclavekit.services.trust.model import Kind, TargetOptions, parse_at
from enclavekit.services.trust.routes._context import KINDS, WebContext
from enclavekit.services.trust.service import Accepted

__all__ = ["accept_upload", "raw_upload", "register_endpoint"]


def _kind(text: str) -> Kind | None:
    if text and text not in KINDS:
        raise UploadInvalid(f"kind must be one of {', '.join(KINDS)}")
    return Kind(text) if text else None


async def _read_part(value: Any, name: str, limit: int) -> bytes | None:
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


async def accept_upload(web: WebContext, request: Request) -> Accepted:
    """A multipart upload: ``evidence`` (required), ``collateral``, ``compose``, ``kind``, ``at``, ``name``,
    ``trust_simulator``."""
    form = await request.form(max_files=3, max_fields=12, max_part_size=64 * 1024)
    try:
        limit = min(web.settings.max_upload, MAX_EVIDENCE_SIZE)
        evidence = await _read_part(form.get("evidence"), "evidence", limit)
        if evidence is None:
            raise UploadInvalid("choose an evidence file (a Nitro document, a TDX quote or a dstack bundle)")
        collateral = await _read_part(form.get("collateral"), "collateral", 1024 * 1024)
        compose = await _read_part(form.get("compose"), "compose", 1024 * 1024)
        kind = _kind(str(form.get("kind") or "").strip())
        at = parse_at(str(form.get("at") or "").strip() or "now")
        options = TargetOptions(at=at, trust_simulator=str(form.get("trust_simulator") or "") in ("1", "on", "true"))
        name = str(form.get("name") or "").strip() or None
    finally:
        await form.close()
    accepted = await run_in_threadpool(
        web.service.submit, evidence, collateral=collateral, compose=compose, name=name, kind=kind, options=options
    )
    await web.wake(accepted)
    return accepted


async def raw_upload(web: WebContext, request: Request) -> Accepted:
    """The body is the evidence; ``?kind=``, ``?at=``, ``?name=`` in the query."""
    limit = min(web.settings.max_upload, MAX_EVIDENCE_SIZE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"evidence is over the limit of {limit} bytes")
        chunks.append(chunk)
    params = request.query_params
    kind = _kind(params.get("kind", ""))
    options = TargetOptions(at=parse_at(params.get("at") or "now"))
    accepted = await run_in_threadpool(
        web.service.submit, b"".join(chunks), name=params.get("name") or None, kind=kind, options=options
    )
    await web.wake(accepted)
    return accepted


async def register_endpoint(web: WebContext, request: Request) -> Accepted:
    """``{url, name?, kind?, options?}``: an endpoint to poll for evidence."""
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise UploadInvalid("the body must be JSON: {url, name?, kind?, options?}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise UploadInvalid("the body must be JSON: {url, name?, kind?, options?}")
    kind = _kind(str(body.get("kind") or "app")) or Kind("app")
    options = TargetOptions.from_json(body.get("options") if isinstance(body.get("options"), dict) else None)
    accepted = await run_in_threadpool(
        web.service.register_endpoint,
        body["url"],
        name=str(body["name"]) if body.get("name") else None,
        kind=kind,
        options=options,
    )
    await web.wake(accepted)
    return accepted
