"""The vault client never waits forever: NATS refused, NATS silent, or nobody answering → ``vault_unreachable``
within its timeouts (the CLI used to hang on an unreachable NATS: nats-py retried it forever)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from enclavekit.services.vault.client import VaultClient, VaultUnreachable


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
