"""Intel DCAP quotes: TDX (v4, v5) and SGX (v3, v4), parsed once into frozen dataclasses.

Parsing checks structure only — sizes, types, lengths — and never trusts a field: the signature, the
certification chain and the TCB level are checked by :mod:`enclavekit.attestation.tdx` against Intel collateral.
Layout (Intel "TDX DCAP Quote Generation Library and Quote Verification Library" API, quote formats v4/v5)::

    v3 (SGX), v4:  header(48) | body | u32 signature-data length | signature data | zero padding
    v5:            header(48) | u16 body type | u32 body size | body | u32 length | signature data | padding

Bodies: SGX enclave report (384 bytes), TD report 1.0 (584), TD report 1.5 (648). Integers are little-endian.
Quote providers pad their buffer with zeros; any other trailing byte is refused.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from enclavekit.attestation.errors import Malformed

__all__ = [
    "HEADER_SIZE",
    "MAX_QUOTE_SIZE",
    "SGX_TEE_TYPE",
    "TDX_TEE_TYPE",
    "CertificationData",
    "QeReportCertification",
    "Quote",
    "QuoteHeader",
    "QuoteSignature",
    "SgxReport",
    "TdReport",
    "decode_quote_text",
]

MAX_QUOTE_SIZE = 64 * 1024
"""Largest quote accepted. Real quotes are 4.5-5 KiB (most of it the PEM certification chain)."""
HEADER_SIZE = 48
SGX_TEE_TYPE = 0x00000000
TDX_TEE_TYPE = 0x00000081
SGX_REPORT_SIZE = 384
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
_V5_BODY_SIZES = {1: SGX_REPORT_SIZE, 2: TD_REPORT10_SIZE, 3: TD_REPORT15_SIZE}
_ATTESTATION_KEY_TYPES = frozenset({2, 3})  # ECDSA-256 with P-256, ECDSA-384 with P-384
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
_HEADER = struct.Struct("<HHIHH16s20s")
_SGX_REPORT = struct.Struct("<16sI28x16s32s32x32s96xHH60x64s")
_TD_REPORT10 = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD_REPORT15_TAIL = struct.Struct("<16s48s")
_HEX_TEXT = re.compile(rb"\s*(?:0x|0X)?([0-9a-fA-F\s]+)")


def decode_quote_text(data: bytes) -> bytes:
    """The quote in ``data``: raw bytes as they are, or hex text (optional ``0x``, whitespace ignored)."""
    if len(data) > 2 * MAX_QUOTE_SIZE + 64:
        raise Malformed(f"quote of {len(data)} bytes is over the limit of {MAX_QUOTE_SIZE}")
    if data[:1] in (b"\x03", b"\x04", b"\x05"):
        return data
    match = _HEX_TEXT.fullmatch(data)
    if match is None:
        raise Malformed("not a DCAP quote: neither a binary quote (version 3, 4 or 5) nor hex text")
    digits = re.sub(rb"\s+", b"", match.group(1))
    if len(digits) % 2:
        raise Malformed("hex quote has an odd number of digits")
    return bytes.fromhex(digits.decode("ascii"))


class _Reader:
    """Bounded little-endian reads over one buffer; every overrun becomes :class:`Malformed`."""

    __slots__ = ("_data", "offset")

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = data
        self.offset = offset

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self._data):
            raise Malformed(f"quote truncated: {what} needs {size} bytes at offset {self.offset}")
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The 48-byte quote header (``qe_svn``/``pce_svn`` are reserved in v4/v5 but kept as read)."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def _read(cls, reader: _Reader) -> QuoteHeader:
        version, key_type, tee_type, qe_svn, pce_svn, vendor, user_data = _HEADER.unpack(
            reader.take(HEADER_SIZE, "header")
        )
        if version not in (3, 4, 5):
            raise Malformed(f"unsupported quote version {version} (expected 3, 4 or 5)")
        if key_type not in _ATTESTATION_KEY_TYPES:
            raise Malformed(f"unsupported attestation key type {key_type}")
        if tee_type not in (SGX_TEE_TYPE, TDX_TEE_TYPE):
            raise Malformed(f"unknown TEE type {tee_type:#x} (expected SGX 0x0 or TDX 0x81)")
        if version == 3 and tee_type != SGX_TEE_TYPE:
            raise Malformed("quote version 3 is SGX only")
        return cls(version, key_type, tee_type, qe_svn, pce_svn, vendor, user_data)


@dataclass(frozen=True, slots=True)
class SgxReport:
    """An SGX enclave report (the body of an SGX quote, and the QE report inside every quote)."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.DEBUG (bit 1): the enclave's memory is readable by a debugger."""
        return bool(self.attributes[0] & 0x02)

    @classmethod
    def from_bytes(cls, data: bytes) -> SgxReport:
        if len(data) != SGX_REPORT_SIZE:
            raise Malformed(f"SGX report must be {SGX_REPORT_SIZE} bytes, got {len(data)}")
        (cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data) = (
            _SGX_REPORT.unpack(data)
        )
        return cls(cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data)


