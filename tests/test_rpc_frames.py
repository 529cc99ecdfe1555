"""RPC frames, addresses and error mapping: strict parsing, size limits before allocation, typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.attestation.errors import MeasurementMismatch
from enclavekit.channel.errors import RecordReplayed
from enclavekit.errors import Error
from enclavekit.rpc import (
    AddressInvalid,
    DeadlineExceeded,
    FramedStream,
    FrameMalformed,
    FrameTooLarge,
    FrameVersionUnsupported,
    RemoteError,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    decode_frame,
    error_from_wire,
    parse_address,
)
from enclavekit.rpc.address import VMADDR_CID_ANY
from enclavekit.rpc.connection import MessageConnection
from enclavekit.rpc.frame import Cancel, ErrorFrame, Request, Response

FRAMES = [
    Request(1, "echo", 5000, b'{"text":"hi"}'),
    Request(2**64 - 1, "notify/v1.send-push", 0, b""),
    Response(7, b'{"ok":true}'),
    ErrorFrame(7, "measurement_mismatch", "PCR0 differs"),
    ErrorFrame(0, "frame_malformed", ""),
    Cancel(9),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_frames_round_trip(frame: Request | Response | ErrorFrame | Cancel) -> None:
    data = frame.to_bytes()
    assert data[0] == 1  # version first
    assert int.from_bytes(data[2:6], "big") == len(data) - 6
    assert decode_frame(data) == frame


def test_frame_with_unknown_version_is_refused() -> None:
    with pytest.raises(FrameVersionUnsupported):
        decode_frame(b"\x02" + Cancel(1).to_bytes()[1:])


def test_oversized_length_prefix_is_refused_by_decode() -> None:
    with pytest.raises(FrameTooLarge):
        decode_frame(b"\x01\x01\xff\xff\xff\xff", max_frame_size=1024)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x09\x00\x00\x00\x00",  # unknown kind
        b"\x01\x04\x00\x00\x00\x08" + bytes(8),  # cancel id 0
        b"\x01\x04\x00\x00\x00\x09" + b"\x00" * 7 + b"\x01\x00",  # cancel with trailing byte
        b"\x01\x01\x00\x00\x00\x0d" + b"\x00" * 7 + b"\x01" + b"\x00" * 4 + b"\x05",  # route cut short
        b"\x01\x01\x00\x00\x00\x0e" + b"\x00" * 7 + b"\x01" + b"\x00" * 4 + b"\x01 ",  # route with a space
        b"\x01\x03\x00\x00\x00\x0a" + b"\x00" * 8 + b"\x01A",  # error code not lower-case
        b"\x01\x02\x00\x00\x00\x10" + b"\x00" * 8,  # length larger than the frame
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(FrameMalformed):
        decode_frame(data)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from([f.to_bytes() for f in FRAMES]).flatmap(
            lambda base: st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)).map(
                lambda edit: base[: edit[0]] + bytes([edit[1]]) + base[edit[0] + 1 :]
            )
        ),
    )
)
def test_fuzzed_frames_raise_only_enclavekit_errors(data: bytes) -> None:
    with contextlib.suppress(Error):
        decode_frame(data, max_frame_size=4096)


async def test_oversized_length_prefix_is_refused_without_allocation() -> None:
    """A 4 GiB length prefix is refused from the header; the reader never allocates for it."""
    ours, theirs = socket.socketpair()
    _, connection = await asyncio.get_running_loop().create_connection(MessageConnection, sock=ours)
    stream = FramedStream(connection, max_frame_size=1 << 20)
    theirs.sendall(b"\x01\x01\xff\xff\xff\xf0" + bytes(100))
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge):
            await connection.receive()  # with the frame header rule the stream set
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        theirs.close()
        await stream.close()
    assert peak < 1 << 20


# --- addresses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vsock://16:5000", VsockAddress(16, 5000)),
        ("vsock://3:8000", VsockAddress(3, 8000)),
        ("vsock://any:5000", VsockAddress(VMADDR_CID_ANY, 5000)),
        ("vsock://4294967295:1", VsockAddress(VMADDR_CID_ANY, 1)),
        ("tcp://127.0.0.1:0", TcpAddress("127.0.0.1", 0)),
        ("tcp://localhost:8443", TcpAddress("localhost", 8443)),
        ("tcp://[::1]:9000", TcpAddress("::1", 9000)),
        ("unix:///run/enclavekit/app.sock", UnixAddress("/run/enclavekit/app.sock")),
        ("unix:relative.sock", UnixAddress("relative.sock")),
    ],
)
def test_addresses_parse(text: str, expected: object) -> None:
    address = parse_address(text)
    assert address == expected
    assert parse_address(str(address)) == address


def test_vsock_address_uses_af_vsock() -> None:
    assert parse_address("vsock://16:5000").family == socket.AF_VSOCK


@pytest.mark.parametrize(
    "text",
    [
        "vsock://16",
        "vsock://-1:5000",
        "vsock://4294967296:5000",
        "vsock://16:port",
        "vsock://cid:5000",
        "tcp://127.0.0.1:65536",
        "tcp://:80",
        "tcp://::1:80",
        "tcp://host",
        "http://example.com:80",
        "16:5000",
        "unix://",
        "unix://" + "x" * 200,
    ],
)
def test_invalid_addresses_are_refused(text: str) -> None:
    with pytest.raises(AddressInvalid):
        parse_address(text)


# --- errors travel as codes ----------------------------------------------------------------------------------


def test_known_codes_become_their_enclavekit_class() -> None:
    error = error_from_wire("measurement_mismatch", "PCR0 differs")
    assert isinstance(error, MeasurementMismatch)
    assert error.message == "PCR0 differs"
    assert isinstance(error_from_wire("record_replayed", "again"), RecordReplayed)
    assert isinstance(error_from_wire("rpc_deadline_exceeded", "slow"), DeadlineExceeded)


def test_unknown_codes_become_remote_errors_that_keep_the_code() -> None:
    error = error_from_wire("quota_exceeded", "try tomorrow")
    assert isinstance(error, RemoteError)
    assert error.remote_code == "quota_exceeded"
    assert error.to_json() == {"code": "quota_exceeded", "message": "try tomorrow"}


def test_error_frame_build_truncates_long_messages_and_sanitizes_codes() -> None:
    frame = ErrorFrame.build(3, "Not A Code!", "é" * 2000)
    assert frame.code == "error"
    assert len(frame.message.encode()) <= 1024
    assert decode_frame(frame.to_bytes()) == frame


def test_examples_in_the_wire_document_are_what_the_code_produces() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "wire-rpc.md").read_text()
    examples = [
        Request(1, "echo", 5000, b'{"text":"hi"}'),
        Response(1, b'{"text":"HI"}'),
        ErrorFrame(2, "rpc_unknown_route", "no route named 'nope'"),
        Cancel(3),
    ]
    for frame in examples:
        assert f"  {frame.to_bytes().hex()}\n" in text


def test_a_code_claimed_by_two_classes_becomes_a_remote_error() -> None:
    class FirstClaim(Error):
        code = "test_duplicate_claim"

    assert isinstance(error_from_wire("test_duplicate_claim", "one"), FirstClaim)

    class SecondClaim(Error):
        code = "test_duplicate_claim"

    error = error_from_wire("test_duplicate_claim", "two")
    assert isinstance(error, RemoteError)
    assert error.remote_code == "test_duplicate_claim"
    del SecondClaim
