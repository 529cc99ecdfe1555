"""The /dev/nsm transport: the ioctl it issues, the struct it packs, and a clean failure where there is no NSM.

No Nitro Enclave here, so the one thing stood in for is the kernel driver itself (``device._ioctl``): the
stand-in reads the ``struct nsm_raw`` exactly as the driver does, dereferences the request address, lets the
real simulator answer, and writes the answer to the response address and its length back into the struct.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from enclavekit.errors import InfrastructureError
from enclavekit.nsm import Nsm, NsmDevice, NsmSimulator, open_device
from enclavekit.nsm import device as device_module
from enclavekit.nsm.device import NSM_IOCTL_RAW, NSM_RAW, ioctl_number, pack_raw, unpack_raw
from enclavekit.nsm.errors import (
    NsmInputTooLarge,
    NsmInternalError,
    NsmMalformedResponse,
    NsmUnavailable,
)
from enclavekit.nsm.messages import MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE


def test_ioctl_number_is_iowr_0x0a_0_of_a_32_byte_struct() -> None:
    # _IOWR(NSM_MAGIC=0x0A, 0, struct nsm_raw): dir=3 << 30 | size=32 << 16 | type=0x0A << 8 | nr=0
    assert NSM_IOCTL_RAW == 0xC0200A00
    assert NSM_IOCTL_RAW == (3 << 30) | (32 << 16) | (0x0A << 8) | 0
    assert ioctl_number(0x0A, 0, 32) == 0xC0200A00


def test_nsm_raw_is_two_iovecs_of_u64_address_and_length() -> None:
    assert NSM_RAW.size == 32 == 2 * ctypes.sizeof(ctypes.c_uint64) * 2
    raw = pack_raw(0x1111, 0x22, 0x3333, 0x3000)
    assert isinstance(raw, bytearray)  # the driver writes response.len back into it
    assert unpack_raw(raw) == (0x1111, 0x22, 0x3333, 0x3000)
    if sys.byteorder == "little":  # Nitro runs x86_64 and aarch64, both little-endian
        assert bytes(raw[0:8]) == (0x1111).to_bytes(8, "little")
        assert bytes(raw[8:16]) == (0x22).to_bytes(8, "little")
        assert bytes(raw[16:24]) == (0x3333).to_bytes(8, "little")
        assert bytes(raw[24:32]) == (0x3000).to_bytes(8, "little")


def test_absent_device_raises_nsm_unavailable_with_a_way_forward(tmp_path: Path) -> None:
    missing = tmp_path / "nsm"
    with pytest.raises(NsmUnavailable) as caught:
        NsmDevice(str(missing))
    error = caught.value
    assert error.code == "nsm_unavailable"
    assert isinstance(error, InfrastructureError)
    assert str(missing) in error.message
    assert "not a Nitro Enclave" in error.message
    assert "simulator" in error.message
    with pytest.raises(NsmUnavailable):
        open_device(str(missing))


def test_unopenable_device_raises_nsm_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NsmUnavailable, match="cannot open"):
        NsmDevice(str(tmp_path))  # a directory cannot be opened read-write


@pytest.mark.skipif(Path("/dev/nsm").exists(), reason="a real NSM is present")
def test_default_device_is_absent_outside_an_enclave() -> None:
    with pytest.raises(NsmUnavailable, match="/dev/nsm"):
        open_device()


class _Driver:
    """Stands in for drivers/misc/nsm.c: one NSM_IOCTL_RAW on a struct nsm_raw, served by the simulator."""

    def __init__(self, serve: Callable[[bytes], bytes]) -> None:
        self.serve = serve
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> None:
        assert request == 0xC0200A00
        assert len(arg) == 32
        request_addr, request_len, response_addr, response_len = NSM_RAW.unpack(arg)
        self.calls.append((request, request_len, response_len))
        if request_len > MAX_REQUEST_SIZE:
            raise OSError(errno.EMSGSIZE, "Message too long")
        answer = self.serve(ctypes.string_at(request_addr, request_len))
        assert len(answer) <= response_len
        ctypes.memmove(response_addr, answer, len(answer))
        arg[:] = NSM_RAW.pack(request_addr, request_len, response_addr, len(answer))


@pytest.fixture
def device_file(tmp_path: Path) -> Path:
    """An ordinary file opened in the device's place: it gives a real descriptor for the stand-in driver."""
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return path


def test_device_transport_carries_the_protocol_through_the_ioctl(tmp_path: Path, device_file: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app={"main.py": b"print('hello')"})
    driver = _Driver(simulator.handle)
    with mock.patch.object(device_module, "_ioctl", driver), NsmDevice(str(device_file)) as device:
        nsm = Nsm(device)
        assert nsm.describe_nsm().module_id == simulator.module_id
        assert nsm.describe_pcr(0).data == simulator.pcr(0)
        assert nsm.extend_pcr(16, b"event") == simulator.pcr(16)
        document = nsm.attestation(nonce=b"n" * 1024, user_data=b"u" * 1024, public_key=b"k" * 1024)
    assert document[:7] == bytes.fromhex("8444a1013822a0")
    assert all(call == (0xC0200A00, call[1], MAX_RESPONSE_SIZE) for call in driver.calls)
    assert len(driver.calls) == 4


def test_driver_refusing_the_size_is_input_too_large(device_file: Path) -> None:
    def refuse(fd: int, request: int, arg: bytearray) -> None:
        raise OSError(errno.EMSGSIZE, "Message too long")

    with (
        mock.patch.object(device_module, "_ioctl", refuse),
        NsmDevice(str(device_file)) as device,
        pytest.raises(NsmInputTooLarge),
    ):
        Nsm(device).get_random()


def test_other_driver_failures_are_retryable_internal_errors(device_file: Path) -> None:
    def fail(fd: int, request: int, arg: bytearray) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with (
        mock.patch.object(device_module, "_ioctl", fail),
        NsmDevice(str(device_file)) as device,
        pytest.raises(NsmInternalError) as caught,
    ):
        Nsm(device).get_random()
    assert caught.value.retryable


def test_driver_claiming_a_response_longer_than_the_buffer_is_malformed(device_file: Path) -> None:
    def overflow(fd: int, request: int, arg: bytearray) -> None:
        request_addr, request_len, response_addr, _ = NSM_RAW.unpack(arg)
        arg[:] = NSM_RAW.pack(request_addr, request_len, response_addr, MAX_RESPONSE_SIZE + 1)

    with (
        mock.patch.object(device_module, "_ioctl", overflow),
        NsmDevice(str(device_file)) as device,
        pytest.raises(NsmMalformedResponse),
    ):
        device(b"\x69GetRandom")


def test_oversized_request_never_reaches_the_driver(device_file: Path) -> None:
    driver = _Driver(lambda request: b"")
    with (
        mock.patch.object(device_module, "_ioctl", driver),
        NsmDevice(str(device_file)) as device,
        pytest.raises(NsmInputTooLarge),
    ):
        device(b"\x00" * (MAX_REQUEST_SIZE + 1))
    assert driver.calls == []


def test_closed_device_is_unavailable(device_file: Path) -> None:
    device = NsmDevice(str(device_file))
    device.close()
    device.close()  # idempotent
    with pytest.raises(NsmUnavailable, match="closed"):
        device(b"\x69GetRandom")
