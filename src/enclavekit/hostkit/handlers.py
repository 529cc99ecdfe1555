"""One exception handler for a FastAPI app: every error leaves as the kit's envelope with its mapped status."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from enclavekit.errors import Error, Rejected
from enclavekit.hostkit.errors import BadRequest, describe_validation, envelope

__all__ = ["HttpProblem", "install_error_handlers"]

logger = logging.getLogger(__name__)

Respond = Callable[[Request, int, dict[str, Any]], Response]
"""Builds the response for ``(request, status, envelope)``: JSON by default; trust renders a page for people."""


class HttpProblem(Rejected):
    """What the framework itself refused (no such route, a method the route does not take)."""

    def __init__(self, message: str, *, code: str, http_status: int) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]
        self.http_status = http_status


_FRAMEWORK_CODES: Mapping[int, str] = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _json(request: Request, status: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=status)


def install_error_handlers(
    app: FastAPI,
    *,
    rejected_status: int = 400,
    translate: Mapping[type[Exception], Callable[[Exception], Error | None]] | None = None,
    respond: Respond = _json,
) -> None:
    """Answer every exception ``app``'s routes raise with the envelope (``respond`` builds the response).

    ``translate`` maps exception classes to what the caller should see instead (a database driver's error to
    ``database_unavailable``; a core error to the service's own); a translator returning None leaves the
    exception as it is. Exceptions that are neither an :class:`Error` nor translated are bugs: logged, answered
    500 without detail.
    """

    def answer(request: Request, error: Error) -> Response:
        status, body = envelope(error, rejected_status=rejected_status)
        if status >= 500:
            logger.warning("%s %s -> %d %s", request.method, request.url.path, status, error.code)
        return respond(request, status, body)

    def translating(convert: Callable[[Exception], Error | None]) -> Callable[[Request, Exception], Any]:
        async def handler(request: Request, exc: Exception) -> Response:
            translated = convert(exc)
            return await on_error(request, exc if translated is None else translated)

        return handler

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, Error):
            return answer(request, exc)
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, body = envelope(Error("internal error"))
        return respond(request, status, body)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return answer(request, BadRequest(describe_validation(exc.errors(), located_in_request=True)))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.__cause__, Error):  # FastAPI wraps what reading the body raised (the body limit) in a 400
            return answer(request, exc.__cause__)
        code = _FRAMEWORK_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return answer(request, HttpProblem(message, code=code, http_status=exc.status_code))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(Error, on_error)
    for cls, convert in (translate or {}).items():
        app.add_exception_handler(cls, translating(convert))
