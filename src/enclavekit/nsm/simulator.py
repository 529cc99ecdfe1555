"""A simulated Nitro Secure Module: the device protocol, PCRs and attestation documents, in-process.

SIMULATOR ONLY: its documents are signed by a local CA (:mod:`enclavekit.nsm.ca`) that verifiers reject
unless told to trust it. Everything else follows the real NSM:

* it serves the same CBOR requests through the same message layer (:meth:`NsmSimulator.handle` is a
  transport for :class:`~enclavekit.nsm.port.Nsm`) and answers errors as the device does;
* 32 SHA-384 PCRs; PCR0-15 are set at boot (see :mod:`enclavekit.nsm.measure`) and locked; PCR16-31 start at
  zero and may be extended (PCR ← SHA-384(PCR ‖ data)) and locked, after which they are read-only;
* documents are byte-for-byte shaped like AWS's: an untagged COSE_Sign1 ``[h'a1013822', {}, payload, sig]``
  whose payload map lists ``module_id, digest, timestamp, pcrs, certificate, cabundle, public_key,
  user_data, nonce`` in that order, with CBOR null for absent optional fields and every locked PCR;
* the chain is root → regional → zonal → instance → leaf, with AWS's extensions and lifetimes; each
  simulator instance is one enclave process with its own module id and its own leaf, re-issued when fewer
  than :data:`LEAF_RENEW_BEFORE` remain.

Time and randomness are injectable (``now``, ``random``) so tests can move the clock and fix the bytes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit.attestation.cose import ES384_PROTECTED, sig_structure, sign_es384
from enclavekit.nsm.ca import (
    LEAF_LIFETIME,
    IssuingChain,
    SimulatorCA,
    instance_id_of,
    issue_leaf,
    load_root,
)
from enclavekit.nsm.errors import NsmDeviceError, NsmInvalidIndex, NsmReadOnlyIndex
from enclavekit.nsm.measure import ZERO_PCR, CodeSource, Measurements, extend, measure_code, measure_enclave
from enclavekit.nsm.messages import (
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
    encode_response,
)
from enclavekit.nsm.port import Nsm

__all__ = [
    "DEFAULT_STATE_DIR",
    "LEAF_RENEW_BEFORE",
    "MAX_PCRS",
    "NsmSimulator",
    "load_root",
]

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".enclavekit")
MAX_PCRS = 32
BOOT_LOCKED_PCRS = 16
"""PCR0-15 are measured at boot and locked, as on Nitro."""
RANDOM_SIZE = 256
"""Bytes per GetRandom, as the NSM returns."""
LEAF_RENEW_BEFORE = timedelta(hours=2)
"""A leaf is replaced once less than this remains, so a document stays verifiable for at least this long."""
VERSION = (1, 0, 0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NsmSimulator:
    """One simulated enclave's NSM. Use it as a transport: ``Nsm(simulator)``, or :meth:`client`.

    ``app`` is the enclave application's code (a directory, a file, bytes, or ``{path: content}``); its
    :func:`~enclavekit.nsm.measure.measure_code` digest (or ``app_digest`` given directly) becomes PCR2 and,
    after the simulated bootstrap, PCR0. ``role_arn`` sets PCR3. ``debug`` runs the enclave in debug mode
    (PCR0-2 and PCR8 zero). The CA lives in ``state_dir/nsm`` and is created on first use.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        *,
        app: CodeSource | None = None,
        app_digest: bytes | None = None,
        role_arn: str | None = None,
        debug: bool = False,
        now: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if app is not None and app_digest is not None:
            raise ValueError("give the application's code (app) or its digest (app_digest), not both")
        self._now = now
        self._random = random
        self._lock = threading.Lock()
        self.ca = SimulatorCA(state_dir, random=random)
        started = self._clock()
        self.root_der = self.ca.root(now=started).public_bytes(serialization.Encoding.DER)
        self.instance_id = instance_id_of(self.root_der)
        start_ms = (started - _EPOCH) // timedelta(milliseconds=1)
        self.enclave_id = start_ms.to_bytes(6, "big") + random(2)
        self.module_id = f"{self.instance_id}-enc{self.enclave_id.hex()}"
        digest = app_digest if app_digest is not None else measure_code({} if app is None else app)
        self.measurements: Measurements = measure_enclave(
            digest, instance_id=self.instance_id, role_arn=role_arn, debug=debug
        )
        self._pcrs = [self.measurements[i] if i < BOOT_LOCKED_PCRS else ZERO_PCR for i in range(MAX_PCRS)]
        self._locked = set(range(BOOT_LOCKED_PCRS))
        self._chain: IssuingChain | None = None
        self._leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def client(self) -> Nsm:
        """An :class:`~enclavekit.nsm.port.Nsm` talking to this simulator."""
        return Nsm(self.handle)

    def __call__(self, request: bytes) -> bytes:
        return self.handle(request)

    def handle(self, request: bytes) -> bytes:
        """Serve one CBOR request and return the CBOR response, exactly as the device would."""
        response: Response
        try:
            parsed = decode_request(request)
            with self._lock:
                response = self._serve(parsed)
        except NsmDeviceError as exc:
            response = ErrorResponse(ErrorCode(exc.device_code))
        data = encode_response(response)
        if len(data) > MAX_RESPONSE_SIZE:
            data = encode_response(ErrorResponse(ErrorCode.BUFFER_TOO_SMALL))
        return data

    # --- operations ---------------------------------------------------------------------------------------

    def _serve(self, request: Request) -> Response:
        match request:
            case DescribePcrRequest(index=index):
                self._check_index(index)
                return DescribePcrResponse(lock=index in self._locked, data=self._pcrs[index])
            case ExtendPcrRequest(index=index, data=data):
                self._check_writable(index)
                self._pcrs[index] = extend(self._pcrs[index], data)
                return ExtendPcrResponse(data=self._pcrs[index])
            case LockPcrRequest(index=index):
                self._check_writable(index)
                self._locked.add(index)
                return LockPcrResponse()
            case LockPcrsRequest(range=range_):
                if range_ > MAX_PCRS:
                    raise NsmInvalidIndex(f"cannot lock PCRs 0..{range_ - 1}: there are {MAX_PCRS}")
                self._locked.update(range(range_))
                return LockPcrsResponse()
            case DescribeNsmRequest():
                return NsmDescription(
                    version_major=VERSION[0],
                    version_minor=VERSION[1],
                    version_patch=VERSION[2],
                    module_id=self.module_id,
                    max_pcrs=MAX_PCRS,
                    locked_pcrs=tuple(sorted(self._locked)),
                    digest=Digest.SHA384,
                )
            case AttestationRequest():
                return AttestationResponse(document=self._document(request))
            case GetRandomRequest():
                return GetRandomResponse(random=self._random(RANDOM_SIZE))
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover

    def _check_index(self, index: int) -> None:
        if index >= MAX_PCRS:
            raise NsmInvalidIndex(f"PCR{index} does not exist: there are {MAX_PCRS}")

    def _check_writable(self, index: int) -> None:
        self._check_index(index)
        if index in self._locked:
            raise NsmReadOnlyIndex(f"PCR{index} is locked")

    def _document(self, request: AttestationRequest) -> bytes:
        now = self._clock()
        certificate, key, chain = self._signer(now)
        payload = cbor2.dumps(
            {
                "module_id": self.module_id,
                "digest": Digest.SHA384.value,
                "timestamp": (now - _EPOCH) // timedelta(milliseconds=1),
                "pcrs": {index: self._pcrs[index] for index in sorted(self._locked)},
                "certificate": certificate.public_bytes(serialization.Encoding.DER),
                "cabundle": list(chain.cabundle),
                "public_key": request.public_key,
                "user_data": request.user_data,
                "nonce": request.nonce,
            }
        )
        signature = sign_es384(key, sig_structure(ES384_PROTECTED, payload))
        return cbor2.dumps([ES384_PROTECTED, {}, payload, signature])

    def _signer(self, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, IssuingChain]:
        """This enclave's leaf and its chain, renewed when the leaf is too close to its end."""
        if self._leaf is not None and self._chain is not None:
            certificate, key = self._leaf
            if certificate.not_valid_before_utc <= now and now + LEAF_RENEW_BEFORE <= certificate.not_valid_after_utc:
                return certificate, key, self._chain
        chain = self._chain
        if chain is None or not chain.covers(now, LEAF_LIFETIME):
            chain = self._chain = self.ca.issuing_chain(now=now)
        self._leaf = issue_leaf(chain, module_id=self.module_id, enclave_id=self.enclave_id, now=now)
        logger.debug("NSM simulator %s: new leaf certificate", self.module_id)
        return self._leaf[0], self._leaf[1], chain

    def _clock(self) -> datetime:
        moment = self._now()
        if moment.tzinfo is None:
            raise ValueError("the simulator's clock must return timezone-aware datetimes")
        return moment.astimezone(UTC)

    # --- inspection (for tests and tools; the enclave itself uses the NSM protocol) -----------------------

    def pcr(self, index: int) -> bytes:
        """The current value of PCR ``index``."""
        self._check_index(index)
        return self._pcrs[index]
