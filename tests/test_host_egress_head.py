"""The egress proxy's request-head parser as a hostile client drives it: every malformed head gets an answer
and a closed socket, never a hung connection or an exception in the handler."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.host.egress import MAX_HEAD, BadHead, EgressProxy, parse_allowlist, parse_connect_head
from enclavekit.rpc.address import TcpAddress

ALLOWED = "127.0.0.1:4796"


async def _exchange(head: bytes, *, head_timeout: float = 5.0) -> bytes:
    """Send ``head`` to a fresh proxy and return everything it answers until it closes (at most 3 s)."""
    proxy = EgressProxy(parse_allowlist([ALLOWED]), head_timeout=head_timeout)
    address = await proxy.start()
    assert isinstance(address, TcpAddress)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()
        await proxy.close()


@pytest.mark.parametrize(
    "head",
    [
        "CONNECT 127.0.0.1:4796\u00b9 HTTP/1.1\r\n\r\n",  # a Latin-1 superscript digit: isdigit() true, int() raises
        "CONNECT 127.0.0.1:\u0664\u0667\u0669\u0666 HTTP/1.1\r\n\r\n",  # Arabic-Indic digits
        "CONNECT 127.0.0.1:\uff14\uff17\uff19\uff16 HTTP/1.1\r\n\r\n",  # full-width digits
        "CONNECT 127.0.0.1:99999999999999999999999 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1:65536 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1: HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
        "CONNECT :4796 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1:4796\r\n\r\n",  # no version
        "CONNECT 127.0.0.1:4796 HTTP/2.0\r\n\r\n",
        "CONNECT  127.0.0.1:4796 HTTP/1.1\r\n\r\n",  # two spaces
        "CONNECT 127.0.0.1:+4796 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1:4796 HTTP/1.1\r\nno colon here\r\n\r\n",
        "CONNECT 127.0.0.1:4796 HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon (request smuggling)
        "CONNECT user@127.0.0.1:4796 HTTP/1.1\r\n\r\n",
    ],
)
async def test_egress_answers_a_malformed_connect_head_with_400_and_closes(head: str) -> None:
    answer = await _exchange(head.encode("utf-8"))
    assert answer.startswith(b"HTTP/1.1 400 "), answer


async def test_egress_answers_an_over_long_request_line_with_431() -> None:
    answer = await _exchange(b"CONNECT " + b"a" * (2 * MAX_HEAD) + b":443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer


async def test_egress_cuts_off_a_header_that_never_ends() -> None:
    """Slowloris: a request line, then a header trickled without its end; the deadline covers the whole head."""
    proxy = EgressProxy(parse_allowlist([ALLOWED]), head_timeout=0.5)
    address = await proxy.start()
    assert isinstance(address, TcpAddress)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"CONNECT 127.0.0.1:4796 HTTP/1.1\r\nX-Slow: ")
    closed = asyncio.ensure_future(reader.read())
    while not closed.done() and loop.time() - started < 5:  # keep trickling a byte at a time
        writer.write(b"a")
        await writer.drain()
        await asyncio.wait({closed}, timeout=0.1)
    assert closed.done() and closed.result() == b""
    assert loop.time() - started < 3
    writer.close()
    await proxy.close()


def test_a_well_formed_connect_head_parses() -> None:
    assert parse_connect_head(b"CONNECT REST.iad-01.Braze.com:443 HTTP/1.1\r\nHost: rest.iad-01.braze.com:443") == (
        "rest.iad-01.braze.com",
        443,
    )
    assert parse_connect_head(b"CONNECT [::1]:8443 HTTP/1.0") == ("::1", 8443)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_raises_anything_but_bad_head_on_bytes(head: bytes) -> None:
    try:
        host, port = parse_connect_head(head)
    except BadHead as exc:
        status = exc.status
    else:
        assert 0 < port < 65536 and host == host.lower()
        return
    assert status.split(" ", 1)[0] in ("400", "405", "431")


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=500, deadline=None)
@given(
    method=st.sampled_from(["CONNECT", "GET", "connect", ""]) | _TEXT,
    host=st.sampled_from(["127.0.0.1", "[::1]", "example.com", ""]) | _TEXT,
    port=st.integers(min_value=-5, max_value=10**8).map(str) | _TEXT,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "http/1.1"]) | _TEXT,
    headers=st.lists(_TEXT, max_size=3),
)
def test_parser_accepts_only_ascii_connect_targets(
    method: str, host: str, port: str, version: str, headers: list[str]
) -> None:
    head = "\r\n".join([f"{method} {host}:{port} {version}", *headers]).encode("utf-8")
    try:
        parsed_host, parsed_port = parse_connect_head(head)
    except BadHead:
        return
    assert method == "CONNECT" and version in ("HTTP/1.1", "HTTP/1.0")
    assert port.isascii() and str(parsed_port) == port.lstrip("0") and 0 < parsed_port < 65536
    assert parsed_host.isascii()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200).filter(lambda b: b"\r\n\r\n" not in b))
def test_proxy_answers_every_garbage_head_and_closes(garbage: bytes) -> None:
    """Over a real socket: whatever the head, the proxy answers a 4xx and closes (never 200, never a hang)."""
    answer = asyncio.run(_exchange(garbage + b"\r\n\r\n"))
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 405 ", b"HTTP/1.1 403 ")), answer
