"""The trust service's processes: ``serve`` (web app + dispatcher + in-process workers) and ``worker``.

Both print one JSON line on stdout when ready (``{"ready": true, "url": ...}`` for the web process), as
``enclavekit up`` expects of its children, log JSON lines to stderr (structlog), and stop cleanly on SIGINT or
SIGTERM: the web server stops accepting, tasks in hand finish or are abandoned to their lease, NATS is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from enclavekit.hostkit.process import announce, stop_on_signals
from enclavekit.hostkit.server import running as http_server
from enclavekit.hostkit.sockets import listen
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


async def serve(
    settings: TrustSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: bool = True,
    enclaves: Sequence[Mapping[str, Any]] = (),
    stack_file: Path | None = None,
    announce: Callable[[Mapping[str, Any]], None] = announce,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the web app (and the dispatcher, and ``concurrency`` worker loops unless ``workers`` is False) until
    SIGINT/SIGTERM, or until ``stop`` is set when one is given (then signals are left alone)."""
    service = await asyncio.to_thread(TrustService, settings)
    queue = queue_for(settings, "enclavekit-trust-web")
    running: list[asyncio.Task[Any]] = []
    async with contextlib.AsyncExitStack() as exits:
        if stop is None:
            stop = exits.enter_context(stop_on_signals(asyncio.Event()))
        exits.push_async_callback(asyncio.to_thread, service.close)
        exits.push_async_callback(queue.close)
        listener = exits.enter_context(listen(host, port))
        url = settings.public_url or f"http://{host}:{listener.getsockname()[1]}"
        app = create_app(service, queue=queue, listen_url=url)
        exits.push_async_callback(_finish, running, grace=10.0)
        web = await exits.enter_async_context(http_server(app, sock=listener, lifespan="off"))
        exits.callback(stop.set)  # on the way out: loops stop first, then the server, then _finish waits for them
        if enclaves:
            touched = await asyncio.to_thread(service.register_stack_enclaves, enclaves)
            logger.info("registered %d enclave(s) of the local stack", len(touched))
        if stack_file is not None:
            running.append(asyncio.create_task(_watch_stack(service, stack_file, stop), name="trust-stack-watch"))
        running.append(asyncio.create_task(Dispatcher(service, queue).run(stop), name="trust-dispatcher"))
        if workers:
            worker = Worker(service, queue_for(settings, "enclavekit-trust-worker"))
            running.append(asyncio.create_task(worker.run(stop), name="trust-workers"))
        announce({"ready": True, "url": url, "workers": settings.concurrency if workers else 0})
        logger.info("trust web app at %s", url)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, web.task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    return 0


async def run_worker(
    settings: TrustSettings,
    *,
    announce: Callable[[Mapping[str, Any]], None] = announce,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ``concurrency`` worker loops in this process until a signal (or ``stop``, when given)."""
    service = await asyncio.to_thread(TrustService, settings)
    queue = queue_for(settings, "enclavekit-trust-worker")
    worker = Worker(service, queue)
    async with contextlib.AsyncExitStack() as exits:
        if stop is None:
            stop = exits.enter_context(stop_on_signals(asyncio.Event()))
        exits.push_async_callback(asyncio.to_thread, service.close)
        exits.push_async_callback(queue.close)
        announce({"ready": True, "worker_id": worker.worker_id, "concurrency": settings.concurrency})
        running = asyncio.create_task(worker.run(stop), name="trust-workers")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await _finish([running], grace=settings.task_timeout)
    return 0
