"""The host's protections in front of the inference enclave: token bucket, circuit breaker (clock injected),
and the gateway enforcing them on real sockets."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclavekit.errors import ConfigurationError
from enclavekit.services.inference.gateway import Gateway
from enclavekit.services.inference.protections import BreakerState, CircuitBreaker, ProtectionSettings, TokenBucket


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)  # capped at burst


def test_token_bucket_is_not_refilled_by_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert not bucket.take(100.5)
    assert bucket.take(101.0)


def test_breaker_opens_at_the_error_ratio_and_recovers_through_one_trial() -> None:
    breaker = CircuitBreaker(error_ratio=0.2, min_requests=10, window=10.0, open_seconds=5.0)
    for i in range(8):
        breaker.record(float(i) / 10, ok=True)
    breaker.record(0.9, ok=False)
    assert breaker.state is BreakerState.CLOSED  # 9 outcomes: under min_requests
    breaker.record(1.0, ok=False)  # 2 of 10 failed: 20 %
    assert breaker.state is BreakerState.OPEN
    assert breaker.is_open(3.0) and not breaker.allow(3.0)
    assert breaker.allow(6.1)  # half-open: one trial
    assert not breaker.allow(6.2)
    breaker.record(6.3, ok=False)
    assert breaker.state is BreakerState.OPEN and breaker.times_opened == 2
    assert breaker.allow(11.4)
    breaker.record(11.5, ok=True)
    assert breaker.state is BreakerState.CLOSED


def test_old_failures_leave_the_window() -> None:
    breaker = CircuitBreaker(error_ratio=0.5, min_requests=4, window=10.0, open_seconds=5.0)
    breaker.record(0.0, ok=False)
    breaker.record(0.0, ok=False)
    for t in (20.0, 20.1, 20.2, 20.3):
        breaker.record(t, ok=True)
    assert breaker.state is BreakerState.CLOSED


@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=3.0), st.booleans()), max_size=200))
def test_breaker_opens_exactly_when_a_recount_of_its_window_says_so(steps: list[tuple[float, bool]]) -> None:
    """The breaker keeps its failure count as outcomes come and go; it must decide as a full recount would."""
    breaker = CircuitBreaker(error_ratio=0.3, min_requests=5, window=4.0, open_seconds=1.0)
    window: list[tuple[float, bool]] = []
    now = 0.0
    for gap, ok in steps:
        now += gap
        if not breaker.allow(now):
            continue
        half_open = breaker.state is BreakerState.HALF_OPEN
        breaker.record(now, ok=ok)
        if half_open:
            window.clear()
            expected = BreakerState.CLOSED if ok else BreakerState.OPEN
        else:
            window = [(t, good) for t, good in [*window, (now, ok)] if now - t <= 4.0]
            failures = sum(1 for _, good in window if not good)
            opens = len(window) >= 5 and failures >= 0.3 * len(window)
            expected = BreakerState.OPEN if opens else BreakerState.CLOSED
            if opens:
                window.clear()
        assert breaker.state is expected
        assert breaker.failures == sum(1 for _, good in breaker.outcomes if not good)


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        ProtectionSettings(rate=0)
    with pytest.raises(ConfigurationError):
        ProtectionSettings(error_ratio=1.5)


_DATA = 0x10


def _record(body: bytes) -> bytes:
    return struct.pack(">BBI", 1, _DATA, len(body)) + body


async def _echo_server() -> tuple[asyncio.AbstractServer, str]:
    """A stand-in upstream that answers every record with one record (the gateway reads only headers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(6)
                body = await reader.readexactly(struct.unpack(">BBI", header)[2])
                writer.write(_record(b"answer:" + body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _roundtrip(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_record(body))
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(6), 5)
        return await reader.readexactly(struct.unpack(">BBI", header)[2])
    finally:
        writer.close()


async def test_gateway_forwards_and_rate_limits_by_closing_the_connection() -> None:
    server, upstream = await _echo_server()
    gateway = Gateway(upstream, ProtectionSettings(rate=0.5, burst=2, max_wait=0.0))
    _, port = await gateway.start()
    try:
        assert await _roundtrip(port, b"one") == b"answer:one"
        assert await _roundtrip(port, b"two") == b"answer:two"
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(port, b"three")
        assert gateway.metrics.rate_limited == 1
        assert gateway.metrics.answered == 2
        assert gateway.metrics.in_flight == 0
        text = gateway.metrics.prometheus(gateway.breaker.state, gateway.breaker.times_opened)
        assert "enclavekit_inference_gateway_rate_limited_total 1" in text
    finally:
        await gateway.close()
        server.close()


async def test_messages_larger_than_one_read_arrive_whole_and_unchanged_both_ways() -> None:
    """The gateway reads into one shared buffer and reassembles messages: a 1 MiB record (many reads) crosses
    intact each way, and so does a second connection's record read in between."""
    server, upstream = await _echo_server()
    gateway = Gateway(upstream)
    _, port = await gateway.start()
    try:
        big = bytes(range(256)) * 4096
        answers = await asyncio.gather(_roundtrip(port, big), _roundtrip(port, b"small"))
        assert answers == [b"answer:" + big, b"answer:small"]
        assert gateway.metrics.answered == 2
        assert gateway.metrics.bytes_in == 2 * 6 + len(big) + len(b"small")
    finally:
        await gateway.close()
        server.close()


async def test_gateway_bounds_requests_in_flight() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(6)
        await reader.readexactly(struct.unpack(">BBI", header)[2])
        await release.wait()
        writer.write(_record(b"late"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    upstream = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gateway = Gateway(upstream, ProtectionSettings(max_in_flight=1, max_wait=0.2))
    _, port = await gateway.start()
    try:
        first = asyncio.create_task(_roundtrip(port, b"a"))
        while gateway.metrics.in_flight < 1:
            await asyncio.sleep(0.01)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(port, b"b")
        assert gateway.metrics.over_capacity == 1
        release.set()
        assert await first == b"late"
    finally:
        await gateway.close()
        server.close()


async def test_breaker_opens_when_the_enclave_link_is_down_and_refuses_at_once() -> None:
    server, upstream = await _echo_server()
    server.close()
    await server.wait_closed()  # nothing listens there now
    gateway = Gateway(upstream, ProtectionSettings(min_requests=3, error_ratio=0.5, open_seconds=60))
    _, port = await gateway.start()
    try:
        for _ in range(3):
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await _roundtrip(port, b"x")
        assert gateway.breaker.state is BreakerState.OPEN
        failures = gateway.metrics.link_failures
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(port, b"x")
        assert gateway.metrics.breaker_rejected == 1
        assert gateway.metrics.link_failures == failures  # refused without trying the link
    finally:
        await gateway.close()


async def test_garbage_from_a_client_closes_only_its_connection() -> None:
    server, upstream = await _echo_server()
    gateway = Gateway(upstream)
    _, port = await gateway.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">BBI", 1, _DATA, 0xFFFFFFFF))  # 4 GiB announced
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert await _roundtrip(port, b"fine") == b"answer:fine"
        assert gateway.metrics.malformed == 1
    finally:
        await gateway.close()
        server.close()


async def test_clients_hanging_up_cannot_open_the_breaker_for_everyone() -> None:
    """A request whose client leaves before the answer is not a failure of the enclave link."""

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    upstream = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gateway = Gateway(upstream, ProtectionSettings(min_requests=1, error_ratio=0.5))
    _, port = await gateway.start()
    try:
        async with asyncio.timeout(10):  # with the breaker open, later requests would never be forwarded
            for sent in range(1, 4):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(_record(b"then gone"))
                await writer.drain()
                while gateway.metrics.requests < sent:  # forwarded, unanswered
                    await asyncio.sleep(0.01)
                writer.close()
                while gateway.metrics.in_flight:
                    await asyncio.sleep(0.01)
        assert gateway.metrics.requests == 3
        assert gateway.metrics.link_failures == 0
        assert gateway.breaker.state is BreakerState.CLOSED
    finally:
        await gateway.close()
        server.close()
