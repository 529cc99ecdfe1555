"""The NSM device protocol: CBOR requests and responses, as aws-nitro-enclaves-nsm-api encodes them.

Requests and responses are Rust enums serialised by serde in its default, externally tagged form:

* a variant with fields is a one-entry map ``{"Variant": {field: value, ...}}``, fields in declaration order;
* a variant without fields is its bare name, a text string (``"DescribeNSM"``, ``"GetRandom"``, and the
  ``"LockPCR"``/``"LockPCRs"`` responses);
* an error is ``{"Error": "<ErrorCode>"}``.

Requests are at most :data:`MAX_REQUEST_SIZE` bytes; responses are read from a :data:`MAX_RESPONSE_SIZE`
buffer. Decoding is strict about what it reads (types, ranges, sizes) and, like serde, ignores map entries it
does not know. Every failure is an :class:`~enclavekit.nsm.errors.NsmError`: decoding garbage raises nothing
else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from enclavekit.attestation import cbor
from enclavekit.attestation.errors import Malformed
from enclavekit.nsm.errors import (
    NsmDeviceError,
    NsmInputTooLarge,
    NsmInvalidArgument,
    NsmInvalidIndex,
    NsmInvalidOperation,
    NsmInvalidResponse,
    NsmMalformedResponse,
    device_error,
)

__all__ = [
    "MAX_ATTESTATION_FIELD",
    "MAX_REQUEST_SIZE",
    "MAX_RESPONSE_SIZE",
    "AttestationRequest",
    "AttestationResponse",
    "DescribeNsmRequest",
    "DescribePcrRequest",
    "DescribePcrResponse",
    "Digest",
    "ErrorCode",
    "ErrorResponse",
    "ExtendPcrRequest",
    "ExtendPcrResponse",
    "GetRandomRequest",
    "GetRandomResponse",
    "LockPcrRequest",
    "LockPcrResponse",
    "LockPcrsRequest",
    "LockPcrsResponse",
    "NsmDescription",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "describe_request",
    "encode_request",
    "encode_response",
]

MAX_REQUEST_SIZE = 0x1000
"""Largest CBOR request the NSM driver accepts (``NSM_REQUEST_MAX_SIZE``)."""
MAX_RESPONSE_SIZE = 0x3000
"""Size of the response buffer handed to the driver (``NSM_RESPONSE_MAX_SIZE``)."""
MAX_ATTESTATION_FIELD = 1024
"""Largest ``user_data``, ``nonce`` and ``public_key`` of an attestation request."""
_U16 = 0xFFFF


class ErrorCode(enum.StrEnum):
    """The NSM's ``ErrorCode`` enum, by the names it has on the wire."""

    SUCCESS = "Success"
    INVALID_ARGUMENT = "InvalidArgument"
    INVALID_INDEX = "InvalidIndex"
    INVALID_RESPONSE = "InvalidResponse"
    READ_ONLY_INDEX = "ReadOnlyIndex"
    INVALID_OPERATION = "InvalidOperation"
    BUFFER_TOO_SMALL = "BufferTooSmall"
    INPUT_TOO_LARGE = "InputTooLarge"
    INTERNAL_ERROR = "InternalError"


class Digest(enum.StrEnum):
    """The hash of the PCR bank (Nitro: SHA384)."""

    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"


# --- requests -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DescribePcrRequest:
    """Read PCR ``index``: its value and whether it is locked."""

    index: int

    def __post_init__(self) -> None:
        _check_u16(self.index, "PCR index", NsmInvalidIndex)


@dataclass(frozen=True, slots=True)
class ExtendPcrRequest:
    """Extend PCR ``index`` with ``data``: PCR ← H(PCR ‖ data)."""

    index: int
    data: bytes

    def __post_init__(self) -> None:
        _check_u16(self.index, "PCR index", NsmInvalidIndex)
        _check_bytes(self.data, "data")


@dataclass(frozen=True, slots=True)
class LockPcrRequest:
    """Lock PCR ``index`` against further extension."""

    index: int

    def __post_init__(self) -> None:
        _check_u16(self.index, "PCR index", NsmInvalidIndex)


@dataclass(frozen=True, slots=True)
class LockPcrsRequest:
    """Lock PCRs ``0 .. range - 1``."""

    range: int

    def __post_init__(self) -> None:
        _check_u16(self.range, "PCR range", NsmInvalidIndex)


