"""The ingest worker: chat messages in, one notification per message out (the reference's notification-worker).

Messages arrive on the JetStream subject ``notify.inbox`` (the HTTP endpoint ``POST /v1/messages`` and
``enclavekit notify ingest`` publish there; an XMTP ``SubscribeAll`` adapter would too). For each message,
the reference's rules:

* keep only topics starting with ``/xmtp/mls/1/g-`` (groups) or ``/xmtp/mls/1/w-`` (welcomes);
* for group messages, skip ``should_push == false``;
* load the topic's live subscriptions, page by page;
* drop the sender's own subscription: ``HMAC-SHA256(hex_decode(hmac_key), message_data) == sender_hmac``;
* deduplicate sealed push IDs (keeping every tombstone of each);
* publish ``{topic, recipients, encrypted_message_base64}`` to ``notify.notifications`` with the message's
  idempotency id as ``Nats-Msg-Id``, so a redelivered inbox message is not queued twice.

The inbox message is acked only after the notification is published (or the message is filtered out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from enclavekit.services.notify.errors import BadRequest
from enclavekit.services.notify.metrics import Metrics
from enclavekit.services.notify.queue import new_traceparent
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import NotifyStore
from enclavekit.services.notify.wire import MAX_MESSAGE_B64, MAX_QUEUED_RECIPIENTS, Notification, Recipient

__all__ = ["ChatMessage", "Ingestor", "message_id", "sender_hmac"]

logger = logging.getLogger(__name__)

TOPIC_PREFIXES = ("/xmtp/mls/1/g-", "/xmtp/mls/1/w-")


class ChatMessage(BaseModel):
    """One chat message as ingest sees it: ciphertext (``data_b64``) and routing metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: str = Field(min_length=1, max_length=256)
    data_b64: str = Field(min_length=1, max_length=MAX_MESSAGE_B64)
    sender_hmac: str = Field(default="", max_length=128, pattern=r"^[0-9a-fA-F]*$")
    should_push: bool = True
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")

    def data(self) -> bytes:
        try:
            return base64.b64decode(self.data_b64, validate=True)
        except binascii.Error as exc:
            raise BadRequest("data_b64 is not base64") from exc


def message_id(message: ChatMessage) -> str:
    """The idempotency id: the message's own, or a digest of its topic and data."""
    if message.id:
        return message.id
    return hashlib.sha256(message.topic.encode() + b"\x00" + message.data()).hexdigest()[:32]


def sender_hmac(hmac_key_hex: str, data: bytes) -> str:
    """What the sender attaches so its own subscription can be recognised without revealing it."""
    return hmac.new(bytes.fromhex(hmac_key_hex), data, hashlib.sha256).hexdigest()


Decision = Literal["queued", "filtered_topic", "should_not_push", "no_recipients"]


