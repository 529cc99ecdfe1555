"""The vault enclave's per-user workers: started on demand, least recently used evicted under the bounds."""

from __future__ import annotations

from typing import Any, cast

import pytest

from enclavekit.services.vault.core import Unlocked
from enclavekit.services.vault.workers import SESSION_BYTES, SESSION_TTL, WORKER_BYTES, WorkerPool


def _unlocked(user: str) -> Unlocked:
    return cast(Unlocked, type("U", (), {"user": user})())


def test_workers_start_on_demand_and_the_least_recently_used_is_evicted() -> None:
    pool = WorkerPool(max_workers=3)
    for user in ("a", "b", "c"):
        pool.get(user)
    pool.get("a")  # a is now the most recently used: b is the oldest
    pool.get("d")
    assert "b" not in pool
    assert {"a", "c", "d"} == {u for u in ("a", "b", "c", "d") if u in pool}
    assert pool.evicted == 1


def test_an_evicted_worker_ends_its_sessions_so_the_next_operation_needs_the_pin() -> None:
    pool = WorkerPool(max_workers=1)
    token = pool.get("alice").open_session(_unlocked("alice"), now=0.0)
    assert pool.get("alice").session(token, now=1.0) is not None
    pool.get("bob")  # evicts alice
    assert pool.get("alice").session(token, now=2.0) is None


def test_a_busy_worker_is_never_evicted() -> None:
    pool = WorkerPool(max_workers=1)
    pool.get("alice").busy += 1
    pool.get("bob")
    assert "alice" in pool  # over the bound until alice's operation ends
    pool.peek("alice").busy -= 1  # type: ignore[union-attr]
    pool.get("carol")
    assert "alice" not in pool and "bob" not in pool and "carol" in pool


def test_the_memory_bound_counts_sessions_and_evicts_to_stay_within_it() -> None:
    pool = WorkerPool(max_bytes=2 * WORKER_BYTES + 2 * SESSION_BYTES)
    worker = pool.get("alice")
    worker.open_session(_unlocked("alice"), now=0.0)
    worker.open_session(_unlocked("alice"), now=0.0)
    assert pool.size == WORKER_BYTES + 2 * SESSION_BYTES
    pool.get("bob")
    assert pool.size == 2 * WORKER_BYTES + 2 * SESSION_BYTES and "alice" in pool
    pool.get("bob").open_session(_unlocked("bob"), now=0.0)  # over the bound: alice (least recent) goes
    assert "alice" not in pool and pool.size == WORKER_BYTES + SESSION_BYTES


def test_an_expired_session_is_refused_and_frees_its_memory() -> None:
    pool = WorkerPool()
    worker = pool.get("alice")
    token = worker.open_session(_unlocked("alice"), now=100.0)
    assert worker.session(token, now=100.0 + SESSION_TTL - 1) is not None
    assert worker.session(token, now=100.0 + SESSION_TTL + 1) is None
    assert pool.size == WORKER_BYTES


@pytest.mark.parametrize("token", [None, 7, "", "f" * 64, ["x"]])
def test_a_forged_session_token_opens_nothing(token: Any) -> None:
    pool = WorkerPool()
    pool.get("alice").open_session(_unlocked("alice"), now=0.0)
    assert pool.get("alice").session(token, now=0.0) is None


def test_stopping_a_worker_ends_its_sessions_at_once() -> None:
    pool = WorkerPool()
    token = pool.get("alice").open_session(_unlocked("alice"), now=0.0)
    pool.stop("alice")
    assert "alice" not in pool and pool.size == 0
    assert pool.get("alice").session(token, now=0.0) is None


def test_eviction_at_the_bound_costs_the_same_for_every_new_worker() -> None:
    pool = WorkerPool(max_bytes=1000 * WORKER_BYTES)
    for i in range(20_000):
        pool.get(f"user-{i}")
    assert len(pool) == 1000 and pool.evicted == 19_000 and pool.size == 1000 * WORKER_BYTES
    assert "user-18999" not in pool and "user-19000" in pool
