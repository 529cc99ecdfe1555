"""The real NSM: ``/dev/nsm`` inside a Nitro Enclave, driven by one ioctl.

The Linux driver (``drivers/misc/nsm.c``, ``include/uapi/linux/nsm.h``) takes ``NSM_IOCTL_RAW`` =
``_IOWR(0x0A, 0, struct nsm_raw)`` = ``0xC0200A00`` with::

    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };   /* 32 bytes */

The request is at most 0x1000 bytes; the response buffer is 0x3000 bytes and the driver writes the length
it used back into ``response.len``. ``EMSGSIZE`` means the request was too large (as in aws-nitro-enclaves-
nsm-api); any other errno is an internal error.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from types import TracebackType

from enclavekit.nsm.errors import NsmInputTooLarge, NsmInternalError, NsmMalformedResponse, NsmUnavailable
from enclavekit.nsm.messages import MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE

__all__ = [
    "DEFAULT_PATH",
    "NSM_IOCTL_RAW",
    "NSM_RAW",
    "NsmDevice",
    "ioctl_number",
    "pack_raw",
    "unpack_raw",
]

DEFAULT_PATH = "/dev/nsm"
NSM_MAGIC = 0x0A
NSM_RAW = struct.Struct("=4Q")
"""``struct nsm_raw``: request.addr, request.len, response.addr, response.len, native-endian u64s."""


def ioctl_number(kind: int, number: int, size: int, *, read: bool = True, write: bool = True) -> int:
    """Linux's ``_IOC(dir, type, nr, size)`` as used by asm-generic (x86_64, aarch64)."""
    direction = (2 if read else 0) | (1 if write else 0)
    return (direction << 30) | (size << 16) | (kind << 8) | number


NSM_IOCTL_RAW = ioctl_number(NSM_MAGIC, 0, NSM_RAW.size)
"""``_IOWR(0x0A, 0, struct nsm_raw)`` = ``0xC0200A00``."""


def pack_raw(request_addr: int, request_len: int, response_addr: int, response_len: int) -> bytearray:
    """The ``struct nsm_raw`` for these two buffers, as a mutable buffer the driver can update."""
    return bytearray(NSM_RAW.pack(request_addr, request_len, response_addr, response_len))


def unpack_raw(raw: bytes | bytearray) -> tuple[int, int, int, int]:
    """``(request_addr, request_len, response_addr, response_len)`` of a ``struct nsm_raw``."""
    request_addr, request_len, response_addr, response_len = NSM_RAW.unpack(raw)
    return request_addr, request_len, response_addr, response_len


def _ioctl(fd: int, request: int, arg: bytearray) -> None:
    """The system call (``arg`` is updated in place), apart so tests can stand in for the absent device."""
    fcntl.ioctl(fd, request, arg, True)


class NsmDevice:
    """A transport to the real NSM: ``device(request_cbor) -> response_cbor``. Thread-safe; close it when done.

    Raises :class:`NsmUnavailable` at construction when there is no NSM device (not inside a Nitro Enclave).
    """

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NsmUnavailable(
                f"{path} does not exist: this is not a Nitro Enclave. Use the NSM simulator "
                "(enclavekit.nsm.NsmSimulator, or `enclavekit nsm attest --state DIR`) outside an enclave."
            ) from exc
        except OSError as exc:
            raise NsmUnavailable(f"cannot open {path}: {exc.strerror or exc}") from exc

    def __call__(self, request: bytes) -> bytes:
        if len(request) > MAX_REQUEST_SIZE:
            raise NsmInputTooLarge(f"request is {len(request)} bytes; the NSM accepts at most {MAX_REQUEST_SIZE}")
        with self._lock:
            if self._fd is None:
                raise NsmUnavailable(f"{self.path} is closed")
            request_buffer = ctypes.create_string_buffer(bytes(request), len(request))
            response_buffer = ctypes.create_string_buffer(MAX_RESPONSE_SIZE)
            raw = pack_raw(
                ctypes.addressof(request_buffer),
                len(request),
                ctypes.addressof(response_buffer),
                MAX_RESPONSE_SIZE,
            )
            try:
                _ioctl(self._fd, NSM_IOCTL_RAW, raw)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise NsmInputTooLarge(f"the NSM driver refused a {len(request)}-byte request") from exc
                raise NsmInternalError(f"ioctl on {self.path} failed: {exc.strerror or exc}") from exc
            response_len = unpack_raw(raw)[3]
            if response_len > MAX_RESPONSE_SIZE:
                raise NsmMalformedResponse(
                    f"the NSM driver reports a {response_len}-byte response in a {MAX_RESPONSE_SIZE}-byte buffer"
                )
            return ctypes.string_at(response_buffer, response_len)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> NsmDevice:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
