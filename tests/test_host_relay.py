"""The host's relay and egress proxy over real loopback sockets: forwarding, limits, and hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enclavekit.host import relay as relay_module
from enclavekit.host.egress import EgressProxy, parse_allowlist
from enclavekit.host.relay import Relay, RelayLimits, size_send_buffers
from enclavekit.rpc import Address, TcpAddress
from enclavekit.stack.processes import free_port
from tests.polling import wait_for_async


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[:2]
    server.close()
    await server.wait_closed()


def _upstream(address: tuple[str, int]) -> str:
    return f"tcp://{address[0]}:{address[1]}"


@pytest.mark.parametrize("with_tap", [True, False], ids=["copy-with-tap", "splice"])
async def test_relay_forwards_bytes_both_ways(echo_server: tuple[str, int], with_tap: bool) -> None:
    seen: list[tuple[str, bytes]] = []
    relay = Relay(_upstream(echo_server), tap=(lambda d, b: seen.append((d, b))) if with_tap else None)
    host, port = await relay.start()
    reader, writer = await asyncio.open_connection(host, port)
    payload = bytes(range(256)) * 4096  # 1 MiB: many chunks, both ways
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the half-close travelled through
    writer.close()
    await relay.close()
    assert relay.stats.bytes_in == relay.stats.bytes_out == len(payload)
    if with_tap:
        assert b"".join(b for d, b in seen if d == "in") == payload
        assert b"".join(b for d, b in seen if d == "out") == payload


async def test_connections_over_the_limit_are_refused_not_queued(echo_server: tuple[str, int]) -> None:
    relay = Relay(_upstream(echo_server), limits=RelayLimits(max_connections=2))
    host, port = await relay.start()
    held = [await asyncio.open_connection(host, port) for _ in range(2)]
    for _, w in held:
        w.write(b"x")
    for r, _ in held:
        assert await r.readexactly(1) == b"x"
    reader, _ = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed at once
    assert relay.stats.refused == 1
    await relay.close()


async def test_idle_connection_is_closed(echo_server: tuple[str, int]) -> None:
    relay = Relay(_upstream(echo_server), limits=RelayLimits(idle_timeout=0.3))
    host, port = await relay.start()
    reader, _ = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 3) == b""
    await wait_for_async(lambda: relay.stats.idle_closed == 1, 5, what="the relay counts the idle close")
    await relay.close()


async def test_unreachable_upstream_closes_the_client_cleanly() -> None:
    relay = Relay(f"tcp://127.0.0.1:{free_port()}")  # nothing listens there
    host, port = await relay.start()
    reader, _ = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert relay.stats.upstream_failures == 1
    await relay.close()


async def test_slow_upstream_applies_backpressure_instead_of_buffering() -> None:
    """An upstream that stops reading must stall the client, not grow the relay's memory."""
    stalled = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stalled.wait()
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    relay = Relay(_upstream(server.sockets[0].getsockname()[:2]))
    host, port = await relay.start()
    _, writer = await asyncio.open_connection(host, port)
    sent = 0
    chunk = b"\x00" * (1 << 20)
    with contextlib.suppress(TimeoutError):
        for _ in range(256):  # offer 256 MiB
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 1.0)
            sent += len(chunk)
    assert sent < 64 << 20, "the client was never slowed down"
    assert relay.stats.bytes_in < 64 << 20
    stalled.set()
    writer.close()
    await relay.close()
    server.close()


# --- egress proxy -------------------------------------------------------------------------------------------


def _tcp(address: Address) -> tuple[str, int]:
    assert isinstance(address, TcpAddress)
    return address.host, address.port