@dataclass(frozen=True, slots=True)
class TdReport:
    """A TD report as quoted (TDREPORT 1.0, or 1.5 with ``tee_tcb_svn2`` and ``mr_servicetd``)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG (bit 0): the host VMM can read and write the TD's memory and registers."""
        return bool(self.td_attributes[0] & 0x01)

    @property
    def version(self) -> Literal["1.0", "1.5"]:
        return "1.0" if self.tee_tcb_svn2 is None else "1.5"

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReport:
        if len(data) not in (TD_REPORT10_SIZE, TD_REPORT15_SIZE):
            raise Malformed(f"TD report must be {TD_REPORT10_SIZE} or {TD_REPORT15_SIZE} bytes, got {len(data)}")
        (
            tee_tcb_svn,
            mr_seam,
            mr_signer_seam,
            seam_attributes,
            td_attributes,
            xfam,
            mr_td,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            rtmr0,
            rtmr1,
            rtmr2,
            rtmr3,
            report_data,
        ) = _TD_REPORT10.unpack_from(data)
        rtmrs = (rtmr0, rtmr1, rtmr2, rtmr3)
        svn2 = servicetd = None
        if len(data) == TD_REPORT15_SIZE:
            svn2, servicetd = _TD_REPORT15_TAIL.unpack_from(data, TD_REPORT10_SIZE)
        return cls(
            tee_tcb_svn,
            mr_seam,
            mr_signer_seam,
            seam_attributes,
            td_attributes,
            xfam,
            mr_td,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            rtmrs,
            report_data,
            svn2,
            servicetd,
        )


@dataclass(frozen=True, slots=True)
class CertificationData:
    """Certification data: its type (5 = PCK certificate chain in PEM, 6 = QE report data) and bytes."""

    type: int
    data: bytes

    @classmethod
    def _read(cls, reader: _Reader, what: str) -> CertificationData:
        cert_type = reader.u16(f"{what} type")
        size = reader.u32(f"{what} size")
        if not 1 <= cert_type <= 7:
            raise Malformed(f"{what}: unknown certification data type {cert_type}")
        return cls(cert_type, reader.take(size, f"{what} body"))


@dataclass(frozen=True, slots=True)
class QeReportCertification:
    """The Quoting Enclave's report, its signature by the PCK key, its auth data and the PCK certification."""

    qe_report: SgxReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification: CertificationData

    @classmethod
    def _read(cls, reader: _Reader) -> QeReportCertification:
        qe_report = SgxReport.from_bytes(reader.take(SGX_REPORT_SIZE, "qe_report"))
        signature = reader.take(64, "qe_report_signature")
        auth_size = reader.u16("qe_auth_data size")
        auth = reader.take(auth_size, "qe_auth_data")
        certification = CertificationData._read(reader, "qe certification data")
        return cls(qe_report, signature, auth, certification)