@dataclass
class Ingestor:
    settings: NotifySettings
    store: NotifyStore
    js: JetStreamContext
    metrics: Metrics
    page_size: int = 500

    def build(
        self, message: ChatMessage, *, now: float, connection: Connection | None = None
    ) -> tuple[Decision, Notification | None]:
        """Apply the filter rules; the notification to queue, if any (reads the database: call in a thread).

        The notification may hold more recipients than one queue message: :meth:`handle` queues it in parts."""
        if not message.topic.startswith(TOPIC_PREFIXES):
            return "filtered_topic", None
        if message.topic.startswith("/xmtp/mls/1/g-") and not message.should_push:
            return "should_not_push", None
        data = message.data()
        sender = message.sender_hmac.lower()
        recipients: dict[str, list[str]] = {}
        subscribers = self.store.all_for_topic(
            message.topic, now=int(now), page_size=self.page_size, connection=connection
        )
        for subscription in subscribers:
            if sender and hmac.compare_digest(sender_hmac(subscription.hmac_key, data), sender):
                continue
            tombstones = recipients.setdefault(subscription.encrypted_push_id, [])
            tombstones.extend(t for t in subscription.deletion_request if t not in tombstones)
        if not recipients:
            return "no_recipients", None
        kind = "v3-welcome" if message.topic.startswith("/xmtp/mls/1/w-") else "v3-conversation"
        notification = Notification(
            id=message_id(message),
            topic=message.topic,
            encrypted_message_base64=message.data_b64,
            message_kind=kind,
            recipients=tuple(
                Recipient(encrypted_push_id=push_id, deletion_requests=tuple(tombstones[-64:]))
                for push_id, tombstones in recipients.items()
            ),
            created_at=now,
        )
        return "queued", notification

    async def handle(self, message: ChatMessage, *, traceparent: str | None = None) -> Decision:
        """Filter one message and queue its notification (if any)."""
        decision, notification = await asyncio.to_thread(self.build, message, now=time.time())
        await self._queue(message, decision, notification, traceparent)
        return decision

    async def _queue(
        self, message: ChatMessage, decision: Decision, notification: Notification | None, traceparent: str | None
    ) -> None:
        self.metrics.ingested.labels(decision).inc()
        if notification is None:
            logger.debug("message on %s: %s", message.topic[:24], decision)
            return
        traceparent = traceparent or new_traceparent()
        recipients = notification.recipients
        for part, start in enumerate(range(0, len(recipients), MAX_QUEUED_RECIPIENTS)):
            chunk = notification
            if len(recipients) > MAX_QUEUED_RECIPIENTS:
                chunk = notification.model_copy(
                    update={"recipients": recipients[start : start + MAX_QUEUED_RECIPIENTS], "part": part}
                )
            headers = {"Nats-Msg-Id": f"{notification.id}.{part}", "traceparent": traceparent}
            await self.js.publish(self.settings.subject, chunk.to_bytes(), headers=headers)
        self.metrics.queued.inc()
        self.metrics.queued_recipients.inc(len(notification.recipients))
        logger.debug("message %s queued for %d recipients", notification.id, len(notification.recipients))

    def _build_all(self, batch: list[Any]) -> list[tuple[Any, ChatMessage | None, Decision, Notification | None]]:
        """Parse and filter a fetched batch in one go (one thread hop per batch; SQLite reads stay sequential)."""
        out: list[tuple[Any, ChatMessage | None, Decision, Notification | None]] = []
        now = time.time()
        with self.store.reading() as connection:
            for raw in batch:
                try:
                    message = ChatMessage.model_validate(json.loads(raw.data))
                    decision, notification = self.build(message, now=now, connection=connection)
                except (ValueError, BadRequest) as exc:
                    logger.warning("dropping a malformed inbox message: %s", type(exc).__name__)
                    out.append((raw, None, "filtered_topic", None))
                    continue
                out.append((raw, message, decision, notification))
        return out

    async def _finish(self, raw: Any, message: ChatMessage | None, decision: Decision, notification: Any) -> None:
        """Queue one prepared message and ack it (term a malformed one, nak on failure: it comes back)."""
        if message is None:
            await raw.term()
            return
        try:
            await self._queue(message, decision, notification, (raw.headers or {}).get("traceparent"))
        except Exception:
            logger.exception("ingest failed; the message will be redelivered")
            await raw.nak(delay=1)
            return
        await raw.ack()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume ``notify.inbox`` until ``stop``; ack each message once its notification is queued."""
        subscription = await self.js.pull_subscribe(
            self.settings.inbox_subject,
            durable=self.settings.ingest_consumer,
            stream=self.settings.inbox_stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1),
        )
        while not stop.is_set():
            try:
                batch = await subscription.fetch(64, timeout=0.5)
            except TimeoutError:
                continue
            except Exception as exc:  # a NATS hiccup: wait and poll again
                logger.warning("inbox fetch failed: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            try:
                prepared = await asyncio.to_thread(self._build_all, batch)
            except Exception:
                logger.exception("ingest failed (database?); the batch will be redelivered")
                for raw in batch:
                    await raw.nak(delay=1)
                continue
            await asyncio.gather(*(self._finish(*item) for item in prepared))  # publishes pipelined
