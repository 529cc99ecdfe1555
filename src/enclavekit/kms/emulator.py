"""The local KMS emulator: :class:`~enclavekit.kms.service.KmsService` over HTTP, speaking AWS's KMS protocol.

boto3 talks to it unchanged::

    kms = boto3.client("kms", endpoint_url=emulator.url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")

The HTTP side is a small ASGI application served by uvicorn: ``POST /`` with ``X-Amz-Target:
TrentService.<Op>``; bodies are read up to :data:`~enclavekit.kms.protocol.MAX_BODY_SIZE` and no further (the
host kit's body limit, :func:`kms_app`);
every refusal is an AWS-style JSON error, and garbage never reaches the service as anything but a
``SerializationException`` or ``ValidationException``. SigV4 signatures are accepted without being checked (the
emulator has no IAM; see ``docs/kms.md``). One log line per request: operation, status, error type, duration —
never a body.

Ways to run it: ``enclavekit kms serve`` (:func:`serve`), :func:`running_emulator` (an ``async with`` on the
current event loop), :class:`EmulatorThread` (its own thread and loop, for synchronous callers such as boto3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from enclavekit.errors import Error
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.server import ServerThread, running
from enclavekit.kms.errors import (
    KmsInternal,
    KmsRejected,
    RequestTooLarge,
    SerializationError,
    UnknownOperation,
)
from enclavekit.kms.keystore import KeyStore
from enclavekit.kms.protocol import (
    CONTENT_TYPE,
    MAX_BODY_SIZE,
    encode_error,
    encode_response,
    parse_body,
    parse_target,
)
from enclavekit.kms.recipient import RecipientVerifier
from enclavekit.kms.service import DEFAULT_ACCOUNT, DEFAULT_REGION, KmsService

__all__ = [
    "DEFAULT_PORT",
    "EmulatorThread",
    "KmsEmulator",
    "RunningEmulator",
    "kms_app",
    "open_service",
    "running_emulator",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 4599
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def open_service(
    state_dir: str | os.PathLike[str],
    *,
    trusted_roots: Sequence[bytes] = (),
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
) -> KmsService:
    """A service over the keys of ``state_dir/kms`` (created on first use), trusting ``trusted_roots`` (DER)
    besides the AWS Nitro root for recipients. Close ``service.keystore`` when done."""
    keystore = KeyStore(Path(state_dir) / "kms")
    verifier = RecipientVerifier(roots=tuple(trusted_roots))
    return KmsService(keystore, verifier=verifier, region=region, account=account)


class _Disconnected(Exception):
    pass


class KmsEmulator:
    """The ASGI application. ``clock`` gives ``now`` for each request (attestation freshness, key dates). Serve it
    inside the host kit's body limit: :func:`kms_app`."""

    def __init__(self, service: KmsService, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.service = service
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        operation = parse_target(headers.get("x-amz-target"))
        try:
            status, body, outcome = await self._handle(scope, receive, headers, operation)
        except _Disconnected:
            logger.info("kms %s: client disconnected", operation or "-")
            return
        request_id = str(uuid.uuid4())
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-amzn-requestid", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        elapsed = (time.perf_counter() - started) * 1000
        logger.info("kms %s %d %s %.1fms", operation or "-", status, outcome, elapsed)

    async def _handle(
        self, scope: Scope, receive: Receive, headers: dict[str, str], operation: str | None
    ) -> tuple[int, bytes, str]:
        try:
            if scope.get("method") != "POST" or scope.get("path") not in ("/", ""):
                raise UnknownOperation("the KMS protocol is POST / with an X-Amz-Target header")
            if operation is None:
                raise UnknownOperation("missing or malformed X-Amz-Target (expected TrentService.<Operation>)")
            if operation not in self.service.operations:
                raise UnknownOperation(f"operation {operation!r} is not supported by the emulator")
            request = parse_body(await self._read_body(receive))
            answer = await asyncio.to_thread(self.service.handle, operation, request, now=self.clock())
            return 200, encode_response(answer), "ok"
        except Error as exc:
            if not isinstance(exc, KmsRejected):
                logger.warning("kms %s failed: %s", operation or "-", exc)
            status, body = encode_error(exc)
            return status, body, getattr(exc, "aws_type", KmsInternal.aws_type)
        except _Disconnected:
            raise
        except Exception:
            logger.exception("kms %s: internal error", operation or "-")
            status, body = encode_error(KmsInternal("internal error"))
            return status, body, KmsInternal.aws_type

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()  # bounded by the host kit's BodyLimit around this app (see :func:`kms_app`)
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _render(error: Error) -> tuple[int, Mapping[str, str], bytes]:
    status, body = encode_error(error)
    return status, {"content-type": CONTENT_TYPE, "x-amzn-requestid": str(uuid.uuid4())}, body


def kms_app(
    service: KmsService, *, max_body: int = MAX_BODY_SIZE, clock: Callable[[], datetime] = _utcnow
) -> BodyLimit:
    """:class:`KmsEmulator` inside the host kit's body limit: an invalid ``Content-Length`` is a
    ``SerializationException`` (400), a body over ``max_body`` a ``RequestEntityTooLargeException`` (413) — before
    it is read when it says its length, as soon as it crosses the limit when it streams."""
    return BodyLimit(
        KmsEmulator(service, clock=clock),
        limit=max_body,
        too_large=RequestTooLarge,
        invalid=SerializationError,
        render=_render,
    )


_SERVER_OPTIONS: Final[dict[str, Any]] = {"lifespan": "off", "limit_concurrency": 256, "timeout_keep_alive": 30}


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: where it listens, and its service (keys, settings)."""

    host: str
    port: int
    service: KmsService
    tls: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@contextlib.asynccontextmanager
async def running_emulator(
    service: KmsService,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], datetime] = _utcnow,
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[RunningEmulator]:
    """Serve ``service`` on ``host:port`` (0: a free port) in the current event loop until the block ends; over
    HTTPS with ``tls`` (``(certificate chain file, key file)``), as enclaves require (they pin its CA)."""
    app = kms_app(service, clock=clock)
    async with running(app, host=host, port=port, tls=tls, **_SERVER_OPTIONS) as server:
        yield RunningEmulator(server.host, server.port, service, server.tls)


class EmulatorThread:
    """The emulator on its own thread and event loop, for synchronous callers (boto3) in the same process::

    with EmulatorThread(service) as emulator:
        boto3.client("kms", endpoint_url=emulator.url, ...)
    """

    def __init__(
        self,
        service: KmsService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] = _utcnow,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.service = service
        self._server = ServerThread(kms_app(service, clock=clock), host=host, port=port, tls=tls, **_SERVER_OPTIONS)

    def start(self) -> RunningEmulator:
        self._server.start()
        server = self._server.server
        assert server is not None
        return RunningEmulator(server.host, server.port, self.service, server.tls)

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(
    service: KmsService,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    on_ready: Callable[[RunningEmulator], None] = lambda running: None,
    stop: asyncio.Event | None = None,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve until ``stop`` is set (or the task is cancelled); ``on_ready`` is called once, when listening."""
    stop = stop or asyncio.Event()
    async with running_emulator(service, host=host, port=port, tls=tls) as running:
        on_ready(running)
        await stop.wait()
