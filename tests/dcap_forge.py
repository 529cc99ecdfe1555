"""A stand-in for Intel's DCAP PKI: a root, a PCK platform CA, a TCB signing key, and quotes they certify.

Real TDX quotes cannot be altered (their signature breaks) and no genuine debug TD with collateral is in the
fixtures, so tests that need a *genuine* quote with other attributes (a debug TD, SEPT_VE_DISABLE clear, a
certificate not yet valid) make one here: the body is the fixture quote's, with the changes asked for; the
PCK certificate carries the fixture's SGX extension (FMSPC, TCB components); the TCB info and QE identity are
the fixture collateral's, re-signed. dcap-qvl verifies the result against :attr:`DcapPki.root_der` exactly as
it verifies a real quote against Intel's root (``verify_with_root_ca``), so its refusals are its real ones.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclavekit.attestation.quote import Quote
from tests.conftest import fixtures_dir

SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
HEADER_SIZE = 48
TD10_SIZE = 584


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, cn),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(x509.NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(x509.NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


@dataclass
class _Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _issue(
    subject: x509.Name,
    issuer: _Issued | None,
    not_before: datetime,
    not_after: datetime,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] | None = None,
) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    for extension in extra or []:
        builder = builder.add_extension(extension, critical=False)
    signer = key if issuer is None else issuer.key
    return _Issued(key, builder.sign(signer, hashes.SHA256()))


def _crl(issuer: _Issued, this_update: datetime, next_update: datetime, revoked: x509.Certificate | None = None) -> str:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    if revoked is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked.serial_number).revocation_date(this_update).build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(Encoding.DER).hex()


class DcapPki:
    """Intel's DCAP certificate hierarchy, re-made with our keys, valid from ``not_before`` to ``not_after``."""

    def __init__(self, not_before: datetime, not_after: datetime, *, pck_not_before: datetime | None = None) -> None:
        self.fixture_quote = Quote.parse(fixtures_dir("tdx", "dcap-qvl", "tdx_quote").read_bytes())
        self.fixture_collateral = json.loads(fixtures_dir("tdx", "dcap-qvl", "tdx_quote_collateral.json").read_text())
        chain = self.fixture_quote.signature.pck_chain_pem
        assert chain is not None
        real_leaf = x509.load_pem_x509_certificates(chain)[0]
        sgx_extension = real_leaf.extensions.get_extension_for_oid(SGX_EXTENSION).value
        self.root = _issue(_name("Intel SGX Root CA"), None, not_before, not_after, ca=True)
        self.platform_ca = _issue(_name("Intel SGX PCK Platform CA"), self.root, not_before, not_after, ca=True)
        self.tcb_signing = _issue(_name("Intel SGX TCB Signing"), self.root, not_before, not_after, ca=False)
        self.pck = _issue(
            _name("Intel SGX PCK Certificate"),
            self.platform_ca,
            pck_not_before or not_before,
            not_after,
            ca=False,
            extra=[sgx_extension],
        )
        self.not_before, self.not_after = not_before, not_after

    @property
    def root_der(self) -> bytes:
        return self.root.cert.public_bytes(Encoding.DER)

    def collateral_json(self, *, crls: bool = True, revoke_pck: bool = False) -> str:
        """The fixture's collateral, signed by this PKI (dcap-qvl's JSON shape)."""
        tcb_info = self.fixture_collateral["tcb_info"]
        qe_identity = self.fixture_collateral["qe_identity"]
        issuer_chain = _pem(self.tcb_signing.cert) + _pem(self.root.cert)
        document = {
            "pck_crl_issuer_chain": _pem(self.platform_ca.cert) + _pem(self.root.cert),
            "root_ca_crl": _crl(self.root, self.not_before, self.not_after),
            "pck_crl": _crl(self.platform_ca, self.not_before, self.not_after, self.pck.cert if revoke_pck else None),
            "tcb_info_issuer_chain": issuer_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(self.tcb_signing.key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": issuer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(self.tcb_signing.key, qe_identity.encode()).hex(),
        }
        if not crls:
            del document["pck_crl"], document["root_ca_crl"]
        return json.dumps(document)

    def quote(self, *, td_attributes: bytes | None = None, debug: bool = False) -> bytes:
        """The fixture's TD quote, re-signed, with TD_ATTRIBUTES replaced (``debug`` sets bit 0)."""
        original = self.fixture_quote
        assert original.td is not None and original.signature.qe is not None
        header = original.raw[:HEADER_SIZE]
        body = bytearray(original.raw[HEADER_SIZE : HEADER_SIZE + TD10_SIZE])
        offset = 16 + 48 + 48 + 8  # after TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES
        attributes = bytearray(td_attributes if td_attributes is not None else original.td.td_attributes)
        if debug:
            attributes[0] |= 1
        body[offset : offset + 8] = attributes
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        public = attestation_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        signature = _raw_signature(attestation_key, header + bytes(body))
        qe = original.signature.qe
        auth = qe.qe_auth_data
        qe_report = bytearray(self._qe_report())
        qe_report[320:384] = hashlib.sha256(public + auth).digest() + bytes(32)
        qe_signature = _raw_signature(self.pck.key, bytes(qe_report))
        chain = (_pem(self.pck.cert) + _pem(self.platform_ca.cert) + _pem(self.root.cert)).encode()
        inner = (
            bytes(qe_report)
            + qe_signature
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        signature_data = signature + public + struct.pack("<HI", 6, len(inner)) + inner
        return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data

    def _qe_report(self) -> bytes:
        """The fixture quote's QE report bytes (384), found after the signature, key and type-6 header."""
        raw = self.fixture_quote.raw
        start = HEADER_SIZE + TD10_SIZE + 4 + 64 + 64 + 6
        return raw[start : start + 384]
