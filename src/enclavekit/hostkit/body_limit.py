"""The one request-body limit of enclavekit's HTTP services: pure ASGI, streaming, nothing read past the limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from enclavekit.errors import Error
from enclavekit.hostkit.errors import InvalidContentLength, PayloadTooLarge, render_envelope

__all__ = ["BodyLimit"]

_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[[MutableMapping[str, Any], _Receive, _Send], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, without buffering them.

    * ``Content-Length`` that is not ASCII digits, or two that disagree: ``invalid`` (400) before the app runs;
    * ``Content-Length`` over the limit: ``too_large`` (413) before the app runs, with ``Connection: close``
      (the body is never read);
    * a body without one (chunked) or longer than it said: counted as it streams; the chunk that crosses the
      limit raises ``too_large`` inside the app's ``receive()`` — the app's own error handling answers it (a
      FastAPI app with :func:`~enclavekit.hostkit.handlers.install_error_handlers`), else this middleware does if no
      response has started.

    The app still sees the body chunk by chunk: a slow sender holds one chunk in memory, not the whole body.
    ``render`` turns an error into ``(status, headers, body)``: the service's envelope (default: the kit's; the
    KMS emulator passes AWS's)."""

    def __init__(
        self,
        app: _App,
        *,
        limit: int,
        too_large: Callable[[str], Error] = PayloadTooLarge,
        invalid: Callable[[str], Error] = InvalidContentLength,
        render: Callable[[Error], tuple[int, Mapping[str, str], bytes]] = render_envelope,
    ) -> None:
        if limit < 0:
            raise ValueError("the body limit must be >= 0")
        self.app = app
        self.limit = limit
        self.too_large = too_large
        self.invalid = invalid
        self.render = render

    def _declared(self, scope: MutableMapping[str, Any]) -> int | None:
        values = {value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"}
        if not values:
            return None
        if len(values) > 1:
            raise self.invalid("conflicting Content-Length headers")
        (value,) = values
        text = value.strip()
        if not (text.isdigit() and text.isascii()) or len(text) > 20:
            raise self.invalid("invalid Content-Length (not a number of bytes)")
        return int(text)

    async def __call__(self, scope: MutableMapping[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = self._declared(scope)
            if declared is not None and declared > self.limit:
                raise self.too_large(f"request body of {declared} bytes is over the limit of {self.limit}")
        except Error as refused:
            await self._answer(send, refused)
            return

        seen = 0
        started = False

        async def limited() -> _Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self.too_large(f"request body is over the limit of {self.limit} bytes")
            return message

        async def watched(message: _Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Error as refused:
            if started or seen <= self.limit:
                raise
            await self._answer(send, refused)

    async def _answer(self, send: _Send, error: Error) -> None:
        status, extra, body = self.render(error)
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
        headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
