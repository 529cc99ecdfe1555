"""The NSM port: one client for the Nitro Secure Module, whatever carries its bytes.

:class:`Nsm` speaks the NSM's CBOR protocol (:mod:`enclavekit.nsm.messages`) over a *transport*: any callable
that takes the request bytes and returns the response bytes. The real device (:class:`~enclavekit.nsm.device.
NsmDevice`, an ioctl on ``/dev/nsm``) and the simulator (:meth:`~enclavekit.nsm.simulator.NsmSimulator.handle`)
are both transports, so code written against :class:`Nsm` runs unchanged on either::

    nsm = Nsm(NsmSimulator(".enclavekit", app="app/"))        # or Nsm(NsmDevice()) inside an enclave
    document = nsm.attestation(nonce=nonce, public_key=key)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from enclavekit.nsm.errors import NsmInvalidResponse
from enclavekit.nsm.messages import (
    AttestationRequest,
    AttestationResponse,
    DescribeNsmRequest,
    DescribePcrRequest,
    DescribePcrResponse,
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
    decode_response,
    describe_request,
    encode_request,
)

__all__ = ["Nsm", "NsmDescription", "PcrState", "Transport"]

Transport: TypeAlias = Callable[[bytes], bytes]
"""Carries one CBOR request to an NSM and returns its CBOR response."""

R = TypeVar("R", bound=Response)


@dataclass(frozen=True, slots=True)
class PcrState:
    """One platform configuration register: its index, its value, and whether it is locked (read-only)."""

    index: int
    locked: bool
    data: bytes


class Nsm:
    """A client of the Nitro Secure Module over ``transport``.

    Every method sends one request and returns the typed answer, or raises: an
    :class:`~enclavekit.nsm.errors.NsmDeviceError` subclass when the NSM refuses (``nsm_read_only_index``...),
    :class:`~enclavekit.nsm.errors.NsmMalformedResponse` when the answer is garbage,
    :class:`~enclavekit.nsm.errors.NsmInvalidResponse` when it answers another request.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def request(self, request: Request) -> Response:
        """Send ``request`` and return the decoded response; an NSM error is raised, never returned."""
        response = decode_response(self._transport(encode_request(request)))
        if isinstance(response, ErrorResponse):
            raise response.exception(request)
        return response

    def _call(self, request: Request, expected: type[R]) -> R:
        response = self.request(request)
        if not isinstance(response, expected):
            raise NsmInvalidResponse(
                f"the NSM answered {describe_request(request)} with {type(response).__name__}, "
                f"expected {expected.__name__}"
            )
        return response

    def attestation(
        self, *, user_data: bytes | None = None, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        """A signed attestation document (COSE_Sign1 bytes) binding these fields (each at most 1024 bytes)."""
        request = AttestationRequest(user_data=user_data, nonce=nonce, public_key=public_key)
        return self._call(request, AttestationResponse).document

    def describe_pcr(self, index: int) -> PcrState:
        response = self._call(DescribePcrRequest(index), DescribePcrResponse)
        return PcrState(index=index, locked=response.lock, data=response.data)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data`` (PCR ← SHA-384(PCR ‖ data)); returns the new value."""
        return self._call(ExtendPcrRequest(index, data), ExtendPcrResponse).data

    def lock_pcr(self, index: int) -> None:
        """Make PCR ``index`` read-only until the enclave ends."""
        self._call(LockPcrRequest(index), LockPcrResponse)

    def lock_pcrs(self, range_: int) -> None:
        """Make PCRs ``0 .. range_ - 1`` read-only."""
        self._call(LockPcrsRequest(range_), LockPcrsResponse)

    def describe_nsm(self) -> NsmDescription:
        return self._call(DescribeNsmRequest(), NsmDescription)

    def get_random(self) -> bytes:
        """Entropy from the NSM (256 bytes per call on Nitro)."""
        return self._call(GetRandomRequest(), GetRandomResponse).random
