"""Run an ASGI app with uvicorn on loopback: in a thread (tests, benchmarks) or as a process's main loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["ServerThread", "bind", "serve_forever"]


def bind(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and without it every keep-alive response waits 40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the owner of the process handles signals
        yield


def _config(app: Any, log_level: str = "warning", tls: tuple[str, str] | None = None) -> uvicorn.Config:
    certfile, keyfile = tls if tls is not None else (None, None)
    return uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=3,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


class ServerThread:
    """``with ServerThread(app) as url:`` — the app served on ``http://127.0.0.1:PORT`` from a thread
    (``https://`` with ``tls=(certfile, keyfile)``)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, tls: tuple[str, str] | None = None) -> None:
        self._sock = bind(host, port)
        self.url = f"{'https' if tls else 'http'}://{host}:{self._sock.getsockname()[1]}"
        self._server = _Server(_config(app, tls=tls))
        self._thread = threading.Thread(target=self._run, daemon=True, name="notify-server")

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> str:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self.url
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(
    app: Any,
    *,
    host: str,
    port: int,
    ready: dict[str, Any] | None = None,
    on_start: Callable[[], Any] | None = None,
    tls: tuple[str, str] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; print the ``{"ready": true, "url": ...}`` line when listening (``https`` with
    ``tls=(certfile, keyfile)``)."""
    sock = bind(host, port)
    url = f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"
    server = _Server(_config(app, tls=tls))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.02)
    if on_start is not None:
        await on_start()
    print(json.dumps({"ready": True, "url": url, **(ready or {})}), flush=True)
    await task
    sock.close()
