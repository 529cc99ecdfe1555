"""The inference enclave's request workers: results, errors, cancellation and shutdown, on real threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from enclavekit.services.inference.request_workers import RequestWorkers


def test_a_call_runs_on_a_worker_thread_and_its_result_comes_back_on_the_loop() -> None:
    async def main() -> tuple[str, str]:
        workers = RequestWorkers(1, name="test-worker")
        try:
            return await workers.run(lambda: threading.current_thread().name), threading.current_thread().name
        finally:
            workers.close()

    worker_thread, loop_thread = asyncio.run(main())
    assert worker_thread == "test-worker-0"
    assert loop_thread != worker_thread


def test_an_exception_in_a_call_is_raised_to_the_awaiting_coroutine_and_the_worker_keeps_serving() -> None:
    def fails() -> None:
        raise ValueError("engine failed")

    async def main() -> int:
        workers = RequestWorkers(1, name="test-worker")
        try:
            with pytest.raises(ValueError, match="engine failed"):
                await workers.run(fails)
            return await workers.run(lambda: 7)
        finally:
            workers.close()

    assert asyncio.run(main()) == 7


def test_calls_run_in_arrival_order_on_one_worker_and_in_parallel_on_two() -> None:
    order: list[int] = []

    def step(index: int) -> int:
        time.sleep(0.05)
        order.append(index)
        return index

    async def run(count: int) -> tuple[list[int], float]:
        workers = RequestWorkers(count, name="test-worker")
        try:
            started = time.perf_counter()
            results = await asyncio.gather(*(workers.run(step, i) for i in range(4)))
            return list(results), time.perf_counter() - started
        finally:
            workers.close()

    results, one = asyncio.run(run(1))
    assert results == [0, 1, 2, 3] and order == [0, 1, 2, 3]
    order.clear()
    results, two = asyncio.run(run(2))
    assert results == [0, 1, 2, 3]
    assert one >= 0.2 and two < one  # 4 × 50 ms on one worker; two workers share them


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    ran: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        workers = RequestWorkers(1, name="test-worker")
        try:
            busy = workers.run(gate.wait, 5)
            skipped = workers.run(ran.append, "skipped")
            skipped.cancel()
            gate.set()
            await busy
            await workers.run(ran.append, "after")
        finally:
            workers.close()

    asyncio.run(main())
    assert ran == ["after"]


def test_a_call_running_when_its_awaiter_is_cancelled_finishes_and_is_dropped() -> None:
    gate = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        gate.wait(5)
        finished.set()
        return "dropped"

    async def main() -> str:
        workers = RequestWorkers(1, name="test-worker")
        try:
            running = workers.run(slow)
            await asyncio.sleep(0.05)
            running.cancel()
            gate.set()
            assert finished.wait(5)
            return await workers.run(lambda: "next")  # the dropped result did not break the worker or the loop
        finally:
            workers.close()

    assert asyncio.run(main()) == "next"


def test_closed_workers_refuse_calls_and_their_threads_end() -> None:
    async def main() -> RequestWorkers:
        workers = RequestWorkers(2, name="test-closing")
        await workers.run(lambda: None)
        workers.close()
        workers.close()  # twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            workers.run(lambda: None)
        return workers

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while any(t.name.startswith("test-closing") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("test-closing") for t in threading.enumerate())


def test_a_result_for_a_closed_loop_is_dropped_without_killing_the_worker() -> None:
    gate = threading.Event()
    workers = RequestWorkers(1, name="test-worker")
    try:

        async def leave_a_call_behind() -> None:
            workers.run(gate.wait, 5)

        asyncio.run(leave_a_call_behind())  # the loop closes while the call waits
        gate.set()

        async def next_call() -> int:
            return await workers.run(lambda: 3)

        assert asyncio.run(next_call()) == 3
    finally:
        workers.close()


def test_zero_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="worker count"):
        RequestWorkers(0, name="none")