@dataclass(frozen=True, slots=True)
class DescribeNsmRequest:
    """Ask for the NSM's version, module id and PCR bank description."""


@dataclass(frozen=True, slots=True)
class AttestationRequest:
    """Ask for a signed attestation document carrying these optional fields (each at most 1024 bytes)."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("user_data", "nonce", "public_key"):
            value = getattr(self, name)
            if value is None:
                continue
            _check_bytes(value, name)
            if len(value) > MAX_ATTESTATION_FIELD:
                raise NsmInputTooLarge(f"{name} is {len(value)} bytes; the NSM accepts at most {MAX_ATTESTATION_FIELD}")


@dataclass(frozen=True, slots=True)
class GetRandomRequest:
    """Ask for entropy (the NSM returns 256 bytes)."""


Request: TypeAlias = (
    DescribePcrRequest
    | ExtendPcrRequest
    | LockPcrRequest
    | LockPcrsRequest
    | DescribeNsmRequest
    | AttestationRequest
    | GetRandomRequest
)

# --- responses ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DescribePcrResponse:
    lock: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class ExtendPcrResponse:
    data: bytes


@dataclass(frozen=True, slots=True)
class LockPcrResponse:
    pass


@dataclass(frozen=True, slots=True)
class LockPcrsResponse:
    pass


@dataclass(frozen=True, slots=True)
class NsmDescription:
    """What ``DescribeNSM`` reports: the NSM's API version, its module id and its PCR bank."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: Digest

    @property
    def version(self) -> str:
        return f"{self.version_major}.{self.version_minor}.{self.version_patch}"


@dataclass(frozen=True, slots=True)
class AttestationResponse:
    """The signed attestation document (a COSE_Sign1), as bytes."""

    document: bytes


