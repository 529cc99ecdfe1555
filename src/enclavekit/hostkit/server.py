"""The one way an enclavekit HTTP service listens and runs: a socket, uvicorn without its signal capture, a
ready line.

:func:`running` serves an ASGI app on the current event loop for the length of an ``async with`` block;
:class:`ServerThread` does the same from its own thread (synchronous callers: tests, benchmarks, boto3);
:func:`serve_forever` is a process's main loop (until SIGINT/SIGTERM, then prints nothing more). Every process
that ``enclavekit up`` starts announces itself with one JSON line ``{"ready": true, "url": ...}`` on stdout
(:func:`~enclavekit.hostkit.process.announce`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from enclavekit.hostkit.process import announce, stop_on_signals
from enclavekit.hostkit.sockets import listen

__all__ = [
    "RunningServer",
    "ServerThread",
    "running",
    "serve_forever",
]

Tls = tuple[str | Path, str | Path]
"""``(certificate chain file, private key file)``, both PEM."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (it would re-raise them after shutting down): whoever runs the
    server decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class RunningServer:
    """A started server: where it listens, and the task serving it (done when the server stopped)."""

    host: str
    port: int
    tls: bool
    task: asyncio.Task[None] = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _config(app: Any, tls: Tls | None, lifespan: str, graceful: float, options: Mapping[str, Any]) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,  # the process's own logging (structlog / basicConfig) formats uvicorn's warnings
        log_level="warning",
        access_log=False,  # services log one line per request themselves
        lifespan=lifespan,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(graceful),
        ssl_certfile=None if tls is None else str(tls[0]),
        ssl_keyfile=None if tls is None else str(tls[1]),
        **options,
    )


@contextlib.asynccontextmanager
async def running(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    tls: Tls | None = None,
    lifespan: str = "auto",
    graceful: float = 5,
    **options: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` on ``host:port`` (or the listening ``sock``, which the caller bound and still owns) in the
    current event loop until the block ends; over HTTPS with ``tls``. ``options`` go to ``uvicorn.Config``
    (``limit_concurrency``, ``timeout_keep_alive``...)."""
    owned = sock is None
    listener = listen(host, port) if sock is None else sock
    try:
        bound_host, bound_port = listener.getsockname()[:2]
        server = _Server(_config(app, tls, lifespan, graceful, options))
        task = asyncio.create_task(server.serve(sockets=[listener]), name="http-server")
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the HTTP server stopped before it started")
                await asyncio.sleep(0.005)
            yield RunningServer(str(bound_host), int(bound_port), tls is not None, task)
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        if owned:
            listener.close()


async def serve_forever(
    app: Any,
    *,
    host: str,
    port: int,
    ready: Mapping[str, Any] | None = None,
    on_start: Callable[[RunningServer], Awaitable[None]] | None = None,
    tls: Tls | None = None,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> None:
    """A process's main loop: serve ``app`` until SIGTERM/SIGINT (or until ``stop`` is set, when given; signals
    are then left to the caller); once listening (and after ``on_start``), print the ready line
    ``{"ready": true, "url": ..., **ready}``."""
    async with contextlib.AsyncExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(stop_on_signals(asyncio.Event()))
        server = await stack.enter_async_context(running(app, host=host, port=port, tls=tls, **options))
        if on_start is not None:
            await on_start(server)
        announce({"url": server.url, **(ready or {})})
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, server.task}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if server.task.done():
            server.task.result()


class ServerThread:
    """``with ServerThread(app) as url:`` — ``app`` served on ``http://127.0.0.1:PORT`` from its own thread and
    event loop (``https://`` with ``tls``), for synchronous callers."""

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, tls: Tls | None = None, **options: Any
    ) -> None:
        self._app = app
        self._where = (host, port)
        self._tls = tls
        self._options = options
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="http-server")

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the server is not started")
        return self.server.url

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        host, port = self._where
        try:
            async with running(self._app, host=host, port=port, tls=self._tls, **self._options) as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(30)
        if self.server is None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self.server.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
