"""What dcap-qvl would say of a debug TD if it did not refuse debug TDs (used only when the policy allows them).

dcap-qvl has no option to accept a debug TD: ``verify`` (and its claims mode) refuse it with "Debug mode is
enabled", after checking everything that makes the quote authentic — the collateral's signatures and chains to
Intel's root, the CRLs, the PCK chain, the QE report and the quote's signature (tested: a debug bit set by a
forger fails as a bad signature). Its verdict on the rest (the TCB level of the platform, the other TD
attributes) is never computed.

To get that verdict from dcap-qvl itself rather than re-implementing Intel's TCB matching, :func:`shadow_verdict`
builds a *shadow* of the quote: the same header, TD report (with only the DEBUG bit cleared), QE report, QE auth
data and PCK certificate extension (FMSPC, CPUSVN, PCESVN), and the same TCB info and QE identity texts, all
re-signed by a throwaway root made for this one call; dcap-qvl then verifies the shadow against that root. The
shadow proves nothing about authenticity (the throwaway root is trusted for it alone) — that was established by
the real verification — it only carries the platform's values through dcap-qvl's own TCB evaluation and TD
attribute checks. Nothing of it outlives the call.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime, timedelta

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.errors import Malformed
from enclavekit.attestation.quote import TD_REPORT10_SIZE, TD_REPORT15_SIZE, Quote

__all__ = ["shadow_verdict"]

_SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_TD_ATTRIBUTES_OFFSET = 16 + 48 + 48 + 8  # TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES
_QE_REPORT_SIZE = 384
_CERT_TYPE_QE_REPORT = 6
_CERT_TYPE_PCK_CHAIN = 5
_MARGIN = timedelta(days=1)


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class _Ca:
    """One throwaway certificate and its key."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def __init__(
        self,
        subject: x509.Name,
        issuer: _Ca | None,
        now: datetime,
        *,
        ca: bool,
        extension: x509.ExtensionType | None = None,
    ) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if issuer is None else issuer.cert.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _MARGIN)
            .not_valid_after(now + _MARGIN)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if extension is not None:
            builder = builder.add_extension(extension, critical=False)
        self.cert = builder.sign(self.key if issuer is None else issuer.key, hashes.SHA256())
        self.now = now

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(Encoding.PEM).decode()

    def crl_hex(self) -> str:
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(self.now - _MARGIN)
            .next_update(self.now + _MARGIN)
            .add_extension(x509.CRLNumber(1), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return crl.public_bytes(Encoding.DER).hex()


def _parts(quote: Quote) -> tuple[bytes, bytes, bytes, x509.Certificate]:
    """The signed bytes, the QE report, the QE auth data and the PCK leaf certificate of a v4/v5 TD quote."""
    raw = quote.raw
    offset = quote.signed_length + 4 + 64 + 64
    cert_type, _ = struct.unpack_from("<HI", raw, offset)
    if cert_type != _CERT_TYPE_QE_REPORT:
        raise Malformed(f"certification data type {cert_type}: no QE report to carry over")
    offset += 6
    qe_report = raw[offset : offset + _QE_REPORT_SIZE]
    offset += _QE_REPORT_SIZE + 64
    (auth_size,) = struct.unpack_from("<H", raw, offset)
    auth = raw[offset + 2 : offset + 2 + auth_size]
    chain = quote.signature.pck_chain_pem
    if chain is None:
        raise Malformed("the quote carries no PCK certificate chain")
    leaf = x509.load_pem_x509_certificates(chain)[0]
    return raw[: quote.signed_length], qe_report, auth, leaf


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])


def shadow_verdict(quote: Quote, collateral: Collateral, now: datetime) -> dcap_qvl.VerifiedReport:
    """dcap-qvl's verdict on ``quote`` as if its DEBUG bit were clear (see the module's docstring).

    Raises ``ValueError`` with dcap-qvl's message when dcap-qvl refuses the shadow (a TCB level or another TD
    attribute it does not accept), and :class:`Malformed` when the quote lacks what the shadow needs.
    """
    assert quote.td is not None
    signed, qe_report, auth, leaf = _parts(quote)
    body_size = TD_REPORT15_SIZE if quote.td.tee_tcb_svn2 is not None else TD_REPORT10_SIZE
    attributes = len(signed) - body_size + _TD_ATTRIBUTES_OFFSET
    shadow_signed = bytearray(signed)
    shadow_signed[attributes] &= 0xFE  # DEBUG cleared; every other attribute as quoted
    try:
        extension = leaf.extensions.get_extension_for_oid(_SGX_EXTENSION).value
    except x509.ExtensionNotFound as exc:
        raise Malformed("the PCK certificate has no SGX extension") from exc
    issuer = leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    issuer_cn = str(issuer[0].value) if issuer else "Intel SGX PCK Platform CA"
    root = _Ca(_name("Intel SGX Root CA"), None, now, ca=True)
    pck_ca = _Ca(_name(issuer_cn), root, now, ca=True)
    signing = _Ca(_name("Intel SGX TCB Signing"), root, now, ca=False)
    pck = _Ca(_name("Intel SGX PCK Certificate"), pck_ca, now, ca=False, extension=extension)

    attestation_key = ec.generate_private_key(ec.SECP256R1())
    public = attestation_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    shadow_qe = qe_report[:320] + hashlib.sha256(public + auth).digest() + bytes(32)
    chain = (pck.pem + pck_ca.pem + root.pem).encode()
    inner = (
        shadow_qe
        + _raw_signature(pck.key, shadow_qe)
        + struct.pack("<H", len(auth))
        + auth
        + struct.pack("<HI", _CERT_TYPE_PCK_CHAIN, len(chain))
        + chain
    )
    signature = _raw_signature(attestation_key, bytes(shadow_signed)) + public
    signature += struct.pack("<HI", _CERT_TYPE_QE_REPORT, len(inner)) + inner
    shadow = bytes(shadow_signed) + struct.pack("<I", len(signature)) + signature

    tcb_info, qe_identity = collateral.qvl.tcb_info, collateral.qvl.qe_identity
    shadow_collateral = dcap_qvl.QuoteCollateralV3(
        pck_ca.pem + root.pem,
        bytes.fromhex(root.crl_hex()),
        bytes.fromhex(pck_ca.crl_hex()),
        signing.pem + root.pem,
        tcb_info,
        _raw_signature(signing.key, tcb_info.encode()),
        signing.pem + root.pem,
        qe_identity,
        _raw_signature(signing.key, qe_identity.encode()),
    )
    root_der = root.cert.public_bytes(Encoding.DER)
    return dcap_qvl.verify_with_root_ca(shadow, shadow_collateral, root_der, int(now.timestamp()))
