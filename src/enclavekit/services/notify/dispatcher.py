"""The dispatcher (the reference's enclave-worker): queue → batches → the enclave, with per-outcome acks.

For each notification: split the recipients into batches (default 50), call the enclave's ``notification``
route for the batches concurrently, each under a timeout, and sort every recipient's outcome:

* delivered, duplicate → done; invalid push ID, provider rejection → failed for good (counted, not retried);
* tombstoned → done, and the subscription row is deleted (its owner asked, in plaintext only the enclave saw);
* retry (the provider kept answering 429/5xx), or the batch call failed (enclave down, timeout) → retried.

The queue message is acked only when every recipient is done or failed for good. Otherwise what is left is
published again as a new message (same batches, ``attempt + 1``, not before a backoff; ``Nats-Msg-Id``
``ID#attempt`` so a repeat publish is dropped) and then the original is acked; after ``max_attempts`` the
rest goes to the dead-letter subject instead. A dispatcher that dies mid-message leaves it unacked: JetStream
redelivers it after ``ack_wait`` (kept alive by in-progress acks while we work), and the repeat reaches the
provider with the same idempotency keys, so nobody gets the same message twice.

The enclave is reached over the attested RPC (several enclaves of a track: round robin, failing over); the
host holds no key and sees only sealed push IDs and outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.services.notify.enclave_link import initialize_enclave
from enclavekit.services.notify.errors import NotInitialized
from enclavekit.services.notify.metrics import Metrics
from enclavekit.services.notify.queue import child_traceparent, trace_id
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import NotifyStore
from enclavekit.services.notify.wire import NOTIFICATION, Notification, NotificationBatch, Recipient

__all__ = ["Dispatcher", "Summary", "split_batches"]

logger = logging.getLogger(__name__)


def split_batches(notification: Notification, size: int) -> list[tuple[Recipient, ...]]:
    """The recipient batches: those recorded in the notification (a retry), else chunks of ``size``."""
    recipients = notification.recipients
    if notification.batches and sum(notification.batches) == len(recipients):
        out, start = [], 0
        for count in notification.batches:
            out.append(recipients[start : start + count])
            start += count
        return out
    return [recipients[i : i + size] for i in range(0, len(recipients), size)]


@dataclass
class Summary:
    """What became of one queue message's recipients."""

    delivered: int = 0
    failed: int = 0
    tombstoned: list[str] = field(default_factory=list)
    retry: list[tuple[Recipient, ...]] = field(default_factory=list)


