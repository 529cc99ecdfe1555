"""What the NSM port raises: one class per NSM device error, plus transport and state failures.

The Nitro Secure Module answers a request it cannot serve with ``{"Error": "<ErrorCode>"}``. Each of its
error codes maps to one class here with a stable enclavekit ``code`` (``InvalidIndex`` → ``nsm_invalid_index``),
and the simulator raises the very same classes internally before serialising them, so the device and the
simulator fail alike.
"""

from __future__ import annotations

from typing import ClassVar

from enclavekit.errors import ConfigurationError, Error, InfrastructureError, Rejected

__all__ = [
    "NsmBufferTooSmall",
    "NsmDeviceError",
    "NsmError",
    "NsmInputTooLarge",
    "NsmInternalError",
    "NsmInvalidArgument",
    "NsmInvalidIndex",
    "NsmInvalidOperation",
    "NsmInvalidResponse",
    "NsmMalformedResponse",
    "NsmReadOnlyIndex",
    "NsmUnavailable",
    "SimulatorStateError",
    "device_error",
]


class NsmError(Error):
    """Base class of every error of the NSM port."""

    code = "nsm_error"


class NsmDeviceError(NsmError):
    """The NSM refused a request. ``device_code`` is the NSM's own name for the error (``ErrorCode``)."""

    code = "nsm_device_error"
    device_code: ClassVar[str] = ""


class NsmInvalidArgument(NsmDeviceError):
    """A request argument is invalid (wrong type, or a field the NSM cannot accept)."""

    code = "nsm_invalid_argument"
    device_code = "InvalidArgument"


class NsmInvalidIndex(NsmDeviceError):
    """A PCR index is out of range (the NSM has ``max_pcrs`` registers, 32 on Nitro)."""

    code = "nsm_invalid_index"
    device_code = "InvalidIndex"


class NsmInvalidResponse(NsmDeviceError, InfrastructureError):
    """The response does not answer the request that was sent."""

    code = "nsm_invalid_response"
    device_code = "InvalidResponse"


class NsmReadOnlyIndex(NsmDeviceError):
    """The PCR is locked (PCR0-15 always are): it can no longer be extended or locked again."""

    code = "nsm_read_only_index"
    device_code = "ReadOnlyIndex"


class NsmInvalidOperation(NsmDeviceError):
    """The NSM does not know the request (or cannot serve it)."""

    code = "nsm_invalid_operation"
    device_code = "InvalidOperation"


class NsmBufferTooSmall(NsmDeviceError):
    """The response did not fit the response buffer."""

    code = "nsm_buffer_too_small"
    device_code = "BufferTooSmall"


class NsmInputTooLarge(NsmDeviceError):
    """The request, or one of its fields, is larger than the NSM accepts."""

    code = "nsm_input_too_large"
    device_code = "InputTooLarge"


class NsmInternalError(NsmDeviceError, InfrastructureError):
    """The NSM (or the driver between us) failed internally. Worth retrying."""

    code = "nsm_internal_error"
    device_code = "InternalError"


_BY_DEVICE_CODE: dict[str, type[NsmDeviceError]] = {
    cls.device_code: cls
    for cls in (
        NsmInvalidArgument,
        NsmInvalidIndex,
        NsmInvalidResponse,
        NsmReadOnlyIndex,
        NsmInvalidOperation,
        NsmBufferTooSmall,
        NsmInputTooLarge,
        NsmInternalError,
    )
}


def device_error(device_code: str, message: str | None = None) -> NsmDeviceError:
    """The exception for the NSM error named ``device_code`` (a name from the NSM's ``ErrorCode`` enum)."""
    cls = _BY_DEVICE_CODE[device_code]
    return cls(message or f"the NSM answered {device_code}")


class NsmMalformedResponse(NsmError, Rejected):
    """The bytes received are not a well-formed NSM response (bad CBOR, wrong shape, wrong types, too large)."""

    code = "nsm_malformed_response"


class NsmUnavailable(NsmError, InfrastructureError):
    """There is no NSM to talk to (no ``/dev/nsm``: not running inside a Nitro Enclave)."""

    code = "nsm_unavailable"


class SimulatorStateError(ConfigurationError, ValueError):
    """The simulator's state folder is missing, incomplete or unreadable.

    Also a :class:`ValueError`, so callers that treat bad command-line values uniformly catch it too.
    """

    code = "nsm_simulator_state"
