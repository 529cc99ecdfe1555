"""notify's JetStream streams, and W3C trace context carried in message headers.

* ``NOTIFY_INBOX`` (``notify.inbox``): chat messages waiting for the ingest worker;
* ``NOTIFY_NOTIFICATIONS`` (``notify.notifications``): notifications for the dispatcher, deduplicated on
  ``Nats-Msg-Id`` (the notification's idempotency id) within a two-minute window;
* ``NOTIFY_DEAD`` (``notify.dead``): notifications that ran out of attempts, kept for an operator.

All three hold only ciphertext and metadata (topics, sealed push IDs, the encrypted chat message).
"""

from __future__ import annotations

import os

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError

from enclavekit.services.notify.errors import QueueUnavailable
from enclavekit.services.notify.settings import NotifySettings

__all__ = ["child_traceparent", "connect", "ensure_streams", "new_traceparent", "trace_id"]


async def connect(settings: NotifySettings) -> tuple[Client, JetStreamContext]:
    try:
        nc = await nats.connect(
            settings.nats_url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
    except Exception as exc:
        raise QueueUnavailable(f"cannot reach NATS at {settings.nats_url}: {exc}") from exc
    return nc, nc.jetstream()


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, settings: NotifySettings) -> None:
    """Create (or update) the three streams; safe to call from every process at startup."""
    await _ensure(
        js,
        StreamConfig(
            name=settings.inbox_stream,
            subjects=[settings.inbox_subject],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0,
        ),
    )
    await _ensure(
        js,
        StreamConfig(
            name=settings.stream,
            subjects=[settings.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0,
        ),
    )
    await _ensure(js, StreamConfig(name=f"{settings.stream}_DEAD", subjects=[settings.dead_letter_subject]))


def new_traceparent() -> str:
    """A fresh W3C ``traceparent`` (sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str | None) -> str:
    """The same trace with a new span id (or a new trace if ``parent`` is missing or malformed)."""
    parts = (parent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return new_traceparent()
    return f"00-{parts[1]}-{os.urandom(8).hex()}-{parts[3]}"


def trace_id(traceparent: str | None) -> str:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else "-"
