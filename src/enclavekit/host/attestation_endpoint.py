"""The host's attestation endpoint: serve an enclave's current attestation document over plain HTTP.

Clients and the trust service fetch the document here before (or without) opening a session. The host holds
no key: it asks the enclave over an attested session (checking only that the document is authentic — the
host has no policy of its own) and passes the document on unchanged. A client must verify it itself; a
document with a client's nonce (``?nonce=HEX``) proves freshness.

Routes: ``GET /attestation`` (``application/cbor``; ``?nonce=HEX`` for a fresh one; ``?format=json`` for
``{"document": base64, "fresh": bool}``), ``GET /health`` (the enclave's health as JSON). Errors are the host
kit's envelope ``{"allowRetry", "error": {"code", "message"}}``; a request with a body is refused (413).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.enclave.app import ATTESTATION, HEALTH, AttestationRequest, HealthRequest
from enclavekit.errors import Error
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.handlers import install_error_handlers
from enclavekit.rpc import ClientOptions

__all__ = ["MAX_NONCE", "attestation_app"]

logger = logging.getLogger(__name__)
MAX_NONCE = 64
"""Bytes of client nonce the endpoint passes on (the NSM takes up to 512; 64 is ample for freshness)."""
_HEX = re.compile(rf"(?:[0-9a-fA-F]{{2}}){{1,{MAX_NONCE}}}")


def attestation_app(upstream: str, *, roots: tuple[bytes, ...] = ()) -> FastAPI:
    """The HTTP app for one enclave at ``upstream`` (authenticity checked against AWS's root and ``roots``)."""
    base = NitroPolicy(unsafe_any_measurements=True)
    policy = NitroPolicy(unsafe_any_measurements=True, roots=(*base.roots, *roots))
    client = AttestedClient.nitro(upstream, policy, options=ClientOptions(connect_timeout=5, default_timeout=10))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(title="enclavekit host: attestation", docs_url=None, redoc_url=None, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=0)  # GET only: nothing to read

    def _error(status: int, code: str, message: str) -> JSONResponse:
        """The host kit's envelope; a 5xx (the enclave did not answer) is worth a retry."""
        return JSONResponse(
            {"allowRetry": status >= 500, "error": {"code": code, "message": message}}, status_code=status
        )

    @app.get("/attestation", response_model=None)
    async def attestation(nonce: str | None = None, format: str = "cbor") -> Response:
        # checked here, not by FastAPI's validation (a 422 in another shape), and before the enclave is asked:
        # an odd-length nonce used to reach the enclave and come back as a 502 "the enclave did not answer"
        if nonce is not None and not _HEX.fullmatch(nonce):
            return _error(
                400, "invalid_nonce", f"query parameter 'nonce' must be 1 to {MAX_NONCE} bytes of hex (even length)"
            )
        if format not in ("cbor", "json"):
            return _error(400, "invalid_format", "query parameter 'format' must be 'cbor' or 'json'")
        try:
            answer = await client.call(ATTESTATION, AttestationRequest(nonce=nonce))
        except Error as exc:
            logger.warning("attestation from %s failed: %s", upstream, exc)
            return _error(502, exc.code, f"the enclave did not answer: {exc.message}")
        if format == "json":
            return JSONResponse({"document": answer.document, "fresh": answer.fresh})
        try:
            document = base64.b64decode(answer.document, validate=True)
        except binascii.Error:
            return _error(502, "bad_enclave_answer", "the enclave sent a document that is not base64")
        return Response(document, media_type="application/cbor", headers={"Cache-Control": "no-store"})

    @app.get("/health", response_model=None)
    async def health() -> Response:
        try:
            answer = await client.call(HEALTH, HealthRequest())
        except Error as exc:
            return _error(503, exc.code, f"the enclave did not answer: {exc.message}")
        return JSONResponse(answer.model_dump())

    return app
