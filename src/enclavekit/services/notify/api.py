"""notify's HTTP API (the host side): authorize, subscriptions, media, attestation and client config.

Errors use the reference's shape ``{"allowRetry": bool, "error": {"code": str, "message": str}}`` with stable
codes (:mod:`enclavekit.services.notify.errors`) — the host kit's envelope and body limit
(:mod:`enclavekit.hostkit`); validation failures, unknown fields, oversized arrays and bodies are 4xx, never 500.
Bodies over ``max_body`` are refused with 413 before they are read whole; an invalid ``Content-Length`` with
400. Protected routes take ``Authorization: Bearer <JWT>`` (ES256 signed by KMS; ``sub`` is the caller's sealed
push ID).

The host never sees a plaintext push ID: it stores and compares sealed boxes, and asks the enclave
(``push-id-challenge``) when it must know whether two of them hold the same device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from enclavekit import __version__
from enclavekit.client import AttestedClient
from enclavekit.errors import Error, InfrastructureError
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.handlers import install_error_handlers
from enclavekit.services.notify.errors import (
    AssetExists,
    BadRequest,
    EnclaveUnavailable,
    InvalidPushId,
    NotFound,
    NotifyUnavailable,
    PushIdsMismatch,
    StaleTimestamp,
    Unauthorized,
)
from enclavekit.services.notify.media import (
    MAX_ASSETS_PER_MESSAGE,
    MAX_IMAGE_SIZE,
    MAX_VIDEO_SIZE,
    MediaStore,
    check_content_type,
    media_key,
)
from enclavekit.services.notify.metrics import Metrics
from enclavekit.services.notify.pushid import EncryptedPushId
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import DAY, AuthProof, NotifyStore
from enclavekit.services.notify.tokens import TokenIssuer
from enclavekit.services.notify.wire import ATTESTATION_DOC, PUSH_ID_CHALLENGE, AttestationDocRequest, Challenge
from enclavekit.services.notify.worldid import WorldIdVerifier

__all__ = ["ApiDeps", "create_app"]

logger = logging.getLogger(__name__)

TIMESTAMP_WINDOW = 300
ROTATION_COOLDOWN = 180 * DAY
MAX_SUBSCRIPTION_TTL = 40 * DAY
_HEX64 = r"^0x[0-9a-fA-F]{64}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthorizeRequest(_Body):
    encrypted_push_id: str = Field(min_length=1, max_length=1120)
    timestamp: int = Field(ge=0, le=2**40)
    proof: str = Field(min_length=1, max_length=1024)
    nullifier_hash: str = Field(pattern=_HEX64)
    merkle_root: str = Field(pattern=_HEX64)
    credential_type: Literal["orb", "device", "document", "secure_document"]


class AuthorizeResponse(BaseModel):
    access_token: str
    expires_at: int


class SubscriptionItem(_Body):
    topic: str = Field(min_length=1, max_length=256)
    hmac_key: str = Field(pattern=r"^[0-9a-fA-F]{84}$")
    ttl: int = Field(ge=0, le=2**40)


class SubscriptionKey(_Body):
    topic: str = Field(min_length=1, max_length=256)
    hmac_key: str = Field(pattern=r"^[0-9a-fA-F]{84}$")


class PresignRequest(_Body):
    content_digest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_length: int = Field(ge=1, le=MAX_VIDEO_SIZE)
    content_type: str = Field(min_length=1, max_length=128)


class PresignResponse(BaseModel):
    asset_url: str
    presigned_url: str
    headers: dict[str, str]
    expires_in: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    allowRetry: bool  # noqa: N815 - the reference's wire name
    error: ErrorDetail


class AssetExistsBody(ErrorBody):
    asset_url: str


class Health(BaseModel):
    status: str
    semver: str
    rev: str


class ClientConfig(BaseModel):
    max_assets_per_message: int
    max_image_size_bytes: int
    max_video_size_bytes: int
    trusted_cdn_url: str
    notification_server_version: str


class AttestationDocument(BaseModel):
    attestation_doc_base64: str
    public_key: str


class BatchDeleteResult(BaseModel):
    deleted: int
    tombstoned: int
    not_found: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request"},
    413: {"model": ErrorBody, "description": "Body too large"},
    503: {"model": ErrorBody, "description": "A dependency is unavailable"},
}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 401: {"model": ErrorBody, "description": "Unauthorized"}}


@dataclass
class ApiDeps:
    """What the API calls: storage, tokens, World ID, the enclave, media, metrics."""

    settings: NotifySettings
    store: NotifyStore
    tokens: TokenIssuer
    world_id: WorldIdVerifier
    enclave: AttestedClient
    media: MediaStore | None
    metrics: Metrics
    clock: Callable[[], float] = time.time
    rev: str = "dev"


async def _thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


async def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's sealed push ID, from a valid bearer token."""
    deps: ApiDeps = request.app.state.deps
    if authorization is None or not authorization.startswith("Bearer "):
        raise Unauthorized("missing bearer token")
    claims = deps.tokens.verify(authorization.removeprefix("Bearer ").strip(), now=int(deps.clock()))
    return claims.sub


