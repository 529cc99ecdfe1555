"""The NSM wire protocol: requests and responses exactly as aws-nitro-enclaves-nsm-api encodes them.

The expected bytes below are written out by hand from the protocol facts (serde's externally tagged enums:
``{"Variant": {fields in declaration order}}``, bare strings for unit variants, ``{"Error": name}``), so a
change of encoding cannot slip through by being consistent with itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.errors import InfrastructureError
from enclavekit.nsm import Nsm
from enclavekit.nsm.errors import (
    NsmBufferTooSmall,
    NsmDeviceError,
    NsmError,
    NsmInputTooLarge,
    NsmInternalError,
    NsmInvalidArgument,
    NsmInvalidIndex,
    NsmInvalidOperation,
    NsmInvalidResponse,
    NsmMalformedResponse,
    NsmReadOnlyIndex,
)
from enclavekit.nsm.messages import (
    MAX_REQUEST_SIZE,
    MAX_RESPONSE_SIZE,
    AttestationRequest,
    AttestationResponse,
    DescribeNsmRequest,
    DescribePcrRequest,
    DescribePcrResponse,
    Digest,
    ErrorCode,
    ErrorResponse,
    ExtendPcrRequest,
    ExtendPcrResponse,
    GetRandomRequest,
    GetRandomResponse,
    LockPcrRequest,
    LockPcrResponse,
    LockPcrsRequest,
    LockPcrsResponse,
    NsmDescription,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)


def _text(value: str) -> str:
    """CBOR text string header + UTF-8, as hex (lengths below 24 only)."""
    assert len(value) < 24
    return f"{0x60 + len(value):02x}" + value.encode().hex()


def _canned(response: bytes) -> Callable[[bytes], bytes]:
    """A transport that answers every request with ``response`` (to feed the client exact device bytes)."""

    def transport(request: bytes) -> bytes:
        return response

    return transport


# --- requests: the documented encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected_hex"),
    [
        (DescribeNsmRequest(), _text("DescribeNSM")),
        (GetRandomRequest(), _text("GetRandom")),
        (DescribePcrRequest(3), "a1" + _text("DescribePCR") + "a1" + _text("index") + "03"),
        (LockPcrRequest(16), "a1" + _text("LockPCR") + "a1" + _text("index") + "10"),
        (LockPcrsRequest(16), "a1" + _text("LockPCRs") + "a1" + _text("range") + "10"),
        (
            ExtendPcrRequest(300, b"\x01\x02"),
            "a1" + _text("ExtendPCR") + "a2" + _text("index") + "19012c" + _text("data") + "420102",
        ),
        (
            AttestationRequest(),
            "a1"
            + _text("Attestation")
            + "a3"
            + _text("user_data")
            + "f6"
            + _text("nonce")
            + "f6"
            + _text("public_key")
            + "f6",
        ),
        (
            AttestationRequest(user_data=b"u", nonce=b"n", public_key=b"k"),
            "a1"
            + _text("Attestation")
            + "a3"
            + _text("user_data")
            + "4175"
            + _text("nonce")
            + "416e"
            + _text("public_key")
            + "416b",
        ),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_requests_are_encoded_as_the_nsm_driver_expects(request_: Request, expected_hex: str) -> None:
    assert encode_request(request_).hex() == expected_hex
    assert decode_request(bytes.fromhex(expected_hex)) == request_


def test_attestation_request_fields_keep_the_nsm_api_declaration_order() -> None:
    body = cbor2.loads(encode_request(AttestationRequest(nonce=b"n")))["Attestation"]
    assert list(body) == ["user_data", "nonce", "public_key"]
    assert body == {"user_data": None, "nonce": b"n", "public_key": None}


def test_three_full_size_attestation_fields_fit_in_one_request() -> None:
    # real documents carry 1024-byte user_data, nonce and public_key at once (the blocky samples)
    request = AttestationRequest(user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024)
    assert len(encode_request(request)) <= MAX_REQUEST_SIZE


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_oversized_attestation_field_is_refused_before_it_reaches_the_nsm(field: str) -> None:
    with pytest.raises(NsmInputTooLarge, match=field) as caught:
        AttestationRequest(**{field: b"x" * 1025})
    assert caught.value.code == "nsm_input_too_large"


def test_request_over_the_driver_limit_is_refused() -> None:
    with pytest.raises(NsmInputTooLarge):
        encode_request(ExtendPcrRequest(16, b"x" * MAX_REQUEST_SIZE))


@pytest.mark.parametrize("index", [-1, 0x10000, 2**64])
def test_pcr_index_outside_u16_is_refused(index: int) -> None:
    with pytest.raises(NsmInvalidIndex):
        DescribePcrRequest(index)


def test_boolean_smuggled_as_pcr_index_is_refused() -> None:
    with pytest.raises(NsmInvalidArgument):
        ExtendPcrRequest(True, b"x")


# --- responses -------------------------------------------------------------------------------------------------


def test_describe_nsm_response_is_read_with_its_documented_fields() -> None:
    # as mrgatto/nsm-cli shows a real NSM answering (field order of the nsm-api Response enum)
    wire = cbor2.dumps(
        {
            "DescribeNSM": {
                "version_major": 1,
                "version_minor": 0,
                "version_patch": 0,
                "module_id": "i-09eb1f8c065b7f2e8-enc017d91012b842240",
                "max_pcrs": 32,
                "locked_pcrs": list(range(16)),
                "digest": "SHA384",
            }
        }
    )
    description = decode_response(wire)
    assert description == NsmDescription(
        1, 0, 0, "i-09eb1f8c065b7f2e8-enc017d91012b842240", 32, tuple(range(16)), Digest.SHA384
    )
    assert isinstance(description, NsmDescription)
    assert description.version == "1.0.0"
    assert encode_response(description) == wire


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ({"DescribePCR": {"lock": True, "data": bytes(48)}}, DescribePcrResponse(True, bytes(48))),
        ({"ExtendPCR": {"data": b"\x11" * 48}}, ExtendPcrResponse(b"\x11" * 48)),
        ("LockPCR", LockPcrResponse()),
        ("LockPCRs", LockPcrsResponse()),
        ({"Attestation": {"document": b"\x84"}}, AttestationResponse(b"\x84")),
        ({"GetRandom": {"random": b"r" * 256}}, GetRandomResponse(b"r" * 256)),
        ({"Error": "ReadOnlyIndex"}, ErrorResponse(ErrorCode.READ_ONLY_INDEX)),
    ],
    ids=lambda value: type(value).__name__,
)
def test_responses_are_read_as_the_device_writes_them(wire: object, expected: Response) -> None:
    data = cbor2.dumps(wire)
    assert decode_response(data) == expected
    assert encode_response(expected) == data


def test_unknown_response_fields_are_ignored_like_serde_does() -> None:
    wire = cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(48), "future": 1}})
    assert decode_response(wire) == DescribePcrResponse(False, bytes(48))


@pytest.mark.parametrize(
    ("name", "error", "code"),
    [
        ("InvalidArgument", NsmInvalidArgument, "nsm_invalid_argument"),
        ("InvalidIndex", NsmInvalidIndex, "nsm_invalid_index"),
        ("InvalidResponse", NsmInvalidResponse, "nsm_invalid_response"),
        ("ReadOnlyIndex", NsmReadOnlyIndex, "nsm_read_only_index"),
        ("InvalidOperation", NsmInvalidOperation, "nsm_invalid_operation"),
        ("BufferTooSmall", NsmBufferTooSmall, "nsm_buffer_too_small"),
        ("InputTooLarge", NsmInputTooLarge, "nsm_input_too_large"),
        ("InternalError", NsmInternalError, "nsm_internal_error"),
    ],
)
def test_every_device_error_is_raised_as_its_own_error_code(name: str, error: type[NsmDeviceError], code: str) -> None:
    nsm = Nsm(_canned(cbor2.dumps({"Error": name})))
    with pytest.raises(error) as caught:
        nsm.describe_pcr(7)
    assert caught.value.code == code
    assert caught.value.device_code == name
    assert "DescribePCR(index=7)" in caught.value.message


def test_internal_errors_are_retryable_and_refusals_are_not() -> None:
    assert issubclass(NsmInternalError, InfrastructureError)
    assert NsmInternalError("x").retryable
    assert not NsmReadOnlyIndex("x").retryable


def test_error_response_claiming_success_is_malformed() -> None:
    with pytest.raises(NsmMalformedResponse):
        decode_response(cbor2.dumps({"Error": "Success"}))


def test_answer_to_another_request_is_an_invalid_response() -> None:
    nsm = Nsm(_canned(cbor2.dumps("LockPCR")))
    with pytest.raises(NsmInvalidResponse, match="GetRandom"):
        nsm.get_random()


def test_attestation_document_is_returned_as_sent() -> None:
    nsm = Nsm(_canned(cbor2.dumps({"Attestation": {"document": b"doc"}})))
    assert nsm.attestation(nonce=b"n") == b"doc"


def test_response_larger_than_the_response_buffer_is_malformed() -> None:
    wire = cbor2.dumps({"GetRandom": {"random": b"r" * MAX_RESPONSE_SIZE}})
    with pytest.raises(NsmMalformedResponse, match="over the limit"):
        decode_response(wire)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\xff",
        cbor2.dumps("LockPCR") + b"\x00",  # trailing bytes
        cbor2.dumps({"DescribePCR": {"lock": 1, "data": bytes(48)}}),  # 1 is not a bool
        cbor2.dumps({"DescribePCR": {"lock": True}}),
        cbor2.dumps({"DescribePCR": "lock"}),
        cbor2.dumps({"ExtendPCR": {"data": "text"}}),
        cbor2.dumps({"DescribeNSM": {"version_major": 1}}),
        cbor2.dumps({"Error": "Exploded"}),
        cbor2.dumps({"Error": 3}),
        cbor2.dumps({"LockPCR": {}}),
        cbor2.dumps({"GetRandom": {"random": b"r"}, "Error": "InternalError"}),
        cbor2.dumps(["LockPCR"]),
        cbor2.dumps({1: {"data": b""}}),
        cbor2.dumps("Teapot"),
    ],
)
def test_malformed_responses_raise_nsm_malformed_response(wire: bytes) -> None:
    with pytest.raises(NsmMalformedResponse):
        decode_response(wire)


def test_describe_nsm_with_out_of_range_versions_is_malformed() -> None:
    body = {
        "version_major": 70000,
        "version_minor": 0,
        "version_patch": 0,
        "module_id": "m",
        "max_pcrs": 32,
        "locked_pcrs": [],
        "digest": "SHA384",
    }
    with pytest.raises(NsmMalformedResponse, match="version_major"):
        decode_response(cbor2.dumps({"DescribeNSM": body}))


# --- requests as the device (simulator) reads them ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\xff\xff", NsmInvalidOperation),
        (cbor2.dumps("Reboot"), NsmInvalidOperation),
        (cbor2.dumps({"DescribePCR": {"index": "0"}}), NsmInvalidArgument),
        (cbor2.dumps({"ExtendPCR": {"index": 16}}), NsmInvalidArgument),
        (cbor2.dumps({"DescribePCR": {"index": 70000}}), NsmInvalidIndex),
        (cbor2.dumps({"Attestation": {"nonce": b"n" * 1025}}), NsmInputTooLarge),
        (cbor2.dumps({"Attestation": {"nonce": "text"}}), NsmInvalidArgument),
        (b"\x40" * (MAX_REQUEST_SIZE + 1), NsmInputTooLarge),
    ],
)
def test_bad_requests_get_the_device_error_the_nsm_answers(wire: bytes, error: type[NsmDeviceError]) -> None:
    with pytest.raises(error):
        decode_request(wire)


def test_missing_optional_attestation_fields_read_as_null_like_serde() -> None:
    assert decode_request(cbor2.dumps({"Attestation": {}})) == AttestationRequest()


# --- fuzzing: garbage in, enclavekit errors out ---------------------------------------------------------------

_VARIANTS = ["DescribePCR", "ExtendPCR", "LockPCR", "LockPCRs", "DescribeNSM", "Attestation", "GetRandom", "Error"]
_FIELDS = [
    "lock",
    "data",
    "document",
    "random",
    "index",
    "range",
    "version_major",
    "version_minor",
    "version_patch",
    "module_id",
    "max_pcrs",
    "locked_pcrs",
    "digest",
    "user_data",
    "nonce",
    "public_key",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.binary(max_size=64)
    | st.text(max_size=16)
    | st.sampled_from(_VARIANTS + _FIELDS + [e.value for e in ErrorCode] + ["SHA384"])
    | st.floats(allow_nan=True)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=4) | st.integers(0, 40), children, max_size=8)
    ),
    max_leaves=24,
)
_messages = _values | st.dictionaries(st.sampled_from(_VARIANTS), _values, min_size=1, max_size=2)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_as_a_response_raise_only_enclavekit_errors(data: bytes) -> None:
    with contextlib.suppress(NsmError):
        decode_response(data)


@settings(max_examples=600, deadline=None)
@given(_messages)
def test_structured_garbage_responses_raise_only_enclavekit_errors(message: object) -> None:
    nsm = Nsm(_canned(cbor2.dumps(message)))
    for call in (nsm.get_random, nsm.describe_nsm, lambda: nsm.describe_pcr(1), lambda: nsm.attestation()):
        with contextlib.suppress(NsmError):
            call()


@settings(max_examples=600, deadline=None)
@given(_messages)
def test_structured_garbage_requests_get_device_errors_only(message: object) -> None:
    try:
        request = decode_request(cbor2.dumps(message))
    except NsmDeviceError:
        return
    assert decode_request(encode_request(request)) == request


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_REQUEST_SIZE + 8))
def test_random_bytes_as_a_request_get_device_errors_only(data: bytes) -> None:
    with contextlib.suppress(NsmDeviceError):  # anything else propagates and fails the test
        decode_request(data)
