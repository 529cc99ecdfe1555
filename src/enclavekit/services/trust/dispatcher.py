"""The dispatcher: the loop that keeps the queue in step with the database (the reference's dbMonitor).

Every ``dispatch_interval`` seconds it

1. gives back tasks whose worker died (their lease ran out): ``pending`` again, or ``failed`` once out of
   attempts — so no task stays ``active`` forever;
2. creates a task for each target whose next check is due (24 h after a success, 30 min after a failure);
3. publishes pending tasks that are due and not on the queue yet (or were published long ago and never
   claimed). If NATS is down, they stay pending and go out on the first pass after it is back.

Several dispatchers may run at once (each step is a conditional update); one per web process is the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from enclavekit.errors import InfrastructureError
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.service import TrustService

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, service: TrustService, queue: TaskQueue) -> None:
        self.service = service
        self.queue = queue
        self.published = 0
        self.recovered = 0
        self.scheduled = 0

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.service.settings.dispatch_interval
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad pass (a database restart, say)
                logger.exception("dispatcher pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def tick(self) -> None:
        settings = self.service.settings
        store = self.service.store
        recovered = await asyncio.to_thread(
            store.recover_expired,
            max_attempts=settings.max_attempts,
            recheck_after_failure=settings.recheck_after_failure,
        )
        if recovered:
            self.recovered += len(recovered)
            logger.warning("recovered %d task(s) whose worker stopped answering: %s", len(recovered), recovered)
        scheduled = await asyncio.to_thread(store.schedule_due)
        if scheduled:
            self.scheduled += len(scheduled)
            logger.info("scheduled %d re-verification(s)", len(scheduled))
        due = await asyncio.to_thread(store.due_for_publish, republish_after=settings.republish_after)
        sent: list[str] = []
        for task_id in due:
            try:
                await self.queue.publish(task_id)
            except InfrastructureError as exc:
                logger.warning("cannot publish (%s); %d task(s) stay pending", exc.message, len(due) - len(sent))
                break
            sent.append(task_id)
        if sent:
            await asyncio.to_thread(store.mark_enqueued, sent)
            self.published += len(sent)
