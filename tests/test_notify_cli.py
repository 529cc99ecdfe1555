"""The notify stack under the stack supervisor (``enclavekit notify up``: the same pieces ``enclavekit up``
starts), and the local commands other tools rely on: ``send-test``, ``dev-proof``, ``ingest`` and
``captured``, each finding the stack through ``--state``."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.nsm import load_root
from enclavekit.services.notify.client import NotifyClient
from enclavekit.services.notify.ingest import sender_hmac
from enclavekit.services.notify.testing import CLI


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state = tmp_path_factory.mktemp("notify-up") / "state"
    process = subprocess.Popen(
        [*CLI, "notify", "up", "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (state / "stack.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the notify stack did not start: {process.stderr.read() if process.stderr else ''!r}"
                )
            time.sleep(0.2)
        yield state, json.loads((state / "stack.json").read_text())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_up_lists_the_notify_pieces(up: tuple[Path, dict[str, Any]]) -> None:
    _, stack = up
    services = stack["services"]
    for name in ("notify_api", "notify_ingest", "notify_dispatcher", "notify_capture", "notify_world_id", "kms"):
        assert services[name]["url"] and services[name]["pid"], name
    assert any(enclave["name"] == "notify" for enclave in stack["enclaves"])


def test_send_test_initialises_checks_health_and_delivers(up: tuple[Path, dict[str, Any]]) -> None:
    state, _ = up
    result = _cli(
        "notify",
        "send-test",
        "--state",
        str(state),
        "--push-id",
        "send-test-device",
        "--every",
        "100ms",
        "--count",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "initialized" in result.stdout and "health: initialized=True" in result.stdout
    assert result.stdout.count(": delivered") == 2
    captured = [
        json.loads(line) for line in _cli("notify", "captured", "--json", "--state", str(state)).stdout.splitlines()
    ]
    assert any(item["push_ids"] == ["send-test-device"] for item in captured)


def test_a_user_can_try_the_whole_flow_with_the_cli_contracts(up: tuple[Path, dict[str, Any]]) -> None:
    state, stack = up
    pcr0 = next(e["pcr0"] for e in stack["enclaves"] if e["name"] == "notify")
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(pcr0)}], roots=(load_root(state),))
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    devices = {}
    for who in ("sender", "reader"):
        client = NotifyClient(stack["services"]["notify_api"]["url"], policy)
        sealed = client.seal(f"{who}-{uuid.uuid4().hex[:8]}", client.enclave_public_key())

        def prove(signal: str, who: str = who) -> dict[str, str]:
            out = _cli("notify", "dev-proof", "--signal", signal, "--json", "--identity", who, "--state", str(state))
            assert out.returncode == 0, out.stderr
            proof: dict[str, str] = json.loads(out.stdout)
            assert set(proof) == {"proof", "nullifier_hash", "merkle_root", "credential_type"}
            return proof

        client.authorize(sealed, prove)
        hmac_key = os.urandom(42).hex()
        client.subscribe([(topic, hmac_key, int(time.time()) + 3600)])
        devices[who] = (client, hmac_key)
    data = os.urandom(32)
    ingested = _cli(
        "notify", "ingest", "--topic", topic, "--data-b64", base64.b64encode(data).decode(),
        "--sender-hmac", sender_hmac(devices["sender"][1], data), "--state", str(state),
    )  # fmt: skip
    assert ingested.returncode == 0, ingested.stderr
    message_id = json.loads(ingested.stdout)["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = _cli("notify", "captured", "--json", "--state", str(state)).stdout.splitlines()
        found = [json.loads(line) for line in lines if json.loads(line)["message_id"] == message_id]
        if found:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the capture provider never got the message")
    assert len(found) == 1
    item = found[0]
    assert set(item) == {"message_id", "topic", "push_ids", "payload"}
    assert item["topic"] == topic and len(item["push_ids"]) == 1 and item["push_ids"][0].startswith("reader-")
    assert item["payload"]["encryptedMessageBase64"] == base64.b64encode(data).decode()
    silent = _cli(
        "notify", "ingest", "--topic", topic, "--data-b64", base64.b64encode(b"x").decode(), "--no-push",
        "--state", str(state),
    )  # fmt: skip
    assert silent.returncode == 0


def test_local_commands_without_a_stack_say_where_they_looked(tmp_path: Path) -> None:
    """Every local command answers a missing stack with the shared message: the folder looked in, how to point."""
    commands = (
        ("captured", "--json"),
        ("send-test",),
        ("ingest", "--topic", "t", "--data-b64", "AA=="),
    )
    for args in commands:
        result = _cli("notify", *args, "--state", str(tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"error: no stack is running with state folder {tmp_path.resolve()}" in result.stderr, args
        assert "--state DIR" in result.stderr, args