@dataclass
class Dispatcher:
    settings: NotifySettings
    store: NotifyStore
    js: JetStreamContext
    enclaves: Sequence[AttestedClient]
    metrics: Metrics
    _next: Any = None
    _slots: asyncio.Semaphore | None = None
    _working: dict[int, list[Any]] = field(default_factory=dict)
    """Messages being worked on: ``id(raw)`` → ``[raw, when JetStream last heard of it]`` (see _keep_alive)."""

    def __post_init__(self) -> None:
        self._next = itertools.cycle(range(len(self.enclaves)))
        self._slots = asyncio.Semaphore(self.settings.concurrency)

    # --- one batch -------------------------------------------------------------------------------------------

    async def _call(self, batch: NotificationBatch) -> Any:
        """Call the enclave; on a broken link try the next member; initialise an enclave that restarted."""
        last: Error | None = None
        for _ in range(len(self.enclaves)):
            client = self.enclaves[next(self._next)]
            try:
                try:
                    return await client.call(NOTIFICATION, batch, timeout=self.settings.enclave_timeout)
                except NotInitialized:
                    await initialize_enclave(client, self.settings)
                    return await client.call(NOTIFICATION, batch, timeout=self.settings.enclave_timeout)
            except Error as exc:
                if not exc.retryable and not isinstance(exc, NotInitialized):
                    raise
                last = exc
                logger.warning("enclave %s failed (%s); trying another", client.endpoint, exc.code)
        assert last is not None
        raise last

    async def _batch(self, notification: Notification, batch: tuple[Recipient, ...], traceparent: str) -> Summary:
        summary = Summary()
        request = NotificationBatch(
            message_id=notification.id,
            topic=notification.topic,
            encrypted_message_base64=notification.encrypted_message_base64,
            message_kind=notification.message_kind,
            recipients=batch,
            traceparent=child_traceparent(traceparent),
        )
        assert self._slots is not None
        started = time.perf_counter()
        async with self._slots:
            try:
                result = await self._call(request)
            except Error as exc:
                self.metrics.enclave_calls.labels(exc.code).inc()
                logger.warning("batch of %d for %s failed: %s", len(batch), notification.id, exc.code)
                summary.retry.append(batch)
                return summary
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.enclave_calls.labels("ok").inc()
        again: list[Recipient] = []
        for outcome in result.outcomes:
            recipient = batch[outcome.index]
            if outcome.outcome in ("delivered", "duplicate"):
                summary.delivered += 1
            elif outcome.outcome == "tombstoned":
                summary.tombstoned.append(recipient.encrypted_push_id)
            elif outcome.outcome == "retry":
                again.append(recipient)
            else:
                summary.failed += 1
                self.metrics.failed.labels(outcome.outcome).inc()
        if again:
            summary.retry.append(tuple(again))
        return summary

    # --- one queue message -----------------------------------------------------------------------------------

    async def process(self, notification: Notification, traceparent: str) -> Summary:
        """Deliver every batch; delete tombstoned rows; returns what is left to retry."""
        batches = split_batches(notification, self.settings.batch_size)
        if len(batches) == 1:  # the common case: no task to gather
            parts = [await self._batch(notification, batches[0], traceparent)]
        else:
            parts = await asyncio.gather(*(self._batch(notification, b, traceparent) for b in batches))
        total = Summary()
        for part in parts:
            total.delivered += part.delivered
            total.failed += part.failed
            total.tombstoned += part.tombstoned
            total.retry += part.retry
        if total.tombstoned:
            removed = await asyncio.to_thread(self.store.delete_for_push_ids, notification.topic, total.tombstoned)
            self.metrics.tombstones.inc(removed)
        self.metrics.delivered.inc(total.delivered)
        return total

    async def handle(self, raw: Any) -> None:
        try:
            notification = Notification.from_bytes(raw.data)
        except ValueError:
            logger.error("dropping a malformed notification")
            await raw.term()
            return
        now = time.time()
        if notification.not_before > now:
            await raw.nak(delay=notification.not_before - now)
            return
        traceparent = (raw.headers or {}).get("traceparent") or ""
        self._working[id(raw)] = [raw, time.monotonic()]
        try:
            summary = await self.process(notification, traceparent)
        finally:
            del self._working[id(raw)]
        if summary.retry:
            await self._retry_later(notification, summary, traceparent)
        else:
            self.metrics.latency.observe(max(0.0, time.time() - notification.created_at))
        await raw.ack()
        logger.debug(
            "notification %s attempt %d: %d delivered, %d failed, %d tombstoned, %d to retry (trace %s)",
            notification.id,
            notification.attempt + 1,
            summary.delivered,
            summary.failed,
            len(summary.tombstoned),
            sum(len(b) for b in summary.retry),
            trace_id(traceparent),
        )

    async def _retry_later(self, notification: Notification, summary: Summary, traceparent: str) -> None:
        attempt = notification.attempt + 1
        rest = tuple(r for batch in summary.retry for r in batch)
        remainder = notification.model_copy(
            update={
                "recipients": rest,
                "batches": tuple(len(b) for b in summary.retry),
                "attempt": attempt,
                "not_before": time.time() + self.settings.backoff(attempt),
            }
        )
        headers = {"Nats-Msg-Id": f"{notification.id}.{notification.part}#{attempt}", "traceparent": traceparent}
        if attempt >= self.settings.max_attempts:
            await self.js.publish(self.settings.dead_letter_subject, remainder.to_bytes(), headers=headers)
            self.metrics.dead_lettered.inc()
            self.metrics.failed.labels("dead_lettered").inc(len(rest))
            logger.warning("notification %s dead-lettered with %d recipients", notification.id, len(rest))
        else:
            await self.js.publish(self.settings.subject, remainder.to_bytes(), headers=headers)
            self.metrics.retried.inc(len(rest))

    async def _keep_alive(self) -> None:
        """Tell JetStream "still working" for every message in work for a third of ``ack_wait``.

        One loop for all of them (a task and a timer per message cost the dispatcher more than its RPC did at
        1,000 messages/s); a message hears from us at the latest half an ``ack_wait`` after it was last touched,
        so a slow enclave or provider never gets it redelivered to a second dispatcher while we work on it.
        """
        period = max(0.25, self.settings.ack_wait / 6)
        while True:
            await asyncio.sleep(period)
            due = time.monotonic() - self.settings.ack_wait / 3
            for entry in [e for e in self._working.values() if e[1] <= due]:
                entry[1] = time.monotonic()
                with contextlib.suppress(Exception):
                    await entry[0].in_progress()

    # --- the loop --------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        subscription = await self.js.pull_subscribe(
            self.settings.subject,
            durable=self.settings.dispatcher_consumer,
            stream=self.settings.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.ack_wait,
                max_deliver=-1,
                max_ack_pending=self.settings.max_in_flight * 4,
            ),
        )
        in_flight: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(self.settings.max_in_flight)
        keeper = asyncio.create_task(self._keep_alive())
        try:
            await self._fetch_loop(subscription, stop, in_flight, room)
        finally:
            if in_flight:
                await asyncio.wait(in_flight, timeout=10)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _fetch_loop(
        self, subscription: Any, stop: asyncio.Event, in_flight: set[asyncio.Task[None]], room: asyncio.Semaphore
    ) -> None:
        while not stop.is_set():
            free = max(1, min(64, self.settings.max_in_flight - len(in_flight)))
            try:
                batch = await subscription.fetch(free, timeout=0.5)
            except TimeoutError:
                continue
            except Exception as exc:
                logger.warning("fetch failed: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for raw in batch:
                await room.acquire()
                task = asyncio.create_task(self._guarded(raw))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: room.release())

    async def _guarded(self, raw: Any) -> None:
        try:
            await self.handle(raw)
        except Exception:
            logger.exception("dispatch failed; the message will be redelivered")
            with contextlib.suppress(Exception):
                await raw.nak(delay=self.settings.backoff_base)
