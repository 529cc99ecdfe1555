"""The trust service's processes: ``serve`` (web app + dispatcher + in-process workers) and ``worker``.

Both print one JSON line on stdout when ready (``{"ready": true, "url": ...}`` for the web process), as
``enclavekit up`` expects of its children, log JSON lines to stderr (structlog), and stop cleanly on SIGINT or
SIGTERM: the web server stops accepting, tasks in hand finish or are abandoned to their lease, NATS is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from enclavekit.services.trust.api import create_app
from enclavekit.services.trust.dispatcher import Dispatcher
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.worker import Worker

__all__ = ["queue_for", "run_worker", "serve"]

logger = logging.getLogger(__name__)


def queue_for(settings: TrustSettings, name: str) -> TaskQueue:
    return TaskQueue(
        settings.nats_url,
        stream=settings.stream,
        subject=settings.subject,
        consumer=settings.consumer,
        ack_wait=settings.lease,
        name=name,
    )


class _Server(uvicorn.Server):
    """uvicorn, with signals left to us (it would re-raise them after shutting down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _announce(message: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(dict(message)) + "\n")
    sys.stdout.flush()


def _stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def _watch_stack(service: TrustService, path: Path, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Register the enclaves of ``stack.json`` whenever it changes (it is written once the whole stack is up,
    so enclaves started after this service are registered too; a restarted stack updates their URLs)."""
    seen: float | None = None
    while not stop.is_set():
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != seen:
            seen = mtime
            try:
                touched = await asyncio.to_thread(service.register_stack_file, path)
            except Exception:  # keep watching: the next change may be readable
                logger.exception("cannot register the enclaves of %s", path)
            else:
                if touched:
                    logger.info("registered or updated enclaves %s from %s", touched, path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such
    sockets, and without it keep-alive responses wait ~40 ms for delayed ACKs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(512)
    except OSError:
        listener.close()
        raise
    return listener


async def _finish(tasks: Sequence[asyncio.Task[Any]], *, grace: float) -> None:
    """Stop the loops at once (the dispatcher, the stack watcher, the worker's puller: waiting for NATS is all
    they would be doing); tasks a worker holds get ``grace`` seconds to finish, then everything is cancelled."""
    if not tasks:
        return
    for task in tasks:
        if task.get_name() in ("trust-dispatcher", "trust-stack-watch", "trust-workers"):
            task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _no_handlers() -> None:
    return None


async def serve(
    settings: TrustSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: bool = True,
    enclaves: Sequence[Mapping[str, Any]] = (),
    stack_file: Path | None = None,
    announce: Callable[[Mapping[str, Any]], None] = _announce,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the web app (and the dispatcher, and ``concurrency`` worker loops unless ``workers`` is False) until
    SIGINT/SIGTERM, or until ``stop`` is set when one is given (then signals are left alone)."""
    service = await asyncio.to_thread(TrustService, settings)
    queue = queue_for(settings, "enclavekit-trust-web")
    if stop is None:
        stop = asyncio.Event()
        remove_handlers = _stop_on_signals(stop)
    else:
        remove_handlers = _no_handlers
    listener = _listen(host, port)
    bound_port = listener.getsockname()[1]
    url = settings.public_url or f"http://{host}:{bound_port}"
    server = _Server(
        uvicorn.Config(
            create_app(service, queue=queue, listen_url=url),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    running: list[asyncio.Task[Any]] = [asyncio.create_task(server.serve(sockets=[listener]), name="trust-web")]
    try:
        if enclaves:
            touched = await asyncio.to_thread(service.register_stack_enclaves, enclaves)
            logger.info("registered %d enclave(s) of the local stack", len(touched))
        if stack_file is not None:
            running.append(asyncio.create_task(_watch_stack(service, stack_file, stop), name="trust-stack-watch"))
        running.append(asyncio.create_task(Dispatcher(service, queue).run(stop), name="trust-dispatcher"))
        if workers:
            worker = Worker(service, queue_for(settings, "enclavekit-trust-worker"))
            running.append(asyncio.create_task(worker.run(stop), name="trust-workers"))
        while not server.started:
            if running[0].done():
                running[0].result()
                return 1
            await asyncio.sleep(0.02)
        announce({"ready": True, "url": url, "workers": settings.concurrency if workers else 0})
        logger.info("trust web app at %s", url)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, running[0]}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        return 0
    finally:
        stop.set()
        server.should_exit = True
        await _finish(running, grace=10.0)
        await queue.close()
        await asyncio.to_thread(service.close)
        remove_handlers()


async def run_worker(
    settings: TrustSettings,
    *,
    announce: Callable[[Mapping[str, Any]], None] = _announce,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ``concurrency`` worker loops in this process until a signal (or ``stop``, when given)."""
    service = await asyncio.to_thread(TrustService, settings)
    queue = queue_for(settings, "enclavekit-trust-worker")
    worker = Worker(service, queue)
    if stop is None:
        stop = asyncio.Event()
        remove_handlers = _stop_on_signals(stop)
    else:
        remove_handlers = _no_handlers
    try:
        announce({"ready": True, "worker_id": worker.worker_id, "concurrency": settings.concurrency})
        running = asyncio.create_task(worker.run(stop), name="trust-workers")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await _finish([running], grace=settings.task_timeout)
        return 0
    finally:
        await queue.close()
        await asyncio.to_thread(service.close)
        remove_handlers()