Caller = Annotated[str, Depends(_caller)]


def _platform_error(exc: Exception) -> Error | None:
    """Errors that say their HTTP status (notify's, the host kit's) pass unchanged; a core infrastructure failure
    (the attested session to the enclave) is notify's ``enclave_unavailable``; any other core error is ours, a
    500 that names nothing."""
    if not isinstance(exc, Error) or hasattr(exc, "http_status"):
        return None
    if isinstance(exc, InfrastructureError):
        logger.warning("enclave call failed: %s", exc.code)
        return EnclaveUnavailable("the notify enclave is unavailable")
    logger.error("unexpected platform error: %s", exc.code)
    return Error("internal error")


def create_app(deps: ApiDeps) -> FastAPI:
    settings = deps.settings
    app = FastAPI(
        title="enclavekit notify",
        version=__version__,
        description="Confidential push notifications: the host side never sees a plaintext push ID.",
    )
    app.state.deps = deps
    app.add_middleware(BodyLimit, limit=settings.max_body)

    install_error_handlers(app, translate={Error: _platform_error})

    @app.middleware("http")
    async def _log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        deps.metrics.requests.labels(name, str(response.status_code)).inc()
        logger.info(
            "%s %s -> %d in %.1f ms", request.method, name, response.status_code, (time.perf_counter() - started) * 1000
        )
        return response

    # --- auth ------------------------------------------------------------------------------------------------

    # --- public ----------------------------------------------------------------------------------------------

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", semver=__version__, rev=deps.rev)

    @app.get("/v1/config", response_model=ClientConfig)
    async def config() -> ClientConfig:
        return ClientConfig(
            max_assets_per_message=MAX_ASSETS_PER_MESSAGE,
            max_image_size_bytes=MAX_IMAGE_SIZE,
            max_video_size_bytes=MAX_VIDEO_SIZE,
            trusted_cdn_url=settings.trusted_cdn_url,
            notification_server_version=__version__,
        )

    @app.get("/v1/attestation-document", response_model=AttestationDocument, responses=_ERRORS)
    async def attestation_document() -> AttestationDocument:
        answer = await deps.enclave.call(ATTESTATION_DOC, AttestationDocRequest(), timeout=15)
        return AttestationDocument(attestation_doc_base64=answer.document, public_key=answer.public_key)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(deps.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/authorize", response_model=AuthorizeResponse, responses=_AUTH_ERRORS | {403: {"model": ErrorBody}})
    async def authorize(body: AuthorizeRequest) -> AuthorizeResponse:
        now = int(deps.clock())
        if body.timestamp > now or body.timestamp < now - TIMESTAMP_WINDOW:
            raise StaleTimestamp("timestamp must be within the last 300 seconds and not in the future")
        push_id = EncryptedPushId.parse(body.encrypted_push_id)
        nullifier = body.nullifier_hash.lower()
        await _thread(
            deps.world_id.verify,
            proof=body.proof,
            nullifier_hash=nullifier,
            merkle_root=body.merkle_root.lower(),
            signal=f"{body.encrypted_push_id}:{body.timestamp}",
        )
        subject = await _rotate(nullifier, push_id.hex, now)
        token, expires_at = await _thread(deps.tokens.issue, subject, now=now)
        return AuthorizeResponse(access_token=token, expires_at=expires_at)

    async def _rotate(nullifier: str, new: str, now: int) -> str:
        """The push-ID rotation rules; returns the sealed push ID the token is issued for."""
        stored: AuthProof | None = await _thread(deps.store.auth_proof, nullifier, now=now)
        if stored is None:
            # Store only a push ID the enclave can open (the reference stored garbage, then failed every login).
            probe = await deps.enclave.call(
                PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1=new, encrypted_push_id_2=new)
            )
            if not probe.first_opens:
                raise InvalidPushId("encrypted_push_id is not sealed to this enclave's push key")
            await _thread(deps.store.put_auth_proof, nullifier, new, now=now)
            return new
        if stored.encrypted_push_id == new:
            await _thread(deps.store.refresh_auth_proof, nullifier, now=now)
            return stored.encrypted_push_id
        answer = await deps.enclave.call(
            PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1=stored.encrypted_push_id, encrypted_push_id_2=new)
        )
        if not answer.second_opens:
            raise InvalidPushId("encrypted_push_id is not sealed to this enclave's push key")
        if answer.same:
            await _thread(deps.store.refresh_auth_proof, nullifier, now=now)
            return stored.encrypted_push_id
        if answer.first_opens and now - stored.push_id_rotated_at < ROTATION_COOLDOWN:
            raise PushIdsMismatch("this World ID registered another push ID less than 180 days ago")
        await _thread(deps.store.put_auth_proof, nullifier, new, now=now)
        return new

    # --- subscriptions ---------------------------------------------------------------------------------------

    @app.post("/v1/subscriptions", status_code=201, responses=_AUTH_ERRORS)
    async def subscribe(body: Annotated[list[SubscriptionItem], Field(max_length=1000)], sub: Caller) -> Response:
        if len(body) > settings.max_subscriptions:
            raise BadRequest(f"at most {settings.max_subscriptions} subscriptions per request")
        now = int(deps.clock())
        for item in body:
            if not now + 1 < item.ttl < now + MAX_SUBSCRIPTION_TTL:
                raise BadRequest("ttl must be a unix time after now + 1 s and before now + 40 days")
        items = [(item.topic, item.hmac_key.lower(), item.ttl) for item in body]
        await _thread(deps.store.subscribe, items, sub)
        return Response(status_code=201)

    @app.delete("/v1/subscriptions", status_code=204, responses=_AUTH_ERRORS | {404: {"model": ErrorBody}})
    async def unsubscribe(
        sub: Caller,
        topic: Annotated[str, Query(min_length=1, max_length=256)],
        hmac_key: Annotated[str, Query(pattern=r"^[0-9a-fA-F]{84}$")],
    ) -> Response:
        result = await _thread(deps.store.unsubscribe, topic, hmac_key.lower(), sub, now=int(deps.clock()))
        if result == "not_found":
            raise NotFound("no such subscription")
        return Response(status_code=204)

    @app.post("/v1/subscriptions/delete", response_model=BatchDeleteResult, responses=_AUTH_ERRORS)
    async def unsubscribe_batch(
        body: Annotated[list[SubscriptionKey], Field(max_length=1000)], sub: Caller
    ) -> BatchDeleteResult:
        if len(body) > settings.max_subscriptions:
            raise BadRequest(f"at most {settings.max_subscriptions} subscriptions per request")
        now = int(deps.clock())
        counts = {"deleted": 0, "tombstoned": 0, "not_found": 0}
        for item in body:
            counts[await _thread(deps.store.unsubscribe, item.topic, item.hmac_key.lower(), sub, now=now)] += 1
        return BatchDeleteResult(**counts)

    # --- media -----------------------------------------------------------------------------------------------

    @app.post(
        "/v1/media/presigned-urls",
        response_model=PresignResponse,
        responses=_AUTH_ERRORS | {409: {"model": AssetExistsBody}},
    )
    async def presign(body: PresignRequest, sub: Caller) -> PresignResponse:
        if deps.media is None:
            raise NotifyUnavailable("media uploads are not configured here")
        check_content_type(body.content_type, body.content_length)
        key = media_key(body.content_digest_sha256)
        if await _thread(deps.media.exists, key):
            raise AssetExists("this content is already uploaded", asset_url=deps.media.asset_url(key))
        upload = await _thread(
            deps.media.presign_put,
            key,
            digest=body.content_digest_sha256,
            content_type=body.content_type,
            content_length=body.content_length,
        )
        return PresignResponse(
            asset_url=deps.media.asset_url(key),
            presigned_url=upload.url,
            headers=upload.headers,
            expires_in=upload.expires_in,
        )

    return app
