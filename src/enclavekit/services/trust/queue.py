"""Task ids over a NATS JetStream work queue.

The database says what must run; the queue only wakes workers. A message is ``{"task_id": ...}`` on one subject
of a work-queue stream, pulled by one durable consumer that every worker shares (so each message goes to one
worker). A worker holds a message while it works, telling JetStream it is still busy (``in_progress``); if it
dies, JetStream redelivers the message after ``ack_wait`` and the task's lease in the database has run out too,
so the next worker can claim it. Lost or duplicated messages are harmless: the dispatcher re-publishes pending
tasks nobody claimed, and claiming a task twice is impossible (see :mod:`enclavekit.services.trust.store`).

The connection survives NATS restarts (nats-py reconnects; the stream is file-backed and re-declared when
missing). While NATS is down, publishing raises :class:`QueueUnavailable` and the task simply stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from enclavekit.services.trust.errors import QueueUnavailable

__all__ = ["Delivery", "TaskQueue"]

logger = logging.getLogger(__name__)

_FAILURES: tuple[type[BaseException], ...] = (NatsError, JetStreamError, OSError, TimeoutError, asyncio.TimeoutError)


@dataclass(slots=True)
class Delivery:
    """One message: the task id it names, and how to answer JetStream about it."""

    task_id: str | None
    message: Msg

    async def ack(self) -> None:
        with contextlib.suppress(*_FAILURES):
            await self.message.ack()

    async def in_progress(self) -> None:
        with contextlib.suppress(*_FAILURES):
            await self.message.in_progress()

    async def nak(self, delay: float | None = None) -> None:
        with contextlib.suppress(*_FAILURES):
            await self.message.nak(delay=delay)


class TaskQueue:
    """One connection to NATS, the task stream, and (for workers) the shared pull consumer."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "TRUST_TASKS",
        subject: str = "enclavekit.trust.tasks",
        consumer: str = "trust-workers",
        ack_wait: float = 30.0,
        name: str = "enclavekit-trust",
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self.consumer = consumer
        self.ack_wait = ack_wait
        self.name = name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._lock = asyncio.Lock()
        self._declared = False

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _connect(self) -> JetStreamContext:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                try:
                    # nats-py retries a first connection forever when reconnects are unlimited: bound it here,
                    # the caller retries later (and an established connection still reconnects on its own)
                    self._nc = await asyncio.wait_for(
                        nats.connect(
                            self.url,
                            name=self.name,
                            connect_timeout=2,
                            reconnect_time_wait=0.5,
                            max_reconnect_attempts=-1,
                            allow_reconnect=True,
                            ping_interval=5,
                            max_outstanding_pings=2,
                            error_cb=_quiet,
                        ),
                        timeout=3,
                    )
                except _FAILURES as exc:
                    self._nc = None
                    raise QueueUnavailable(f"NATS at {self.url} is unreachable: {exc or type(exc).__name__}") from exc
                self._js = self._nc.jetstream()
                self._declared = False
                self._pull = None
            assert self._js is not None
            if not self._declared:
                await self._declare(self._js)
            return self._js

    async def _declare(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=0,
        )
        try:
            try:
                await js.stream_info(self.stream)
            except JetStreamError:
                await js.add_stream(config)
        except _FAILURES as exc:
            raise QueueUnavailable(f"cannot declare the JetStream stream {self.stream}: {exc}") from exc
        self._declared = True

    async def publish(self, task_id: str, *, timeout: float = 2.0) -> None:
        """Put ``task_id`` on the queue; raise :class:`QueueUnavailable` if NATS does not take it."""
        js = await self._connect()
        payload = json.dumps({"task_id": task_id}).encode()
        try:
            await js.publish(self.subject, payload, timeout=timeout, stream=self.stream)
        except _FAILURES as exc:
            self._declared = False  # the stream may be gone (a NATS without its store): declare it again
            raise QueueUnavailable(f"cannot publish task {task_id}: {exc or type(exc).__name__}") from exc

    async def pull(self, *, batch: int = 1, timeout: float = 2.0) -> list[Delivery]:
        """Up to ``batch`` messages (waiting up to ``timeout``); [] when there are none."""
        js = await self._connect()
        try:
            if self._pull is None:
                self._pull = await js.pull_subscribe(
                    self.subject,
                    durable=self.consumer,
                    stream=self.stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=self.ack_wait,
                        max_deliver=-1,
                        max_ack_pending=10_000,
                    ),
                )
            messages = await self._pull.fetch(batch, timeout=timeout)
        except TimeoutError:
            return []
        except _FAILURES as exc:
            self._pull = None
            self._declared = False
            raise QueueUnavailable(f"cannot pull tasks: {exc or type(exc).__name__}") from exc
        return [Delivery(_task_id(m.data), m) for m in messages]

    async def close(self) -> None:
        nc, self._nc, self._js, self._pull = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(nc.flush(), 1.0)
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(nc.close(), 2.0)


async def _quiet(error: Exception) -> None:
    logger.debug("nats: %s", error)


def _task_id(data: bytes) -> str | None:
    try:
        message: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    task_id = message.get("task_id") if isinstance(message, dict) else None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 64 else None