async def _request(address: tuple[str, int], head: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(head)
    await writer.drain()
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    return status, reader, writer


async def test_egress_tunnels_to_an_allowlisted_host(echo_server: tuple[str, int]) -> None:
    proxy = EgressProxy(parse_allowlist([f"127.0.0.1:{echo_server[1]}"]))
    address = _tcp(await proxy.start())
    status, reader, writer = await _request(address, f"CONNECT 127.0.0.1:{echo_server[1]} HTTP/1.1\r\n\r\n".encode())
    assert status.startswith(b"HTTP/1.1 200")
    writer.write(b"tls bytes")
    assert await reader.readexactly(9) == b"tls bytes"
    writer.close()
    await proxy.close()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n", b"403"),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n", b"403"),
        (b"GET http://rest.iad-01.braze.com/ HTTP/1.1\r\n\r\n", b"405"),
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
        (b"CONNECT a:1 HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_egress_refuses_anything_but_connect_to_the_allowlist(
    echo_server: tuple[str, int], head: bytes, status: bytes
) -> None:
    proxy = EgressProxy(parse_allowlist([f"127.0.0.1:{echo_server[1]}"]))
    address = _tcp(await proxy.start())
    answer, _, writer = await _request(address, head)
    assert answer.split(b" ")[1] == status
    writer.close()
    assert proxy.stats.accepted == 0
    await proxy.close()


async def test_egress_slowloris_head_is_cut_off() -> None:
    proxy = EgressProxy(parse_allowlist(["example.com"]), head_timeout=0.3)
    address = _tcp(await proxy.start())
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"CONNECT exam")
    assert await asyncio.wait_for(reader.read(), 3) == b""
    await proxy.close()


def test_allowlist_entries_are_checked() -> None:
    assert parse_allowlist(["REST.IAD-01.braze.com", "127.0.0.1:8443"]) == {
        ("rest.iad-01.braze.com", 443),
        ("127.0.0.1", 8443),
    }
    with pytest.raises(ValueError, match="host"):
        parse_allowlist(["example.com:http"])


async def test_egress_command_runs_as_a_process(echo_server: tuple[str, int]) -> None:
    import json
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclavekit.cli",
            "host",
            "egress",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--allow",
            f"127.0.0.1:{echo_server[1]}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(await asyncio.to_thread(process.stdout.readline))
        assert ready["allow"] == [f"127.0.0.1:{echo_server[1]}"]
        status, reader, writer = await _request(
            ("127.0.0.1", port), f"CONNECT 127.0.0.1:{echo_server[1]} HTTP/1.1\r\n\r\n".encode()
        )
        assert status.startswith(b"HTTP/1.1 200")
        writer.write(b"through the tunnel")
        assert await reader.readexactly(18) == b"through the tunnel"
        writer.close()
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_unix_sockets_get_the_send_buffer_asked_and_tcp_keeps_its_autotuning() -> None:
    # At the default 208 KiB a Unix socket holds less than one relay chunk, and the relay spends its time
    # sleeping and waking (benchmarks/relay.py): relayed pairs ask for more.
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    asked = min(RelayLimits().unix_send_buffer, wmem_max)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp_default = tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    with left, right, tcp:
        size_send_buffers((left, tcp), asked)
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * asked  # Linux reports it doubled
        assert right.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * asked
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == tcp_default


def test_a_send_buffer_capped_by_the_kernel_is_reported_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    monkeypatch.setattr(relay_module, "_warned_wmem_max", False)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="enclavekit.host.relay"):
        for left, _ in pairs:
            size_send_buffers((left,), 4 * wmem_max)
    for pair in pairs:
        for sock in pair:
            sock.close()
    warnings = [r.getMessage() for r in caplog.records if "wmem_max" in r.getMessage()]
    assert len(warnings) == 1
    assert f"at {wmem_max} bytes" in warnings[0]


async def test_relay_to_a_unix_upstream_forwards_megabytes_both_ways(tmp_path: Path) -> None:
    # The local stack's topology: TCP from the client, a Unix socket to the enclave (vsock on Nitro).
    path = tmp_path / "echo.sock"
    server = await asyncio.start_unix_server(_echo, path)
    relay = Relay(f"unix://{path}")
    host, port = await relay.start()
    reader, writer = await asyncio.open_connection(host, port)
    payload = bytes(range(256)) * 16384  # 4 MiB: more than the pipe and the send buffer together
    sending = asyncio.create_task(_send_all(writer, payload))
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 20) == payload
    await sending
    writer.close()
    await relay.close()
    server.close()
    assert relay.stats.bytes_in == relay.stats.bytes_out == len(payload)


async def _send_all(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(payload)
    await writer.drain()
