"""RPC frames: ``version u8 ‖ kind u8 ‖ length u32 ‖ payload`` (big-endian), ``docs/wire-rpc.md`` in prose.

The length is checked against the limit from the 6-byte header alone, before the payload is read. Payloads:

* request ``1``:  ``id u64 ‖ timeout_ms u32 ‖ route_length u8 ‖ route ‖ body`` (body: the request model's JSON)
* response ``2``: ``id u64 ‖ body`` (the response model's JSON)
* error ``3``:    ``id u64 ‖ code_length u8 ‖ code ‖ message`` (UTF-8); id 0 is about the whole connection
* cancel ``4``:   ``id u64``
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Final

from enclavekit.rpc.errors import FrameMalformed, FrameTooLarge, FrameVersionUnsupported

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER_SIZE",
    "FRAME_VERSION",
    "MAX_ERROR_MESSAGE",
    "Cancel",
    "ErrorFrame",
    "Frame",
    "FrameKind",
    "Request",
    "Response",
    "decode_frame",
    "frame_length",
]

FRAME_VERSION: Final = 1
FRAME_HEADER_SIZE: Final = 6
DEFAULT_MAX_FRAME_SIZE: Final = 4 * 1024 * 1024
"""Largest frame (header included) accepted by default; fits one channel record at the default limit."""
MAX_ERROR_MESSAGE: Final = 1024
MAX_ID: Final = 2**64 - 1
MAX_TIMEOUT_MS: Final = 2**32 - 1

_HEADER = struct.Struct(">BBI")
_ID = struct.Struct(">Q")
_REQUEST_FIXED = struct.Struct(">QIB")
ROUTE_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")
ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


class FrameKind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    CANCEL = 4


_KINDS: Final = frozenset(int(k) for k in FrameKind)


def _check_id(request_id: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= request_id <= MAX_ID:
        raise FrameMalformed(f"request id {request_id} is out of range")


def _pack(kind: FrameKind, payload: bytes) -> bytes:
    return _HEADER.pack(FRAME_VERSION, kind, len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    route: str
    timeout_ms: int
    body: bytes

    def __post_init__(self) -> None:
        _check_id(self.id)
        if not ROUTE_NAME.fullmatch(self.route):
            raise FrameMalformed("route names are 1..128 characters of [A-Za-z0-9_.-/]")
        if not 0 <= self.timeout_ms <= MAX_TIMEOUT_MS:
            raise FrameMalformed("timeout_ms must fit in 32 bits")

    def to_bytes(self) -> bytes:
        route = self.route.encode("ascii")
        return _pack(FrameKind.REQUEST, _REQUEST_FIXED.pack(self.id, self.timeout_ms, len(route)) + route + self.body)


@dataclass(frozen=True, slots=True)
class Response:
    id: int
    body: bytes

    def __post_init__(self) -> None:
        _check_id(self.id)

    def to_bytes(self) -> bytes:
        return _pack(FrameKind.RESPONSE, _ID.pack(self.id) + self.body)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    id: int
    code: str
    message: str

    def __post_init__(self) -> None:
        _check_id(self.id, allow_zero=True)
        if not ERROR_CODE.fullmatch(self.code):
            raise FrameMalformed("error codes are 1..64 characters of [a-z0-9_]")
        if len(self.message.encode("utf-8")) > MAX_ERROR_MESSAGE:
            raise FrameMalformed(f"error messages are at most {MAX_ERROR_MESSAGE} bytes")

    @classmethod
    def build(cls, request_id: int, code: str, message: str) -> ErrorFrame:
        """An error frame, with ``message`` shortened to fit and ``code`` replaced if it is not a valid code."""
        encoded = message.encode("utf-8")[:MAX_ERROR_MESSAGE]
        safe_code = code if ERROR_CODE.fullmatch(code) else "error"
        return cls(request_id, safe_code, encoded.decode("utf-8", "ignore"))

    def to_bytes(self) -> bytes:
        code = self.code.encode("ascii")
        return _pack(FrameKind.ERROR, _ID.pack(self.id) + bytes([len(code)]) + code + self.message.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Cancel:
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)

    def to_bytes(self) -> bytes:
        return _pack(FrameKind.CANCEL, _ID.pack(self.id))


Frame = Request | Response | ErrorFrame | Cancel


def frame_length(header: bytes, *, max_frame_size: int) -> int:
    """The payload length a 6-byte frame header announces, after checking version, kind and the size limit."""
    if len(header) != FRAME_HEADER_SIZE:
        raise FrameMalformed(f"a frame header is {FRAME_HEADER_SIZE} bytes")
    version, kind, length = _HEADER.unpack(header)
    if version != FRAME_VERSION:
        raise FrameVersionUnsupported(f"frame version {version} is not {FRAME_VERSION}")
    if kind not in _KINDS:
        raise FrameMalformed(f"unknown frame kind {kind}")
    if length > max_frame_size - FRAME_HEADER_SIZE:
        raise FrameTooLarge(f"frame of {length + FRAME_HEADER_SIZE} bytes; the limit is {max_frame_size}")
    return int(length)


def decode_frame(data: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Frame:
    """Parse one whole frame. Raises only :class:`FrameMalformed`, :class:`FrameTooLarge` or a version error."""
    if len(data) < FRAME_HEADER_SIZE:
        raise FrameMalformed(f"a frame is at least {FRAME_HEADER_SIZE} bytes")
    length = frame_length(bytes(data[:FRAME_HEADER_SIZE]), max_frame_size=max_frame_size)
    if length != len(data) - FRAME_HEADER_SIZE:
        raise FrameMalformed(f"frame header says {length} payload bytes, the frame has {len(data) - 6}")
    kind = data[1]
    payload = bytes(data[FRAME_HEADER_SIZE:])
    if kind == FrameKind.REQUEST:
        if len(payload) < _REQUEST_FIXED.size:
            raise FrameMalformed("request frame too short")
        request_id, timeout_ms, route_length = _REQUEST_FIXED.unpack_from(payload)
        end = _REQUEST_FIXED.size + route_length
        if len(payload) < end:
            raise FrameMalformed("request frame truncated in its route")
        try:
            route = payload[_REQUEST_FIXED.size : end].decode("ascii")
        except UnicodeDecodeError:
            raise FrameMalformed("route is not ASCII") from None
        return Request(request_id, route, timeout_ms, payload[end:])
    if len(payload) < _ID.size:
        raise FrameMalformed("frame too short for its id")
    (request_id,) = _ID.unpack_from(payload)
    rest = payload[_ID.size :]
    if kind == FrameKind.RESPONSE:
        return Response(request_id, rest)
    if kind == FrameKind.CANCEL:
        if rest:
            raise FrameMalformed("cancel frame has trailing bytes")
        return Cancel(request_id)
    if not rest or len(rest) < 1 + rest[0]:
        raise FrameMalformed("error frame truncated in its code")
    try:
        code = rest[1 : 1 + rest[0]].decode("ascii")
        message = rest[1 + rest[0] :].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameMalformed("error code or message is not valid text") from None
    return ErrorFrame(request_id, code, message)
