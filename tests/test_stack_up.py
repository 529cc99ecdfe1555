"""``enclavekit up`` as a user runs it: a real process tree, stack.json, status, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "enclavekit.cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 150) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"enclavekit up exited early: {process.stderr.read() if process.stderr else ''!r}")
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.1)
    raise AssertionError("stack.json never appeared")


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, object]]]:
    state = tmp_path / "state"
    process = subprocess.Popen([*CLI, "up", "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stack = _wait_for(state / "stack.json", process)
        yield process, state, stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _pids(stack: dict[str, object]) -> list[int]:
    services = stack["services"]
    enclaves = stack["enclaves"]
    assert isinstance(services, dict)
    assert isinstance(enclaves, list)
    return [s["pid"] for s in services.values()] + [e["pid"] for e in enclaves]


def test_up_writes_the_stack_contract_and_status_reports_it_live(
    running_stack: tuple[subprocess.Popen[bytes], Path, dict[str, object]],
) -> None:
    process, state, stack = running_stack
    assert stack["pid"] == process.pid
    services = stack["services"]
    assert isinstance(services, dict)
    assert services["nats"]["url"].startswith("nats://127.0.0.1:")
    assert services["kms"]["url"].startswith("https://127.0.0.1:")  # its CA is pinned by the enclaves
    assert services["relay_demo"]["url"].startswith("tcp://127.0.0.1:")
    names = [e["name"] for e in stack["enclaves"]]  # type: ignore[attr-defined]
    assert names[0] == "demo" and sorted(names[1:4]) == ["vault-1", "vault-2", "vault-3"]
    assert names[4:] == ["notify", "inference"]
    for name in (
        "notify_api",
        "notify_ingest",
        "notify_dispatcher",
        "inference_gateway",
        "trust_web",
        "vault_bridge",
        "vault_objects",
    ):
        assert services[name]["url"], name
    for enclave in stack["enclaves"]:  # type: ignore[attr-defined]
        assert set(enclave) >= {"name", "app", "pid", "address", "pcr0"}
        argv = Path(f"/proc/{enclave['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[1:4] == [b"-m", b"enclavekit.enclave", enclave["app"].encode()], "not the minimal entry point"
    status = subprocess.run(
        [*CLI, "status", "--state", str(state), "--json"], capture_output=True, text=True, check=True
    )
    live = json.loads(status.stdout)
    assert live["running"] is True
    assert all(s["alive"] for s in live["services"].values())


def test_up_and_status_print_each_enclaves_whole_pcr0_for_pinning(
    running_stack: tuple[subprocess.Popen[bytes], Path, dict[str, object]],
) -> None:
    """The README tells users to pin the PCR0 the stack printed: all 96 hex digits, on one line, never cut."""
    process, state, stack = running_stack
    pcr0s = {e["name"]: e["pcr0"] for e in stack["enclaves"]}  # type: ignore[attr-defined]
    assert all(len(value) == 96 for value in pcr0s.values())
    printed: list[str] = []

    def read_until_ready() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            printed.append(raw.decode())
            if "Ctrl-C" in printed[-1]:
                return

    reader = threading.Thread(target=read_until_ready, daemon=True)
    reader.start()
    reader.join(60)
    status = subprocess.run(
        [*CLI, "status", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "60"},
    )
    for output in ("".join(printed), status.stdout):
        for name, value in pcr0s.items():
            assert f"PCR0 of enclave {name}: {value}\n" in output, output


def test_status_from_another_folder_says_where_it_looked_and_where_the_stack_is(
    running_stack: tuple[subprocess.Popen[bytes], Path, dict[str, object]],
) -> None:
    """``--state`` is relative to the current directory: run from a sub-folder (``docs/``), say so and name
    the running stack's folder found above it."""
    _, state, _ = running_stack
    elsewhere = state.parent / "docs"
    elsewhere.mkdir()
    status = subprocess.run([*CLI, "status", "--state", state.name], capture_output=True, text=True, cwd=elsewhere)
    assert status.returncode == 1
    assert f"no stack is running with state folder {elsewhere / state.name}" in status.stderr
    assert f"a stack is running in {state}: pass --state {state}" in status.stderr
    lost = subprocess.run([*CLI, "status", "--state", "nowhere"], capture_output=True, text=True, cwd=elsewhere)
    assert lost.returncode == 1
    assert f"relative to the current directory, {elsewhere}" in lost.stderr and "--state DIR" in lost.stderr


def test_second_up_on_the_same_state_folder_refuses_clearly(
    running_stack: tuple[subprocess.Popen[bytes], Path, dict[str, object]],
) -> None:
    process, state, _ = running_stack
    second = subprocess.run([*CLI, "up", "--state", str(state)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert f"pid {process.pid}" in second.stderr
    assert process.poll() is None, "the first stack must keep running"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_everything_and_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen([*CLI, "up", "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stack = _wait_for(state / "stack.json", process)
    children = _pids(stack)
    assert children
    process.send_signal(sig)
    assert process.wait(30) == 0
    assert not (state / "stack.json").exists()
    deadline = time.monotonic() + 30  # a deadline, not a wait: a loaded 2-core machine needs more than 10 s
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]
    status = subprocess.run([*CLI, "status", "--state", str(state)], capture_output=True, text=True)
    assert status.returncode == 1


def test_killed_supervisor_takes_its_children_with_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen([*CLI, "up", "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children = _pids(_wait_for(state / "stack.json", process))
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 30  # (children stop on SIGTERM from PR_SET_PDEATHSIG, gracefully)
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]


async def test_a_piece_that_fails_to_start_stops_the_stack_cleanly(tmp_path: Path) -> None:
    """A start-up bug must not leave nats-server (or anything else) running, nor a stack.json behind."""
    from enclavekit.stack.state import StateDir
    from enclavekit.stack.up import Stack, serve

    stack = Stack(StateDir(tmp_path / "state"))
    stack.state.create()

    async def broken(stack: Stack) -> None:
        await stack.start_nats()
        raise TypeError("a bug in some service's start-up")

    status = await serve(stack, broken, lambda data: None)
    assert status == 1
    assert not stack.state.stack_file.exists()
    nats = stack.processes[0]
    assert nats.process is not None
    assert nats.process.returncode is not None
