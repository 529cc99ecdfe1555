"""The vault client never waits forever: NATS refused, NATS silent, or nobody answering → ``vault_unreachable``
within its timeouts (the CLI used to hang on an unreachable NATS: nats-py retried it forever)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.services.vault.client import VaultClient, VaultUnreachable
from enclavekit.services.vault.nats_auth import add_user
from enclavekit.services.vault.stack import expected_pcr0
from enclavekit.stack.files import write_private


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word (a NATS behind a black hole)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


async def _unreachable(client: VaultClient, *, within: float) -> float:
    started = time.monotonic()
    with pytest.raises(VaultUnreachable) as caught:
        async with client:
            await client.list_secrets(pin="1234")
    elapsed = time.monotonic() - started
    assert caught.value.code == "vault_unreachable" and elapsed < within, elapsed
    assert "secret-password" not in str(caught.value)  # the URL's credentials are not in the message
    return elapsed


async def test_closed_nats_port_is_vault_unreachable_at_once() -> None:
    url = f"nats://alice:secret-password@127.0.0.1:{_closed_port()}"
    await _unreachable(VaultClient(url, "alice", [], []), within=2.0)


async def test_silent_nats_server_is_vault_unreachable_after_the_connect_timeout(silent_server: int) -> None:
    url = f"nats://alice:secret-password@127.0.0.1:{silent_server}"
    elapsed = await _unreachable(VaultClient(url, "alice", [], [], connect_timeout=0.5), within=3.0)
    assert elapsed >= 0.4


async def test_nats_without_a_bridge_is_vault_unreachable_after_the_request_timeout(nats_url: str) -> None:
    elapsed = await _unreachable(VaultClient(nats_url, "alice", [], [], timeout=0.5), within=3.0)
    assert elapsed >= 0.4


def test_cli_with_nats_unreachable_exits_1_with_vault_unreachable_quickly(tmp_path: Path) -> None:
    """The CLI (a user's app) against a stack whose NATS is gone: one JSON error at once, not a hang."""
    state = tmp_path / "state"
    expected_pcr0(state)  # the simulator root the CLI loads to verify the vault's attestation
    local = {"nats_url": f"nats://127.0.0.1:{_closed_port()}", "pcr0": ["00" * 48], "simulator_roots": [str(state)]}
    write_private(state / "vault" / "local.json", json.dumps(local).encode())
    add_user(state, "alice")
    argv = [sys.executable, "-m", "enclavekit.cli", "vault", "secret", "list", "alice", "--pin", "1234"]
    started = time.monotonic()
    run = subprocess.run(
        [*argv, "--state", str(state), "--json"],
        capture_output=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 1, run.stderr[-2000:]
    assert json.loads(run.stdout)["error"]["code"] == "vault_unreachable"
    assert elapsed < 15, elapsed  # the interpreter's start and imports included
