"""Process entry points of notify's host parts: the API, the ingest worker, the dispatcher, the stand-ins.

Each builds its dependencies from :class:`NotifySettings`, serves on loopback (or where told), prints one
``{"ready": true, "url": ...}`` line when it is ready (the stack supervisor waits for it) and stops cleanly on
SIGTERM. ``enclavekit notify ...`` commands call these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.errors import PayloadTooLarge, describe_validation, envelope
from enclavekit.hostkit.server import serve_forever
from enclavekit.services.notify.api import ApiDeps, create_app
from enclavekit.services.notify.dispatcher import Dispatcher
from enclavekit.services.notify.enclave_link import enclave_client, initialize_enclave
from enclavekit.services.notify.errors import BadRequest
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.ingest import ChatMessage, Ingestor, message_id
from enclavekit.services.notify.media import MediaStore
from enclavekit.services.notify.metrics import Metrics
from enclavekit.services.notify.queue import connect, ensure_streams, new_traceparent
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import open_store
from enclavekit.services.notify.tokens import TokenIssuer
from enclavekit.services.notify.worldid import WorldIdStandIn, WorldIdVerifier, load_stand_in_secret

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = [
    "ensure_jwt_key",
    "kms_client",
    "run_api",
    "run_capture_server",
    "run_dispatcher",
    "run_ingest_worker",
    "run_local_s3",
    "run_world_id",
]

logger = logging.getLogger(__name__)


def kms_client(settings: NotifySettings) -> KMSClient:
    local = settings.kms_url is not None and not os.environ.get("AWS_ACCESS_KEY_ID")
    return boto3.client(
        "kms",
        endpoint_url=settings.kms_url,
        region_name=settings.kms_region,
        verify=str(settings.kms_ca_file) if settings.kms_ca_file else None,
        aws_access_key_id="local" if local else None,
        aws_secret_access_key="local" if local else None,
    )


def ensure_jwt_key(settings: NotifySettings) -> str:
    """The configured JWT key id, or one created in KMS once and remembered in ``STATE/notify/jwt-key-id``."""
    if settings.jwt_key_id:
        return settings.jwt_key_id
    path = settings.notify_dir / "jwt-key-id"
    if path.exists():
        return path.read_text().strip()
    created = kms_client(settings).create_key(
        KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="enclavekit notify JWT signing"
    )
    key_id = created["KeyMetadata"]["KeyId"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key_id + "\n")
    return key_id


def _media(settings: NotifySettings) -> MediaStore | None:
    if settings.s3_endpoint_url is None and not os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    if settings.s3_endpoint_url is not None and not os.environ.get("AWS_ACCESS_KEY_ID"):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    return MediaStore(settings.media_bucket, endpoint_url=settings.s3_endpoint_url, cdn_url=settings.trusted_cdn_url)


async def run_api(settings: NotifySettings, *, host: str, port: int) -> None:
    store = await asyncio.to_thread(open_store, settings.effective_database_url)
    key_id = await asyncio.to_thread(ensure_jwt_key, settings)
    tokens = await asyncio.to_thread(
        TokenIssuer, kms_client(settings), key_id, issuer=settings.jwt_issuer, enclave_track=settings.enclave_track
    )
    world_id = WorldIdVerifier(settings.world_id_url, settings.world_id_app_id, settings.world_id_action)
    enclave = enclave_client(settings)
    deps = ApiDeps(settings, store, tokens, world_id, enclave, _media(settings), Metrics())
    try:
        await serve_forever(create_app(deps), host=host, port=port, ready={"name": "notify_api"}, lifespan="on")
    finally:
        await enclave.close()
        store.engine.dispose()


def _sweeper(settings: NotifySettings, store: Any, stop: asyncio.Event, interval: float = 300.0) -> Any:
    async def sweep() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                removed = await asyncio.to_thread(store.sweep_expired, now=int(time.time()))
                if removed:
                    logger.info("swept %d expired rows", removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    return sweep()


async def run_ingest_worker(settings: NotifySettings, *, host: str, port: int) -> None:
    """The ingest worker, with its HTTP endpoint ``POST /v1/messages`` (publishes to the inbox stream)."""
    store = await asyncio.to_thread(open_store, settings.effective_database_url)
    nc, js = await connect(settings)
    await ensure_streams(js, settings)
    metrics = Metrics()
    ingestor = Ingestor(settings, store, js, metrics)

    async def post_message(request: Request) -> Response:
        try:
            raw = await request.body()
            try:
                message = ChatMessage.model_validate_json(raw)
            except ValidationError as exc:
                raise BadRequest(describe_validation(exc.errors(), located_in_request=False)) from exc
            message.data()
        except (BadRequest, PayloadTooLarge) as exc:
            return JSONResponse(envelope(exc)[1], exc.http_status)
        ident = message_id(message)
        headers = {
            "Nats-Msg-Id": f"inbox:{ident}",
            "traceparent": request.headers.get("traceparent") or new_traceparent(),
        }
        await js.publish(settings.inbox_subject, message.model_dump_json().encode(), headers=headers)
        return JSONResponse({"id": ident, "traceparent": headers["traceparent"]}, 202)

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = BodyLimit(
        Starlette(
            routes=[
                Route("/v1/messages", post_message, methods=["POST"]),
                Route("/metrics", metrics_route),
                Route("/health", health),
            ]
        ),
        limit=settings.max_body,
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(ingestor.run(stop))
    sweeper = asyncio.create_task(_sweeper(settings, store, stop))
    try:
        await serve_forever(app, host=host, port=port, ready={"name": "notify_ingest"})
    finally:
        stop.set()
        await asyncio.gather(worker, sweeper, return_exceptions=True)
        await nc.close()
        store.engine.dispose()


async def _initialize_all(clients: list[AttestedClient], settings: NotifySettings) -> None:
    for client in clients:
        for attempt in range(60):
            try:
                answer = await initialize_enclave(client, settings)
                logger.info("enclave %s initialised (push key %s…)", client.endpoint, answer.public_key[:16])
                break
            except Error as exc:
                if attempt == 59:
                    raise
                logger.info("enclave %s not ready (%s); retrying", client.endpoint, exc.code)
                await asyncio.sleep(0.5)


async def run_dispatcher(settings: NotifySettings, *, host: str, port: int) -> None:
    store = await asyncio.to_thread(open_store, settings.effective_database_url)
    nc, js = await connect(settings)
    await ensure_streams(js, settings)
    clients = [enclave_client(settings, endpoint=e.strip()) for e in settings.enclave.split(",") if e.strip()]
    await _initialize_all(clients, settings)
    metrics = Metrics()
    dispatcher = Dispatcher(settings, store, js, clients, metrics)

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/metrics", metrics_route), Route("/health", health)])
    stop = asyncio.Event()
    worker = asyncio.create_task(dispatcher.run(stop))
    try:
        await serve_forever(app, host=host, port=port, ready={"name": "notify_dispatcher"})
    finally:
        stop.set()
        await asyncio.gather(worker, return_exceptions=True)
        for client in clients:
            await client.close()
        await nc.close()
        store.engine.dispose()


async def run_capture_server(
    api_key: str, record: Path | None, *, host: str, port: int, tls: tuple[str, str] | None = None
) -> None:
    """The capture provider (a fake Braze), over HTTPS when ``tls=(certfile, keyfile)`` is given."""
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
    fake = FakeBraze(api_key, record=record, keep_deliveries=record is not None)
    ready = {"name": "notify_capture", "record": str(record)}
    await serve_forever(fake.app, host=host, port=port, ready=ready, tls=tls)


async def run_local_s3(root: Path, *, host: str, port: int) -> None:
    from enclavekit.services.notify.local_s3 import LocalS3

    root.mkdir(parents=True, exist_ok=True)
    await serve_forever(LocalS3(root).app, host=host, port=port, ready={"name": "notify_s3"})


async def run_world_id(state: Path, *, host: str, port: int) -> None:
    stand_in = WorldIdStandIn(load_stand_in_secret(state))
    await serve_forever(stand_in.app, host=host, port=port, ready={"name": "notify_world_id"})
