"""One worker per user inside the vault enclave: started on demand, evicted least-recently-used under a memory bound.

A :class:`VaultWorker` holds what the enclave keeps in memory for one user between operations — the sessions a
PIN check opened (each with the user's unlocked keys) — and counts the operations it is running. One user's state is
never reachable from another's worker (the reference ran a process per user for the same isolation; here the
boundary is the object, and the enclave is the process); a user's operations on the ledger are serialised by the
ledger's per-user lock (:mod:`~enclavekit.services.vault.core`), so users never wait on each other.

:class:`WorkerPool` bounds them: at most ``max_workers`` workers and ``max_bytes`` of estimated memory. When a new
worker would exceed either, the least recently used idle workers are evicted: their sessions end and their keys are
dropped (the next operation needs the PIN again — never a weaker check). A worker in the middle of an operation is
never evicted. Time is injected (``now``), so eviction and expiry are tested without sleeping.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from enclavekit.services.vault.core import Unlocked

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_WORKERS",
    "SESSION_BYTES",
    "SESSION_TTL",
    "WORKER_BYTES",
    "VaultWorker",
    "WorkerPool",
]

SESSION_TTL: Final = 300.0
"""Seconds a session (opened by a PIN check) stays valid."""
MAX_SESSIONS_PER_WORKER: Final = 16
"""A user's open sessions (devices, CLI runs); the oldest ends when a new one would exceed it."""
WORKER_BYTES: Final = 2048
"""Memory counted for an idle worker: tracemalloc measured 358 bytes (CPython 3.11, 10,000 workers); counted high."""
SESSION_BYTES: Final = 1024
"""Memory counted for one session: tracemalloc measured 703 bytes for the token and the unlocked keys, plus the
ledger entry the session shares with the worker's last unlock; counted high."""
DEFAULT_MAX_WORKERS: Final = 100_000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024


@dataclass(eq=False)
class VaultWorker:
    """One user's worker: its sessions and its running operations."""

    user: str
    sessions: OrderedDict[str, tuple[Unlocked, float]] = field(default_factory=OrderedDict)
    busy: int = 0
    """Operations of this user running now: a busy worker is never evicted."""
    pool: WorkerPool | None = None

    @property
    def size(self) -> int:
        return WORKER_BYTES + SESSION_BYTES * len(self.sessions)

    def _resized(self, before: int) -> None:
        if self.pool is not None:
            self.pool.resized(self.size - before, keep=self.user)

    def open_session(self, unlocked: Unlocked, now: float) -> str:
        before = self.size
        token = secrets.token_hex(32)
        self.sessions[token] = (unlocked, now + SESSION_TTL)
        while len(self.sessions) > MAX_SESSIONS_PER_WORKER:
            self.sessions.popitem(last=False)
        self._resized(before)
        return token

    def session(self, token: object, now: float) -> Unlocked | None:
        """The unlocked vault of a live session, else None (an expired one is dropped)."""
        held = self.sessions.get(token) if isinstance(token, str) else None
        if held is None:
            return None
        if held[1] < now:
            before = self.size
            del self.sessions[token]  # type: ignore[arg-type]
            self._resized(before)
            return None
        return held[0]

    def end_sessions(self) -> None:
        before = self.size
        self.sessions.clear()
        self._resized(before)


@dataclass
class WorkerPool:
    """The enclave's workers, least recently used first, within ``max_workers`` and ``max_bytes``."""

    max_workers: int = DEFAULT_MAX_WORKERS
    max_bytes: int = DEFAULT_MAX_BYTES
    evicted: int = 0
    _workers: OrderedDict[str, VaultWorker] = field(default_factory=OrderedDict)
    _bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_workers < 1 or self.max_bytes < WORKER_BYTES:
            raise ValueError("a worker pool holds at least one worker")

    def __len__(self) -> int:
        return len(self._workers)

    def __contains__(self, user: object) -> bool:
        return user in self._workers

    @property
    def size(self) -> int:
        """Estimated bytes held by all workers."""
        return self._bytes

    def resized(self, delta: int, *, keep: str | None = None) -> None:
        self._bytes += delta
        if delta > 0:
            self.trim(keep=keep)

    def peek(self, user: str) -> VaultWorker | None:
        """The user's worker if it is running (does not start one or change the order)."""
        return self._workers.get(user)

    def get(self, user: str) -> VaultWorker:
        """The user's worker, started if needed, now the most recently used; evicts others to stay in bounds."""
        worker = self._workers.get(user)
        if worker is None:
            worker = self._workers[user] = VaultWorker(user, pool=self)
            self._bytes += worker.size
        self._workers.move_to_end(user)
        self.trim(keep=user)
        return worker

    def _over(self) -> bool:
        return len(self._workers) > self.max_workers or self._bytes > self.max_bytes

    def trim(self, keep: str | None = None) -> None:
        """Evict least recently used idle workers until both bounds hold (``keep`` and busy workers stay: a busy
        one counts as just used). Each eviction looks at the front of the order only: O(1) per worker evicted."""
        for _ in range(len(self._workers)):
            if not self._over():
                return
            user, worker = next(iter(self._workers.items()))
            if user == keep or worker.busy:
                self._workers.move_to_end(user)
                continue
            self._drop(user)
            self.evicted += 1

    def _drop(self, user: str) -> None:
        worker = self._workers.pop(user)
        worker.end_sessions()
        worker.pool = None
        self._bytes -= worker.size

    def stop(self, user: str) -> None:
        """End the user's worker now (its sessions and keys), e.g. when the vault locks."""
        if user in self._workers:
            self._drop(user)
