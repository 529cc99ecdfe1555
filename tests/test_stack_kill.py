"""``kill -9`` each kind of piece of a running ``enclavekit up`` (real processes, one stack for the module): the
supervisor brings it back on the same address (an enclave with the same PCR0), rewrites ``stack.json`` with the
new pid, and the stack answers again: a demo round trip through the relay, every enclave's health through its
relay, every host service's health, the KMS emulator. Then Ctrl-C stops it all within the bound."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.enclave.demo import ECHO, Echo
from enclavekit.nsm import load_root

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "enclavekit.cli"]
STOP_BOUND = 4.0  # seconds from Ctrl-C until the last process of the stack is gone (docs/benchmarks.md)


class RunningStack:
    def __init__(self, state: Path, process: subprocess.Popen[bytes], stderr: Path) -> None:
        self.state = state
        self.process = process
        self.stderr = stderr

    def read(self) -> dict[str, Any]:
        data = json.loads((self.state / "stack.json").read_text())
        assert isinstance(data, dict)
        return data

    def entry(self, piece: str) -> dict[str, Any]:
        """``enclave-NAME`` is an entry of ``enclaves``; anything else a service."""
        data = self.read()
        if piece.startswith("enclave-"):
            found = next(e for e in data["enclaves"] if e["name"] == piece.removeprefix("enclave-"))
        else:
            found = data["services"][piece]
        assert isinstance(found, dict)
        return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tree(root: int) -> set[int]:
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return seen


def _poll(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, ValueError, KeyError, StopIteration) as exc:  # stack.json mid-rewrite, a piece not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("stack-kill")
    state, stderr = root / "state", root / "up.stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [*CLI, "up", "--state", str(state)], stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True
        )
    running = RunningStack(state, process, stderr)
    try:
        _poll(lambda: process.poll() is None and (state / "stack.json").exists(), 240, "enclavekit up started")
        yield running
    finally:
        if process.poll() is None:
            for pid in _tree(process.pid) - {process.pid}:
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(10)


async def _demo_round_trip(stack: RunningStack) -> bool:
    enclave, relay = stack.entry("enclave-demo"), stack.entry("relay_demo")
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(enclave["pcr0"])}], roots=(load_root(stack.state),))
    async with AttestedClient.nitro(relay["url"], policy, connect_attempts=1) as client:
        answer = await client.call(ECHO, Echo(text="still here"))
    return bool(answer.text == "still here")


def _answers(stack: RunningStack) -> list[str]:
    """What does not answer right now (empty: the whole stack answers)."""
    data = stack.read()
    services = data["services"]
    failing = []
    checks = {
        # each enclave's health through its relay's HTTP side (``attestation_url`` is ``http://HOST:PORT/attestation``)
        "relay_demo": services["relay_demo"]["attestation_url"].removesuffix("/attestation") + "/health",
        "relay_notify": services["relay_notify"]["attestation_url"].removesuffix("/attestation") + "/health",
        "notify_api": services["notify_api"]["url"] + "/health",
        "notify_ingest": services["notify_ingest"]["url"] + "/health",
        "notify_dispatcher": services["notify_dispatcher"]["url"] + "/health",
        "trust_web": services["trust_web"]["url"] + "/healthz",
    }
    for name, url in checks.items():
        try:
            if httpx.get(url, timeout=5).status_code != 200:
                failing.append(name)
        except httpx.HTTPError:
            failing.append(name)
    try:  # the KMS protocol answers a POST / without a known X-Amz-Target with a JSON error: it is up
        ca = ssl.create_default_context(cafile=stack.state / "kms" / "tls" / "ca.pem")  # the stack's local CA
        kms = httpx.post(services["kms"]["url"] + "/", content=b"{}", timeout=5, verify=ca)
        if kms.status_code >= 500 or "__type" not in kms.text:
            failing.append("kms")
    except httpx.HTTPError:
        failing.append("kms")
    try:
        if not asyncio.run(asyncio.wait_for(_demo_round_trip(stack), 15)):
            failing.append("demo round trip")
    except Exception as exc:  # any failure to talk to the enclave is a "not answering" here
        failing.append(f"demo round trip ({type(exc).__name__})")
    return failing


def _wait_until_it_answers(stack: RunningStack, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    failing = _answers(stack)
    while failing and time.monotonic() < deadline:
        time.sleep(0.2)
        failing = _answers(stack)
    assert not failing, f"{what}: not answering after {timeout:.0f} s: {failing}"


def test_the_stack_answers_before_anything_is_killed(stack: RunningStack) -> None:
    _wait_until_it_answers(stack, 60, "the stack")


@pytest.mark.parametrize(
    "piece",
    [
        "enclave-demo",
        "relay_demo",
        "notify_dispatcher",
        "notify_ingest",
        "trust_web",
        "kms",
        "enclave-notify",
        "relay_notify",
        "notify_api",
        "nats",  # last: every other piece reconnects to it on the same port, JetStream data in the same folder
    ],
)
def test_a_piece_killed_with_sigkill_comes_back_on_the_same_address_and_the_stack_answers(
    stack: RunningStack, piece: str
) -> None:
    before = stack.entry(piece)
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> dict[str, Any] | None:
        entry = stack.entry(piece)
        return entry if entry["pid"] != before["pid"] and _alive(entry["pid"]) else None

    after = _poll(back, 90, f"{piece} restarted and named in stack.json")
    assert after["restarts"] == before.get("restarts", 0) + 1
    assert after["last_exit"] == "killed by SIGKILL"
    assert not _alive(before["pid"])
    for key in ("url", "address", "attestation_url", "pcr0"):  # same address, same measurement
        assert after.get(key) == before.get(key), key
    assert stack.process.poll() is None, "the supervisor must keep running"
    _wait_until_it_answers(stack, 90, f"after {piece} came back")


def test_status_shows_each_pieces_restarts(stack: RunningStack) -> None:
    status = subprocess.run(
        [*CLI, "status", "--state", str(stack.state), "--json"], capture_output=True, text=True, check=True
    )
    live = json.loads(status.stdout)
    assert live["services"]["kms"]["restarts"] == 1 and live["services"]["kms"]["alive"]
    assert next(e for e in live["enclaves"] if e["name"] == "demo")["restarts"] == 1
    assert "restarts" not in live["services"]["notify_capture"]  # never killed, never restarted
    wide = {**os.environ, "COLUMNS": "250"}  # rich wraps cells to the terminal's width
    table = subprocess.run(
        [*CLI, "status", "--state", str(stack.state)], capture_output=True, text=True, check=True, env=wide
    )
    assert "restarts" in table.stdout and "killed by SIGKILL" in table.stdout
    log = stack.stderr.read_text()
    assert "kms exited (killed by SIGKILL); restarting it in" in log


def test_ctrl_c_stops_the_whole_stack_within_the_bound_without_sigterm_warnings(stack: RunningStack) -> None:
    pids = _tree(stack.process.pid)
    started = time.monotonic()
    os.killpg(stack.process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert stack.process.wait(30) == 0
    _poll(lambda: not any(_alive(pid) for pid in pids), 30, "every process of the stack gone")
    elapsed = time.monotonic() - started
    assert "ignored SIGTERM" not in stack.stderr.read_text()
    assert not (stack.state / "stack.json").exists()
    # Generous on a shared CI machine; docs/benchmarks.md has the measured median against STOP_BOUND.
    assert elapsed < 2 * STOP_BOUND, f"Ctrl-C took {elapsed:.1f} s"
