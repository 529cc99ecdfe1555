"""Workers: pull task ids from JetStream, verify, store the report, complete the task — exactly once.

A worker process runs ``concurrency`` loops. For each message it *claims* the task in the database (a lease of
``lease`` seconds, renewed by a heartbeat that also tells JetStream the message is in progress), fetches the
evidence (stored bytes, or fresh from the endpoint), obtains collateral at the edge, verifies in a thread under
the per-task timeout, writes the report object (``reports/<app>/<task>-<attempt>.json``) and completes the task
conditionally on still holding that attempt. A worker that dies mid-task leaves a lease that runs out; the task
goes to another worker (JetStream redelivery, or the dispatcher's recovery) and is completed once.

Failures: infrastructure errors (endpoint down, PCCS down, object store, timeout) are retried with exponential
backoff up to ``max_attempts``, then the task is ``failed`` (or, for a PCCS that stays down, ``completed`` with
the hardware phase in error); rejections (an endpoint that answers no evidence) fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.evidence import Evidence
from enclavekit.errors import Error, InfrastructureError
from enclavekit.services.trust.errors import TaskTimeout
from enclavekit.services.trust.fetch import CollateralProvider, FetcherRegistry
from enclavekit.services.trust.model import AppRecord, Source, TaskRecord
from enclavekit.services.trust.queue import Delivery, TaskQueue
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.store import Outcome
from enclavekit.services.trust.verification import (
    CollateralOutcome,
    TrustReport,
    VerificationInput,
    verify_target,
)

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    durations: list[float] = field(default_factory=list)


class Worker:
    """One worker process's task loops."""

    def __init__(
        self,
        service: TrustService,
        queue: TaskQueue,
        *,
        fetchers: FetcherRegistry | None = None,
        collateral: CollateralProvider | None = None,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        settings = service.settings
        self.service = service
        self.queue = queue
        self.fetchers = fetchers or FetcherRegistry(timeout=settings.fetch_timeout)
        self.collateral = collateral or CollateralProvider(settings.pccs_url, settings.collateral_cache)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.clock = clock
        self.stats = WorkerStats()

    @property
    def settings(self) -> TrustSettings:
        return self.service.settings

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and run tasks, ``concurrency`` at a time, until ``stop`` is set; tasks in hand are finished."""
        slots = asyncio.Semaphore(self.settings.concurrency)
        running: set[asyncio.Task[None]] = set()
        delay = 0.2
        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    deliveries = await self.queue.pull(batch=1, timeout=1.0)
                except InfrastructureError as exc:
                    slots.release()
                    logger.warning("queue unavailable (%s); retrying in %.1f s", exc.message, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                if not deliveries:
                    slots.release()
                    continue
                for index, delivery in enumerate(deliveries):
                    if index:
                        await slots.acquire()
                    task = asyncio.create_task(self._run_one(delivery, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            if running:  # tasks in hand are finished even when the puller is cancelled
                await asyncio.shield(asyncio.gather(*running, return_exceptions=True))

    async def _run_one(self, delivery: Delivery, slots: asyncio.Semaphore) -> None:
        try:
            await self.handle_delivery(delivery)
        except Exception:  # one task's surprise must not stop the worker
            logger.exception("task %s: unexpected error in the worker", delivery.task_id)
        finally:
            slots.release()

    async def handle_delivery(self, delivery: Delivery) -> None:
        if delivery.task_id is None:
            logger.warning("dropping a message that names no task")
            await delivery.ack()
            return
        try:
            await self.process(delivery.task_id, delivery)
        except InfrastructureError as exc:  # the database is down: let JetStream redeliver later
            logger.warning("task %s: %s; leaving it for redelivery", delivery.task_id, exc.message)
            await delivery.nak(delay=self.settings.backoff(1))
            return
        await delivery.ack()

    async def process(self, task_id: str, delivery: Delivery | None = None) -> bool:
        """Claim and run ``task_id``; False if it was not ours to run."""
        store = self.service.store
        try:
            task = await asyncio.to_thread(store.claim, task_id, self.worker_id, lease=self.settings.lease)
        except Exception as exc:
            raise InfrastructureError(f"cannot claim task {task_id}: {exc}") from exc
        if task is None:
            self.stats.skipped += 1
            return False
        self.stats.claimed += 1
        started = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(task, delivery))
        work = asyncio.create_task(self._verify(task))
        outcome_error: BaseException | None = None
        result: tuple[Outcome, TrustReport] | None = None
        try:
            done, _ = await asyncio.wait(
                {work, heartbeat}, timeout=self.settings.task_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                result = work.result()
            elif heartbeat in done:
                work.cancel()
                logger.warning("task %s: lost its lease (another worker has it); abandoning attempt", task.id)
                return False
            else:
                work.cancel()
                raise TaskTimeout(f"verification took longer than {self.settings.task_timeout:.0f} s")
        except BaseException as exc:
            outcome_error = exc
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        if outcome_error is not None:
            if isinstance(outcome_error, asyncio.CancelledError):
                raise outcome_error
            await self._failed(task, outcome_error)
            return True
        assert result is not None
        outcome, report = result
        if _infrastructure_problem(report) and task.attempts < self.settings.max_attempts:
            with contextlib.suppress(Exception):  # this attempt's report will not be referenced: drop it
                await asyncio.to_thread(self.service.objects.delete, outcome.result_key)
            await self._retry(task, "collateral_unavailable", report.error["message"] if report.error else "PCCS down")
            return True
        done_ok = await asyncio.to_thread(
            self.service.store.complete,
            task,
            outcome,
            recheck_after_success=self.settings.recheck_after_success,
            recheck_after_failure=self.settings.recheck_after_failure,
        )
        if done_ok:
            self.stats.completed += 1
            self.stats.durations.append(time.monotonic() - started)
            logger.info(
                "task %s app %s: %s (%s) in %.2f s, attempt %d",
                task.id,
                task.app_id,
                outcome.verdict,
                report.evidence_kind,
                time.monotonic() - started,
                task.attempts,
            )
        else:
            logger.warning("task %s: attempt %d was superseded; its result is dropped", task.id, task.attempts)
        return True

    async def _heartbeat(self, task: TaskRecord, delivery: Delivery | None) -> None:
        interval = max(0.05, self.settings.lease / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                ours = await asyncio.to_thread(self.service.store.heartbeat, task, lease=self.settings.lease)
            except Exception:  # a database hiccup: try again next beat, the lease has margin
                logger.warning("task %s: heartbeat failed", task.id, exc_info=True)
                continue
            if not ours:
                return
            if delivery is not None:
                await delivery.in_progress()

    async def _verify(self, task: TaskRecord) -> tuple[Outcome, TrustReport]:
        service = self.service
        app = await asyncio.to_thread(service.store.get_app, task.app_id)
        evidence, evidence_key, nonce = await self._evidence(app)
        compose = await asyncio.to_thread(service.objects.get, app.compose_key) if app.compose_key else None
        now = self.clock()
        if app.collateral_key is not None:
            raw = await asyncio.to_thread(service.objects.get, app.collateral_key)
            collateral = CollateralOutcome(Collateral.from_json(raw), "uploaded with the evidence")
        else:
            collateral = await asyncio.to_thread(self.collateral.obtain, evidence, at=app.options.at, now=now)
        data = VerificationInput(
            evidence=evidence,
            options=app.options,
            kind=app.kind,
            compose=compose,
            collateral=collateral,
            nonce=nonce,
            simulator_roots=service.simulator_roots,
            registry=service.registry,
        )
        report = await asyncio.to_thread(verify_target, data, now=now)
        document = report.to_json()
        document["task_id"] = task.id
        document["app_id"] = task.app_id
        document["attempt"] = task.attempts
        document["ear_token"] = service.signer.sign(report.ear)
        key = f"reports/{_key_part(task.app_id)}/{task.id}-{task.attempts}.json"
        payload = json.dumps(document, indent=1).encode()
        await asyncio.to_thread(service.objects.put, key, payload, content_type="application/json")
        outcome = Outcome(
            verdict=report.verdict,
            valid=report.valid,
            result_bucket=service.objects.bucket,
            result_key=key,
            evidence_key=evidence_key,
            summary=report.summary(),
            error_code=None if report.error is None else report.error.get("code"),
            error_message=None if report.error is None else report.error.get("message"),
            tee=report.tee if report.tee in ("nitro", "tdx", "sgx") else None,
            subject=report.subject if app.source is Source.ENDPOINT else None,
            os_name=report.os_name,
        )
        return outcome, report

    async def _evidence(self, app: AppRecord) -> tuple[Evidence, str | None, bytes | None]:
        """The evidence to verify, parsed once here (stored bytes, or fresh from the endpoint)."""
        service = self.service
        if app.source is Source.UPLOAD:
            assert app.evidence_key is not None
            stored = await asyncio.to_thread(service.objects.get, app.evidence_key)
            return Evidence.from_bytes(stored), app.evidence_key, None
        assert app.endpoint_url is not None
        nonce = secrets.token_bytes(32) if app.options.nonce else None
        fetched = await self.fetchers.fetch(app.endpoint_url, nonce=nonce)
        evidence = Evidence.from_bytes(fetched.data)
        key = f"evidence/{evidence.sha256}"
        if not await asyncio.to_thread(service.objects.exists, key):
            await asyncio.to_thread(service.objects.put, key, fetched.data)
        return evidence, key, nonce

    async def _retry(self, task: TaskRecord, code: str, message: str) -> None:
        delay = self.settings.backoff(task.attempts)
        not_before = self.clock() + timedelta(seconds=delay)
        if await asyncio.to_thread(
            self.service.store.retry_later, task, code=code, message=message, not_before=not_before
        ):
            self.stats.retried += 1
            logger.info("task %s: attempt %d: %s; retrying in %.1f s", task.id, task.attempts, message, delay)

    async def _failed(self, task: TaskRecord, exc: BaseException) -> None:
        if isinstance(exc, Error):
            code, message, retryable = exc.code, exc.message, exc.retryable
        else:
            logger.error("task %s: unexpected error", task.id, exc_info=exc)
            code, message, retryable = "internal", f"internal error ({type(exc).__name__})", True
        if retryable and task.attempts < self.settings.max_attempts:
            await self._retry(task, code, message)
            return
        if await asyncio.to_thread(
            self.service.store.fail,
            task,
            code=code,
            message=message,
            recheck_after_failure=self.settings.recheck_after_failure,
        ):
            self.stats.failed += 1
            logger.info("task %s: failed after %d attempt(s): %s: %s", task.id, task.attempts, code, message)


def _infrastructure_problem(report: TrustReport) -> bool:
    return any(check.status == "error" and check.code == "collateral_unavailable" for check in report.checks)


def _key_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())[:64] or "app"