@dataclass(frozen=True, slots=True)
class QuoteSignature:
    """The ECDSA signature over header and body, the attestation key, and how that key is certified."""

    signature: bytes
    attestation_key: bytes
    certification: CertificationData
    qe: QeReportCertification | None

    @property
    def pck_chain_pem(self) -> bytes | None:
        """The embedded PCK certificate chain (PEM), when the quote carries one (type 5)."""
        inner = self.qe.certification if self.qe is not None else self.certification
        return inner.data if inner.type == CERT_TYPE_PCK_CHAIN else None

    @classmethod
    def _read(cls, data: bytes, version: int) -> QuoteSignature:
        reader = _Reader(data)
        signature = reader.take(64, "ecdsa signature")
        key = reader.take(64, "attestation key")
        if version == 3:
            qe = QeReportCertification._read(reader)
            certification = qe.certification
        else:
            certification = CertificationData._read(reader, "certification data")
            qe = None
            if certification.type == CERT_TYPE_QE_REPORT:
                inner = _Reader(certification.data)
                qe = QeReportCertification._read(inner)
                if inner.remaining:
                    raise Malformed(f"{inner.remaining} unexpected bytes after the QE report certification data")
        if reader.remaining:
            raise Malformed(f"{reader.remaining} unexpected bytes after the quote's certification data")
        return cls(signature, key, certification, qe)


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed, NOT verified, DCAP quote. ``raw`` is the quote without trailing padding.

    ``tee`` is ``"tdx"`` or ``"sgx"``; ``td`` is set for TDX quotes and ``sgx`` for SGX quotes.
    """

    raw: bytes
    header: QuoteHeader
    body_type: int
    td: TdReport | None
    sgx: SgxReport | None
    signed_length: int
    signature: QuoteSignature

    @property
    def tee(self) -> Literal["tdx", "sgx"]:
        return "tdx" if self.td is not None else "sgx"

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def signed_bytes(self) -> bytes:
        """Header and body: what the attestation key signed."""
        return self.raw[: self.signed_length]

    @classmethod
    def parse(cls, data: bytes) -> Quote:
        """A quote from raw bytes or hex text (see :func:`decode_quote_text`)."""
        return cls.from_bytes(decode_quote_text(data))

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse a binary quote; raise :class:`Malformed` on any structural deviation."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise Malformed("a quote must be bytes")
        data = bytes(data)
        if len(data) > MAX_QUOTE_SIZE:
            raise Malformed(f"quote of {len(data)} bytes is over the limit of {MAX_QUOTE_SIZE}")
        reader = _Reader(data)
        header = QuoteHeader._read(reader)
        if header.version == 5:
            body_type = reader.u16("body type")
            body_size = reader.u32("body size")
            expected = _V5_BODY_SIZES.get(body_type)
            if expected is None:
                raise Malformed(f"unsupported v5 quote body type {body_type} (expected 1, 2 or 3)")
            if body_size != expected:
                raise Malformed(f"v5 body type {body_type} must be {expected} bytes, got {body_size}")
            if (body_type == 1) != (header.tee_type == SGX_TEE_TYPE):
                raise Malformed(f"v5 body type {body_type} does not match TEE type {header.tee_type:#x}")
        elif header.tee_type == SGX_TEE_TYPE:
            body_type, body_size = 1, SGX_REPORT_SIZE
        else:
            body_type, body_size = 2, TD_REPORT10_SIZE
        body = reader.take(body_size, "report body")
        signed_length = reader.offset
        signature_size = reader.u32("signature data length")
        signature = QuoteSignature._read(reader.take(signature_size, "signature data"), header.version)
        end = reader.offset
        if any(data[end:]):
            raise Malformed(f"{len(data) - end} trailing bytes after the quote are not zero padding")
        td = sgx = None
        if body_type == 1:
            sgx = SgxReport.from_bytes(body)
        else:
            td = TdReport.from_bytes(body)
        return cls(data[:end], header, body_type, td, sgx, signed_length, signature)