@dataclass(frozen=True, slots=True)
class GetRandomResponse:
    random: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The NSM refused the request."""

    error: ErrorCode

    def exception(self, request: Request | None = None) -> NsmDeviceError:
        """The enclavekit exception for this error, naming ``request`` (without its data) when given."""
        if self.error is ErrorCode.SUCCESS:  # never sent by an NSM; decode_response refuses it
            return NsmInvalidResponse("the NSM answered Error(Success)")
        refused = "a request" if request is None else describe_request(request)
        return device_error(self.error.value, f"the NSM refused {refused}: {self.error.value}")


Response: TypeAlias = (
    DescribePcrResponse
    | ExtendPcrResponse
    | LockPcrResponse
    | LockPcrsResponse
    | NsmDescription
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)

_VARIANTS: dict[type[Any], str] = {
    DescribePcrRequest: "DescribePCR",
    ExtendPcrRequest: "ExtendPCR",
    LockPcrRequest: "LockPCR",
    LockPcrsRequest: "LockPCRs",
    DescribeNsmRequest: "DescribeNSM",
    AttestationRequest: "Attestation",
    GetRandomRequest: "GetRandom",
}


def describe_request(request: Request) -> str:
    """A short name for ``request`` fit for messages and logs: its variant and index, never its data."""
    name = _VARIANTS[type(request)]
    if isinstance(request, DescribePcrRequest | ExtendPcrRequest | LockPcrRequest):
        return f"{name}(index={request.index})"
    if isinstance(request, LockPcrsRequest):
        return f"{name}(range={request.range})"
    return name


# --- encoding -------------------------------------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    """The CBOR bytes of ``request``; raises :class:`NsmInputTooLarge` over :data:`MAX_REQUEST_SIZE`."""
    item: Any
    match request:
        case DescribePcrRequest(index=index):
            item = {"DescribePCR": {"index": index}}
        case ExtendPcrRequest(index=index, data=data):
            item = {"ExtendPCR": {"index": index, "data": bytes(data)}}
        case LockPcrRequest(index=index):
            item = {"LockPCR": {"index": index}}
        case LockPcrsRequest(range=range_):
            item = {"LockPCRs": {"range": range_}}
        case DescribeNsmRequest():
            item = "DescribeNSM"
        case AttestationRequest(user_data=user_data, nonce=nonce, public_key=public_key):
            item = {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
        case GetRandomRequest():
            item = "GetRandom"
        case _:  # pragma: no cover - exhaustive over Request
            raise TypeError(f"not an NSM request: {request!r}")
    data = cbor.encode(item)
    if len(data) > MAX_REQUEST_SIZE:
        raise NsmInputTooLarge(f"request is {len(data)} bytes; the NSM accepts at most {MAX_REQUEST_SIZE}")
    return data


def encode_response(response: Response) -> bytes:
    """The CBOR bytes of ``response``, as the NSM writes them (used by the simulator)."""
    item: Any
    match response:
        case DescribePcrResponse(lock=lock, data=data):
            item = {"DescribePCR": {"lock": lock, "data": data}}
        case ExtendPcrResponse(data=data):
            item = {"ExtendPCR": {"data": data}}
        case LockPcrResponse():
            item = "LockPCR"
        case LockPcrsResponse():
            item = "LockPCRs"
        case NsmDescription():
            item = {
                "DescribeNSM": {
                    "version_major": response.version_major,
                    "version_minor": response.version_minor,
                    "version_patch": response.version_patch,
                    "module_id": response.module_id,
                    "max_pcrs": response.max_pcrs,
                    "locked_pcrs": list(response.locked_pcrs),
                    "digest": response.digest.value,
                }
            }
        case AttestationResponse(document=document):
            item = {"Attestation": {"document": document}}
        case GetRandomResponse(random=random):
            item = {"GetRandom": {"random": random}}
        case ErrorResponse(error=error):
            item = {"Error": error.value}
        case _:  # pragma: no cover - exhaustive over Response
            raise TypeError(f"not an NSM response: {response!r}")
    return cbor.encode(item)


# --- decoding -------------------------------------------------------------------------------------------------


def decode_response(data: bytes) -> Response:
    """Parse the NSM's answer. An ``{"Error": ...}`` answer is returned as :class:`ErrorResponse`.

    Raises :class:`NsmMalformedResponse` for anything that is not a well-formed response.
    """
    try:
        item = cbor.decode(data, max_size=MAX_RESPONSE_SIZE, what="NSM response")
    except Malformed as exc:
        raise NsmMalformedResponse(exc.message) from exc
    variant, body = _variant(item, NsmMalformedResponse, "NSM response")
    fields = _Fields(body, variant, NsmMalformedResponse)
    match variant:
        case "DescribePCR":
            return DescribePcrResponse(lock=fields.boolean("lock"), data=fields.byte_string("data"))
        case "ExtendPCR":
            return ExtendPcrResponse(data=fields.byte_string("data"))
        case "LockPCR":
            fields.unit()
            return LockPcrResponse()
        case "LockPCRs":
            fields.unit()
            return LockPcrsResponse()
        case "DescribeNSM":
            digest = fields.text_string("digest")
            if digest not in _DIGEST_NAMES:
                raise NsmMalformedResponse(f"NSM response: DescribeNSM digest {_short(digest)} is not known")
            return NsmDescription(
                version_major=fields.u16("version_major"),
                version_minor=fields.u16("version_minor"),
                version_patch=fields.u16("version_patch"),
                module_id=fields.text_string("module_id"),
                max_pcrs=fields.u16("max_pcrs"),
                locked_pcrs=fields.u16_set("locked_pcrs"),
                digest=Digest(digest),
            )
        case "Attestation":
            return AttestationResponse(document=fields.byte_string("document"))
        case "GetRandom":
            return GetRandomResponse(random=fields.byte_string("random"))
        case "Error":
            if not isinstance(body, str) or body not in _ERROR_NAMES:
                raise NsmMalformedResponse(f"NSM response: unknown error {_short(body)}")
            return ErrorResponse(ErrorCode(body))
    raise NsmMalformedResponse(f"NSM response: unknown variant {_short(variant)}")


def decode_request(data: bytes) -> Request:
    """Parse a request as the NSM does (used by the simulator).

    Raises the device error the NSM answers with: :class:`NsmInputTooLarge` over :data:`MAX_REQUEST_SIZE`,
    :class:`NsmInvalidOperation` for bytes that are no known request, :class:`NsmInvalidArgument` for a
    known request with bad fields, :class:`NsmInvalidIndex` for an index beyond 16 bits.
    """
    if len(data) > MAX_REQUEST_SIZE:
        raise NsmInputTooLarge(f"request is {len(data)} bytes; the NSM accepts at most {MAX_REQUEST_SIZE}")
    try:
        item = cbor.decode(data, max_size=MAX_REQUEST_SIZE, what="NSM request")
    except Malformed as exc:
        raise NsmInvalidOperation(exc.message) from exc
    variant, body = _variant(item, NsmInvalidOperation, "NSM request")
    fields = _Fields(body, variant, NsmInvalidArgument)
    match variant:
        case "DescribePCR":
            return DescribePcrRequest(fields.index("index"))
        case "ExtendPCR":
            return ExtendPcrRequest(fields.index("index"), fields.byte_string("data"))
        case "LockPCR":
            return LockPcrRequest(fields.index("index"))
        case "LockPCRs":
            return LockPcrsRequest(fields.index("range"))
        case "DescribeNSM":
            fields.unit()
            return DescribeNsmRequest()
        case "GetRandom":
            fields.unit()
            return GetRandomRequest()
        case "Attestation":
            # serde reads a missing Option field as None, and so does the NSM
            return AttestationRequest(
                user_data=fields.optional_bytes("user_data"),
                nonce=fields.optional_bytes("nonce"),
                public_key=fields.optional_bytes("public_key"),
            )
    raise NsmInvalidOperation(f"NSM request: unknown operation {_short(variant)}")


_Unit = object()
_ERROR_NAMES = frozenset(code.value for code in ErrorCode if code is not ErrorCode.SUCCESS)
_DIGEST_NAMES = frozenset(digest.value for digest in Digest)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _variant(item: Any, error: type[NsmMalformedResponse] | type[NsmDeviceError], what: str) -> tuple[str, Any]:
    """Split an externally tagged enum value into its variant name and body (``_Unit`` for bare names)."""
    if isinstance(item, str):
        return item, _Unit
    if isinstance(item, dict) and len(item) == 1:
        ((name, body),) = item.items()
        if isinstance(name, str):
            return name, body
    raise error(f"{what}: expected a variant name or a one-entry map keyed by it, got {_describe(item)}")


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        return f"a map of {len(item)} entries"
    return type(item).__name__


class _Fields:
    """Typed access to the fields of one variant's body; every failure raises ``error``."""

    __slots__ = ("_body", "_error", "_variant")

    def __init__(self, body: Any, variant: str, error: type[NsmMalformedResponse] | type[NsmDeviceError]) -> None:
        self._body = body
        self._variant = variant
        self._error = error

    def _fail(self, message: str) -> NsmMalformedResponse | NsmDeviceError:
        return self._error(f"{self._variant}: {message}")

    def _map(self) -> Mapping[Any, Any]:
        if not isinstance(self._body, dict):
            raise self._fail(f"expected a map of fields, got {_describe(self._body)}")
        return self._body

    def _get(self, name: str) -> Any:
        body = self._map()
        if name not in body:
            raise self._fail(f"missing field {name!r}")
        return body[name]

    def unit(self) -> None:
        if self._body is not _Unit:
            raise self._fail("expected a bare variant name without fields")

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self._fail(f"{name} must be a boolean")
        return value

    def byte_string(self, name: str) -> bytes:
        value = self._get(name)
        if not isinstance(value, bytes):
            raise self._fail(f"{name} must be a byte string")
        return value

    def optional_bytes(self, name: str) -> bytes | None:
        body = self._map()
        value = body.get(name)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise self._fail(f"{name} must be a byte string or null")
        return value

    def text_string(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._fail(f"{name} must be a text string")
        return value

    def u16(self, name: str) -> int:
        value = self._get(name)
        if type(value) is not int or not 0 <= value <= _U16:
            raise self._fail(f"{name} must be an integer in 0..{_U16}")
        return value

    def index(self, name: str) -> int:
        value = self._get(name)
        if type(value) is not int:
            raise self._fail(f"{name} must be an integer")
        if not 0 <= value <= _U16:
            raise NsmInvalidIndex(f"{self._variant}: {name} {value} is outside 0..{_U16}")
        return value

    def u16_set(self, name: str) -> tuple[int, ...]:
        value = self._get(name)
        if not isinstance(value, list) or any(type(v) is not int or not 0 <= v <= _U16 for v in value):
            raise self._fail(f"{name} must be an array of integers in 0..{_U16}")
        return tuple(sorted(set(value)))


def _check_u16(value: int, what: str, error: type[NsmDeviceError]) -> None:
    if type(value) is not int:
        raise NsmInvalidArgument(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= _U16:
        raise error(f"{what} {value} is outside 0..{_U16}")


def _check_bytes(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise NsmInvalidArgument(f"{what} must be bytes, got {type(value).__name__}")
