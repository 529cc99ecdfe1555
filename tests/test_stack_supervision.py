"""``enclavekit up``'s supervisor, in process, with small real child processes: restart with the same argv and
addresses, backoff, a clear message for a piece that keeps dying, and a stop that notices exits at once."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enclavekit.backoff import exponential_backoff
from enclavekit.stack.processes import ManagedProcess, RestartPolicy, RestartTracker, describe_status
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import ServiceSpec, Stack

FAST = RestartPolicy(base=0.05, cap=0.2, jitter=0.25, stable_after=30.0, burst=3, window=30.0)


def _child(body: str) -> Callable[[Stack, int], list[str]]:
    """A child that announces itself ready (with its port and argv) and then runs ``body``."""
    code = (
        "import json, sys, time\n"
        "print(json.dumps({'ready': True, 'url': f'http://127.0.0.1:{sys.argv[1]}', 'argv': sys.argv[1:]}),"
        " flush=True)\n" + body
    )
    return lambda stack, port: [sys.executable, "-c", code, str(port)]


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- the policy (sans-I/O) -------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    delays = [exponential_backoff(n, base=0.5, cap=30.0) for n in range(1, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == 30.0
    assert exponential_backoff(10**6, base=0.5, cap=30.0, factor=4) == 30.0  # no OverflowError
    assert exponential_backoff(0, base=0.5, cap=30.0) == 0.5


def test_backoff_jitter_stays_within_its_fraction() -> None:
    assert exponential_backoff(3, base=1.0, cap=60.0, jitter=0.25, rng=lambda: 0.0) == 4.0
    assert exponential_backoff(3, base=1.0, cap=60.0, jitter=0.25, rng=lambda: 0.999999) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="jitter"):
        exponential_backoff(1, base=1.0, cap=2.0, jitter=1.5)


def test_services_backoff_settings_keep_their_schedules() -> None:
    from enclavekit.services.notify.settings import NotifySettings
    from enclavekit.services.trust.settings import TrustSettings

    notify = NotifySettings(backoff_base=1.0, backoff_max=60.0)
    assert [notify.backoff(n) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 60.0]
    trust = TrustSettings(state_dir=Path("/nonexistent"), backoff_base=2.0, backoff_max=300.0)
    assert [trust.backoff(n) for n in (1, 2, 3, 5)] == [2.0, 8.0, 32.0, 300.0]


def test_a_piece_that_ran_long_enough_restarts_from_the_base_delay() -> None:
    tracker = RestartTracker(RestartPolicy(base=1.0, cap=30.0, jitter=0.0, stable_after=10.0), rng=lambda: 0.0)
    tracker.started(0.0)
    assert [tracker.exited(t).delay for t in (1.0, 2.0, 3.0)] == [1.0, 2.0, 4.0]
    tracker.started(3.0)
    assert tracker.exited(20.0).delay == 1.0


def test_a_piece_that_keeps_dying_is_flagged_only_for_exits_within_the_window() -> None:
    tracker = RestartTracker(RestartPolicy(burst=3, window=60.0, stable_after=1000.0))
    tracker.started(0.0)
    assert [tracker.exited(t).flapping for t in (1.0, 2.0, 3.0)] == [False, False, True]
    spread = RestartTracker(RestartPolicy(burst=3, window=60.0))
    spread.started(0.0)
    assert not any(spread.exited(t).flapping for t in (0.0, 100.0, 200.0, 300.0))


def test_exit_status_is_described_for_people() -> None:
    assert describe_status(3) == "status 3"
    assert describe_status(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_status(-200) == "killed by signal 200"


# --- real children ---------------------------------------------------------------------------------------------


async def _supervised(
    tmp_path: Path, specs: list[ServiceSpec]
) -> tuple[Stack, asyncio.Event, asyncio.Task[None], list[dict[str, Any]]]:
    stack = Stack(StateDir(tmp_path / "state"), restart_policy=FAST)
    stack.state.create()
    for spec in specs:
        await stack.start_service(spec)
    snapshots: list[dict[str, Any]] = []
    stopping = asyncio.Event()

    def changed() -> None:
        stack.state.write_stack(stack.snapshot())
        snapshots.append(json.loads(stack.state.stack_file.read_text()))

    task = asyncio.create_task(stack.supervise(stopping, changed))
    return stack, stopping, task, snapshots


async def test_a_killed_piece_comes_back_with_the_same_argv_and_port_and_stack_json_names_its_new_pid(
    tmp_path: Path,
) -> None:
    stack, stopping, task, snapshots = await _supervised(
        tmp_path, [ServiceSpec("steady", _child("time.sleep(120)")), ServiceSpec("victim", _child("time.sleep(120)"))]
    )
    try:
        victim, steady = stack.processes[1], stack.processes[0]
        before = dict(stack.services["victim"])
        first_pid, first_argv = victim.pid, list(victim.argv)
        os.kill(first_pid, signal.SIGKILL)
        await _until(lambda: victim.running and victim.pid != first_pid and victim.restarts == 1)
        after = stack.services["victim"]
        assert after["pid"] == victim.pid != first_pid
        assert after["url"] == before["url"]  # same port: clients reconnect to the same address
        assert after["restarts"] == 1 and after["last_exit"] == "killed by SIGKILL"
        assert victim.ready_info["argv"] == first_argv[3:]  # the child itself saw the same argv
        assert snapshots[-1]["services"]["victim"]["pid"] == victim.pid  # stack.json was rewritten
        assert stack.services["steady"]["pid"] == steady.pid and "restarts" not in stack.services["steady"]
    finally:
        stopping.set()
        await task
        await stack.stop()


async def test_a_piece_that_keeps_dying_is_named_with_its_status_and_log_while_the_rest_keeps_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, stopping, task, _ = await _supervised(
        tmp_path,
        [
            ServiceSpec("steady", _child("time.sleep(120)")),
            ServiceSpec("crashy", _child("time.sleep(0.3); sys.exit(3)")),
        ],
    )
    try:
        steady = stack.processes[0]
        steady_pid = steady.pid
        seen = ""

        def flagged() -> bool:
            nonlocal seen
            seen += capsys.readouterr().err
            return "keeps dying" in seen

        await _until(flagged, timeout=30)
        line = next(line for line in seen.splitlines() if "keeps dying" in line)
        assert "crashy" in line and "status 3" in line and str(stack.state.logs / "crashy.log") in line
        assert steady.running and steady.pid == steady_pid  # the rest of the stack is untouched
        crashy = stack.processes[1]
        restarts = crashy.restarts
        await _until(lambda: crashy.restarts > restarts, timeout=10)  # and it is still being retried
    finally:
        stopping.set()
        await task
        await stack.stop()


async def test_stop_during_a_backoff_does_not_restart_the_piece(tmp_path: Path) -> None:
    stack = Stack(StateDir(tmp_path / "state"), restart_policy=RestartPolicy(base=5.0, jitter=0.0))
    stack.state.create()
    await stack.start_service(ServiceSpec("victim", _child("time.sleep(120)")))
    stopping = asyncio.Event()
    task = asyncio.create_task(stack.supervise(stopping, lambda: None))
    victim = stack.processes[0]
    pid = victim.pid
    os.kill(pid, signal.SIGKILL)
    await _until(lambda: not victim.running)
    stopping.set()
    await asyncio.wait_for(task, 2)
    assert victim.pid == pid and not victim.running and victim.restarts == 0
    await stack.stop()


async def test_stop_notices_a_child_that_already_exited_even_while_a_grandchild_holds_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio's Process.wait() answers only once the child's pipes close: a child that had exited looked alive,
    and Ctrl-C waited 5 s for it and warned that it "ignored SIGTERM"."""
    grandchild_pid_file = tmp_path / "grandchild.pid"
    script = (
        f"sleep 30 & echo $! > {grandchild_pid_file}; echo '{{\"ready\": true}}'; "
        "trap 'exit 0' TERM; while true; do sleep 0.05; done"
    )
    process = ManagedProcess("holder", ["sh", "-c", script], tmp_path / "logs")
    await process.start()
    grandchild = int(grandchild_pid_file.read_text())
    try:
        os.kill(process.pid, signal.SIGKILL)
        started = time.monotonic()
        await asyncio.wait_for(process.wait(), 2)  # noticed while the grandchild still holds stdout
        assert _alive(grandchild)
        with caplog.at_level(logging.WARNING):
            await process.stop(timeout=5.0)
        assert time.monotonic() - started < 3
        assert "ignored SIGTERM" not in caplog.text
    finally:
        os.kill(grandchild, signal.SIGKILL)
