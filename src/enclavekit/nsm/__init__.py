"""The NSM port: the Nitro Secure Module behind one interface, real (``/dev/nsm``) or simulated.

* :class:`Nsm` — the client: ``attestation``, ``describe_pcr``, ``extend_pcr``, ``lock_pcr``, ``lock_pcrs``,
  ``describe_nsm``, ``get_random``; it speaks the NSM's CBOR protocol over any byte transport.
* :class:`NsmDevice` — the transport to the real device, inside a Nitro Enclave.
* :class:`NsmSimulator` — a transport that *is* an NSM, with a local CA shaped like AWS's (simulator only).

See ``docs/nsm.md``.
"""

from __future__ import annotations

from enclavekit.nsm.ca import load_root
from enclavekit.nsm.device import NsmDevice
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
    NsmUnavailable,
    SimulatorStateError,
)
from enclavekit.nsm.measure import measure_code
from enclavekit.nsm.messages import NsmDescription
from enclavekit.nsm.port import Nsm, PcrState, Transport
from enclavekit.nsm.simulator import NsmSimulator

__all__ = [
    "Nsm",
    "NsmBufferTooSmall",
    "NsmDescription",
    "NsmDevice",
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
    "NsmSimulator",
    "NsmUnavailable",
    "PcrState",
    "SimulatorStateError",
    "Transport",
    "load_root",
    "measure_code",
    "open_device",
]


def open_device(path: str = "/dev/nsm") -> Nsm:
    """An :class:`Nsm` on the real device; raises :class:`NsmUnavailable` outside a Nitro Enclave."""
    return Nsm(NsmDevice(path))
